"""Inspect against the real dockerd: a secret is masked wherever the container's config repeats it."""

from __future__ import annotations

import asyncio
import json


from tests.harness.app import remote_reader, unique
from tests.harness.engines import Engine

SECRET = "hunter2hunter2"
SHORT = "abc12"  # below secrets.MIN_REPEATED_SECRET: masked in Env, not hunted elsewhere


def unordered(value):
    """The document with every list of objects sorted: the engine builds some of them (HostConfig.Ulimits,
    Mounts) from Go maps, so two answers for the same container may differ in their order."""
    if isinstance(value, dict):
        return {k: unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [unordered(v) for v in value]
        if all(isinstance(v, dict) for v in items):
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return value


async def test_a_secret_repeated_in_command_healthcheck_labels_and_args_is_masked(
        engine: Engine, remote_client, config_data) -> None:
    full_id = await asyncio.to_thread(
        engine.run, unique("leaky"),
        ["sh", "-c", f"trap 'exit 0' TERM; echo --password={SECRET}; sleep 100000 & wait", "--", SECRET],
        labels={"nekzus.app.id": "grafana", "db.url": f"postgres://app@db/app?password={SECRET}",
                "note": "no secret here"},
        env=[f"DB_PASSWORD={SECRET}", f"API_TOKEN={SHORT}", "GREETING=hello"],
        config={"Entrypoint": ["env", f"PASS_AGAIN={SECRET}"],
                "Healthcheck": {"Test": ["CMD-SHELL", f"test -n {SECRET}"], "Interval": 10**9 * 30}})
    raw = await asyncio.to_thread(engine.api_json, "GET", f"/containers/{full_id}/json")
    assert SECRET in json.dumps(raw["Config"]["Healthcheck"]) and SECRET in json.dumps(raw["Args"])  # the engine has it

    client, headers = await remote_reader(remote_client, config_data)
    response = await client.get(f"/api/v1/containers/{full_id[:12]}", headers=headers)
    assert response.status == 200, await response.text()
    text = await response.text()
    assert SECRET not in text
    doc = json.loads(text)
    config = doc["Config"]
    assert config["Env"][:3] == ["DB_PASSWORD=***", "API_TOKEN=***", "GREETING=hello"]
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "test -n ***"]
    assert config["Healthcheck"]["Interval"] == 10**9 * 30  # the rest of the healthcheck is kept
    assert config["Entrypoint"] == ["env", "PASS_AGAIN=***"]
    assert config["Cmd"][-1] == "***" and "echo --password=***;" in config["Cmd"][2]
    assert doc["Args"][-1] == "***" and doc["Args"][:-1] == [a.replace(SECRET, "***") for a in raw["Args"][:-1]]
    assert config["Labels"] == {"nekzus.app.id": "grafana", "db.url": "postgres://app@db/app?password=***",
                                "note": "no secret here"}
    # Everything else is the engine's document unchanged.
    for key in ("Id", "Name", "Path", "HostConfig", "Mounts", "NetworkSettings", "Image"):
        assert unordered(doc[key]) == unordered(raw[key]), key


async def test_a_container_without_secrets_is_returned_as_the_engine_gave_it(engine: Engine, client) -> None:
    full_id = await asyncio.to_thread(engine.run, unique("plain"), ["sleep", "100000"],
                                      labels={"a": "b"}, env=["GREETING=hello"])
    raw = await asyncio.to_thread(engine.api_json, "GET", f"/containers/{full_id}/json")
    doc = await (await client.get(f"/api/v1/containers/{full_id[:12]}")).json()
    assert unordered(doc["Config"]) == unordered(raw["Config"])
    assert doc["Args"] == raw["Args"] and doc["Path"] == raw["Path"]
