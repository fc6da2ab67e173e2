"""Compose export over HTTP against the real dockerd: response shape, body checks, errors, partial batches,
zip, secret safety, warnings, scopes, and the refusal of runtimes that cannot export."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from nekzusd.keys import TOKENS
from tests.harness.app import run_container, unique
from tests.harness.engines import BUSYBOX

SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
C = "/api/v1/containers"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJleHBvcnQtdGVzdCIsImlhdCI6MTcwMDAwMDAwMH0"
       ".ZXhwb3J0LXRlc3Qtc2lnbmF0dXJl")
SECRET_ENV = {"DB_PASSWORD": "pw-9f8e7d6c5b", "TLS_BLOB": PEM, "SESSION": JWT, "AUTHOR": "Jane Doe",
              "KEYBOARD": "de-latin1"}


def valid(content: str) -> dict:
    document = yaml.safe_load(content)
    jsonschema.Draft7Validator(SCHEMA).validate(document)
    return document


def env_lines(env_content: str) -> list[str]:
    """The .env template's variable lines (its comments say what each replaces)."""
    return [line for line in env_content.splitlines() if line and not line.startswith("#")]


async def error_of(response, status: int, code: str) -> dict:
    body = await response.json()
    assert response.status == status, body
    assert body["error"] == code and body["message"], body
    return body


async def test_single_export_answers_the_reference_shape_and_hides_secrets(client, engine):
    name = unique("Grafana")
    await run_container(engine, name, env=SECRET_ENV, PortBindings={"3000/tcp": [{"HostIp": "127.0.0.1",
                                                                                 "HostPort": "3000"}]})
    response = await client.post(f"{C}/{name}/export", json={"sanitize_secrets": True, "include_volumes": True,
                                                           "include_networks": True})
    assert response.status == 200
    raw = await response.text()
    body = json.loads(raw)
    base = name.lower()
    assert set(body) == {"format", "content", "filename", "warnings", "env_content", "env_filename"}
    assert body["format"] == "docker-compose"
    assert body["filename"] == f"{base}-compose.yaml" and body["env_filename"] == f"{base}.env"
    service = valid(body["content"])["services"][base]
    assert service["container_name"] == name and service["image"] == BUSYBOX
    assert service["ports"] == ["127.0.0.1:3000:3000/tcp"]
    env = service["environment"]
    for secret in ("DB_PASSWORD", "TLS_BLOB", "SESSION"):
        assert f"{secret}=${{{secret}}}" in env
        assert f"Secret '{secret}' was sanitized" in body["warnings"]
    assert "AUTHOR=Jane Doe" in env and "KEYBOARD=de-latin1" in env
    assert env_lines(body["env_content"]) == ["DB_PASSWORD=", "SESSION=", "TLS_BLOB="]
    assert '# SESSION: environment variable "SESSION" of service ' in body["env_content"]
    for value in ("pw-9f8e7d6c5b", "MIIBVQIBADANBgkqhkiG9w0BAQEFAASC", JWT):
        assert value not in raw


async def test_preview_is_identical_to_export_and_output_is_stable(client, engine):
    name = unique("stable")
    await run_container(engine, name, env={"API_KEY": "k-123456789"}, labels={"b": "2", "a": "1"})
    answers = [await (await client.post(f"{C}/{name}/{path}", json={})).text()
               for path in ("export", "export/preview", "export")]
    assert answers[0] == answers[1] == answers[2]


async def test_single_export_needs_no_body_and_takes_options(client, engine):
    name, network, volume = unique("opts"), unique("net"), unique("vol")
    await asyncio.to_thread(engine.api_json, "POST", "/networks/create", {"Name": network}, expect=(201,))
    try:
        await run_container(engine, name, NetworkMode=network, Binds=[f"{volume}:/data"])
        full = valid((await (await client.post(f"{C}/{name}/export")).json())["content"])
        assert full["networks"][network]["name"] == network and full["volumes"] == {volume: {"name": volume}}
        assert list(full["services"][name]["networks"]) == [network]
        assert full["services"][name]["volumes"] == [f"{volume}:/data"]
        bare = await (await client.post(f"{C}/{name}/export", json={"include_volumes": False,
                                                                    "include_networks": False})).json()
        document = valid(bare["content"])
        assert set(document) == {"services"}
        assert "volumes" not in document["services"][name] and "networks" not in document["services"][name]
    finally:
        await asyncio.to_thread(engine.remove_all)
        await asyncio.to_thread(engine.api, "DELETE", f"/networks/{network}")
        await asyncio.to_thread(engine.api, "DELETE", f"/volumes/{volume}")


@pytest.mark.parametrize("body, field", [
    ({"sanitize_secrets": "no"}, "sanitize_secrets"),
    ({"include_volumes": 1}, "include_volumes"),
    ({"include_networks": None, "format": "zip"}, "format"),
])
async def test_single_export_body_is_checked(client, engine, body, field):
    name = unique("body")
    await run_container(engine, name)
    error = await error_of(await client.post(f"{C}/{name}/export", json=body), 400, "INVALID_REQUEST_BODY")
    assert error["details"]["field"] == field
    await error_of(await client.post(f"{C}/{name}/export", data="[1]"), 400, "INVALID_REQUEST_BODY")
    await error_of(await client.post(f"{C}/{name}/export", data="{nope"), 400, "INVALID_REQUEST_BODY")


async def test_single_export_of_unknown_or_malformed_container(client, engine):
    missing = unique("missing")
    error = await error_of(await client.post(f"{C}/{missing}/export"), 404, "CONTAINER_NOT_FOUND")
    assert missing in error["message"]
    await error_of(await client.post(f"{C}/-bad!/export/preview"), 400, "INVALID_CONTAINER_ID")


async def test_format_parameter(client, engine):
    name = unique("fmt")
    await run_container(engine, name, env={"SECRET": "s3cr3t-value"})
    await error_of(await client.post(f"{C}/{name}/export?format=xml"), 400, "INVALID_PARAMETER")
    await error_of(await client.post(f"{C}/{name}/export/preview?format=zip"), 400, "INVALID_PARAMETER")
    response = await client.post(f"{C}/{name}/export?format=zip")
    assert response.status == 200 and response.content_type == "application/zip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{name}.zip"'
    data = await response.read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [f"{name}/compose.yaml", f"{name}/.env"]
        assert env_lines(archive.read(f"{name}/.env").decode()) == ["SECRET="]
        valid(archive.read(f"{name}/compose.yaml").decode())
        assert all(b"s3cr3t-value" not in archive.read(n) for n in archive.namelist())
    assert b"s3cr3t-value" not in data


async def test_batch_export_keeps_order_and_names_the_stack(client, engine):
    first, second = unique("zeta"), unique("alpha")
    await run_container(engine, first, env={"GITHUB_TOKEN": "ghp_" + "a" * 30})
    await run_container(engine, second)
    response = await client.post(f"{C}/batch/export", json={"container_ids": [first, second],
                                                            "stack_name": "Home Lab!"})
    assert response.status == 200
    body = await response.json()
    assert body["filename"] == "home-lab-compose.yaml" and body["env_filename"] == "home-lab.env"
    assert list(valid(body["content"])["services"]) == [first, second]
    assert env_lines(body["env_content"]) == ["GITHUB_TOKEN="] and "a" * 30 not in json.dumps(body)
    preview = await client.post(f"{C}/batch/export/preview", json={"container_ids": [first, second],
                                                                   "stack_name": "Home Lab!"})
    assert await preview.json() == body
    default = await (await client.post(f"{C}/batch/export", json={"container_ids": [second]})).json()
    assert default["filename"] == "exported-stack-compose.yaml"


async def test_batch_partial_failure_is_206_and_total_failure_404(client, engine):
    present, missing = unique("here"), unique("gone")
    present_id = await run_container(engine, present)
    response = await client.post(f"{C}/batch/export", json={"container_ids": [missing, present_id, present]})
    assert response.status == 206
    body = await response.json()
    assert list(valid(body["content"])["services"]) == [present]
    assert any(missing in w and "skipped" in w for w in body["warnings"])
    assert any(present in w and "more than once" in w for w in body["warnings"])
    zipped = await client.post(f"{C}/batch/export?format=zip", json={"container_ids": [missing, present]})
    assert zipped.status == 206 and zipped.headers["X-Export-Warning-Count"] == "1"
    error = await error_of(await client.post(f"{C}/batch/export", json={"container_ids": [missing, unique("x")]}),
                           404, "ALL_CONTAINERS_FAILED")
    assert len(error["details"]["warnings"]) == 2


@pytest.mark.parametrize("body, code", [
    ({"container_ids": []}, "EMPTY_CONTAINER_LIST"),
    ({}, "INVALID_REQUEST_BODY"),
    ({"container_ids": "abc"}, "INVALID_REQUEST_BODY"),
    ({"container_ids": [1]}, "INVALID_REQUEST_BODY"),
    ({"container_ids": ["a"] * 101}, "INVALID_REQUEST_BODY"),
    ({"container_ids": ["a"], "stack_name": 5}, "INVALID_REQUEST_BODY"),
    ({"container_ids": ["a"], "stack_name": "s" * 129}, "INVALID_REQUEST_BODY"),
    ({"container_ids": ["a"], "containerIds": ["a"]}, "INVALID_REQUEST_BODY"),
    ({"container_ids": ["ok", "../etc"]}, "INVALID_CONTAINER_ID"),
])
async def test_batch_body_is_checked(client, engine, body, code):
    await error_of(await client.post(f"{C}/batch/export", json=body), 400, code)
    await error_of(await client.post(f"{C}/batch/export/preview", json=body), 400, code)


async def test_batch_body_is_required(client, engine):
    await error_of(await client.post(f"{C}/batch/export"), 400, "INVALID_REQUEST_BODY")


async def test_warnings_for_risky_or_unportable_settings(client, engine, tmp_path):
    socket_file = tmp_path / "docker.sock"
    socket_file.write_text("")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    name = unique("risky")
    # Created only: this machine cannot start privileged containers, and export does not need them running.
    await asyncio.to_thread(engine.run, name, Privileged=True, NetworkMode="host", start=False,
                            Binds=[f"{socket_file}:/var/run/docker.sock", f"{data_dir}:/data"],
                            config={"Volumes": {"/cache": {}}})
    body = await (await client.post(f"{C}/{name}/export", json={})).json()
    valid(body["content"])
    text = "\n".join(body["warnings"])
    assert "runs privileged" in text
    assert "uses the host network" in text
    assert "mounts the Docker socket" in text
    assert "Anonymous volume at '/cache'" in text and "not portable" in text
    assert f"Bind mount '{data_dir}'" in text and "must exist on the host" in text


async def test_shared_network_by_id_is_exported_by_name(client, engine):
    owner, sidecar = unique("owner"), unique("sidecar")
    owner_id = await run_container(engine, owner)
    full_id = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{owner_id}/json"))["Id"]
    await run_container(engine, sidecar, NetworkMode=f"container:{full_id}")
    body = await (await client.post(f"{C}/{sidecar}/export", json={})).json()
    assert valid(body["content"])["services"][sidecar]["network_mode"] == f"container:{owner}"
    assert not any("named by id" in w for w in body["warnings"])
    stack = await (await client.post(f"{C}/batch/export", json={"container_ids": [owner, sidecar]})).json()
    assert valid(stack["content"])["services"][sidecar]["network_mode"] == f"service:{owner}"


async def test_unsanitized_export_needs_the_write_scope(make_client, config_data, engine):
    config_data["auth"] = {"local_networks": ["10.254.0.0/16"]}  # the test client (127.0.0.1) is not local
    client = await make_client(config_data)
    name = unique("scoped")
    await run_container(engine, name, env={"DB_PASSWORD": "open-sesame-42"})
    tokens = client.app[TOKENS]
    read = {"Authorization": f"Bearer {tokens.create('reader', ['read:containers'], 600)}"}
    write = {"Authorization": f"Bearer {tokens.create('writer', ['write:containers'], 600)}"}
    await error_of(await client.post(f"{C}/{name}/export", json={}), 401, "UNAUTHORIZED")
    sanitized = await client.post(f"{C}/{name}/export", json={}, headers=read)
    assert sanitized.status == 200 and "open-sesame-42" not in await sanitized.text()
    for path, body in ((f"{C}/{name}/export", {"sanitize_secrets": False}),
                       (f"{C}/batch/export/preview", {"container_ids": [name], "sanitize_secrets": False})):
        await error_of(await client.post(path, json=body, headers=read), 403, "INSUFFICIENT_SCOPE")
        revealed = await (await client.post(path, json=body, headers=write)).json()
        assert "DB_PASSWORD=open-sesame-42" in yaml.safe_load(revealed["content"])["services"][name]["environment"]
        assert "Secrets were not sanitized: this file contains credentials" in revealed["warnings"]
        assert revealed["env_content"] == ""


async def test_engine_down_is_503(make_client, config_data, engine, tmp_path):
    config_data["runtimes"] = {"docker": {"host": f"unix://{tmp_path}/absent.sock"}}
    client = await make_client(config_data)
    await error_of(await client.post(f"{C}/whatever/export"), 503, "RUNTIME_UNAVAILABLE")
    await error_of(await client.post(f"{C}/batch/export", json={"container_ids": ["a", "b"]}), 503,
                   "RUNTIME_UNAVAILABLE")


async def test_kubernetes_path_form_without_kubernetes_is_a_clear_error(client, engine):
    error = await error_of(await client.post(f"{C}/default/my-pod/export"), 404, "NOT_FOUND")
    assert "Kubernetes" in error["message"]


@pytest.mark.kubernetes
async def test_kubernetes_export_is_refused_with_501(k8s_client):
    """The real Kubernetes runtime (test cluster) offers no Compose export: a clear 501, single and batch."""
    error = await error_of(await k8s_client.post(f"{C}/default/my-pod/export"), 501, "EXPORT_NOT_SUPPORTED")
    assert "kubernetes" in error["message"]
    response = await k8s_client.post(f"{C}/batch/export?runtime=kubernetes&namespace=default",
                                     json={"container_ids": ["a", "b"]})
    await error_of(response, 501, "EXPORT_NOT_SUPPORTED")
