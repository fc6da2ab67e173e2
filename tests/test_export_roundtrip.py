"""Compose export round trip against the real dockerd: export a stack, delete the originals, bring the file up
with Debian's docker-compose 1.29 under a new project name (secrets supplied in .env), and compare every
mapped field of the new containers with the originals. The zip is unpacked and `docker-compose config`
must accept it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path
from urllib.parse import urlencode

import jsonschema
import pytest
import yaml

from tests.harness.app import unique
from tests.harness.engines import BUSYBOX, shell_cmd

COMPOSE = shutil.which("docker-compose")
SCHEMA = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJyb3VuZHRyaXAiLCJpYXQiOjE3MDAwMDAwMDB9"
       ".cm91bmQtdHJpcC1zaWduYXR1cmU")
COMPOSE_TIMEOUT = 90

pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose (Debian package) is not installed")


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def env_lines(env_content: str) -> list[str]:
    """The .env template's variable lines (its comments say what each replaces)."""
    return [line for line in env_content.splitlines() if line and not line.startswith("#")]


async def api(engine, method: str, path: str, body=None, expect=(200, 201, 204)):
    return await asyncio.to_thread(engine.api_json, method, path, body, expect=expect)


async def compose(engine, project_dir: Path, project: str, *args: str) -> str:
    """Run docker-compose against the test engine; returns its stdout, a failure shows its stderr."""
    env = {**os.environ, "DOCKER_HOST": engine.url, "COMPOSE_INTERACTIVE_NO_CLI": "1"}
    proc = await asyncio.create_subprocess_exec(
        COMPOSE, "--no-ansi", "-p", project, *args, cwd=project_dir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(COMPOSE_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{err.decode(errors='replace')}"
    return out.decode()


@pytest.fixture
async def scratch(engine, tmp_path):
    """Networks, volumes and images a test makes, removed afterwards (the engine fixture removes containers)."""
    made: dict[str, list[str]] = {"networks": [], "volumes": [], "images": []}
    yield made
    for c in await api(engine, "GET", "/containers/json?all=1"):
        await asyncio.to_thread(engine.api, "DELETE", f"/containers/{c['Id']}?force=1&v=1")
    for kind, items in made.items():
        for name in items:
            await asyncio.to_thread(engine.api, "DELETE", f"/{kind}/{name}?force=1" if kind == "images"
                                    else f"/{kind}/{name}")


async def make_image(engine, scratch, tag: str) -> str:
    """An image with its own Env, Cmd, Labels, WorkingDir and ExposedPorts (by commit: no registry here)."""
    base = await api(engine, "POST", "/containers/create", {"Image": BUSYBOX, "Cmd": ["true"]})
    changes = ["ENV APP_MODE=prod", 'LABEL org.example.team=core', "WORKDIR /srv", "EXPOSE 8080",
               "CMD " + json.dumps(shell_cmd("sleep 100000"))]
    query = urlencode({"container": base["Id"], "repo": "localhost/webapp", "tag": tag,
                       "changes": "\n".join(changes)})
    await api(engine, "POST", f"/commit?{query}")
    await api(engine, "DELETE", f"/containers/{base['Id']}")
    image = f"localhost/webapp:{tag}"
    scratch["images"].append(image)
    return image


async def create(engine, name: str, body: dict) -> str:
    created = await api(engine, "POST", f"/containers/create?name={name}", body, expect=(201,))
    await api(engine, "POST", f"/containers/{created['Id']}/start", expect=(204,))
    return created["Id"]


def user_labels(labels: dict | None) -> dict:
    return {k: v for k, v in (labels or {}).items() if not k.startswith("com.docker.compose.")}


def bindings(host: dict) -> dict:
    return {port: sorted((b.get("HostIp", ""), b.get("HostPort", "")) for b in rows or [])
            for port, rows in (host.get("PortBindings") or {}).items()}


def mounts(doc: dict) -> list[tuple]:
    return sorted((m["Type"], m.get("Name") or m.get("Source"), m["Destination"], m["RW"])
                  for m in doc.get("Mounts") or [])


def aliases(doc: dict, network: str, automatic: set[str]) -> list[str]:
    endpoint = doc["NetworkSettings"]["Networks"][network]
    return sorted(set(endpoint.get("Aliases") or []) - automatic)


def mapped_fields(doc: dict, image_cmd: list[str] | None = None) -> dict:
    """Every field the export maps, as the engine records it (compose's own labels left aside)."""
    config, host = doc["Config"], doc["HostConfig"]
    return {
        "image": config["Image"], "name": doc["Name"], "hostname": config["Hostname"],
        "user": config["User"], "working_dir": config["WorkingDir"],
        "entrypoint": config["Entrypoint"], "command": config["Cmd"],
        "environment": sorted(config["Env"] or []), "ports": bindings(host),
        "exposed": sorted(config.get("ExposedPorts") or {}), "mounts": mounts(doc), "tmpfs": host.get("Tmpfs"),
        "restart": host["RestartPolicy"], "healthcheck": config.get("Healthcheck"),
        "labels": user_labels(config["Labels"]), "privileged": host["Privileged"],
        "cap_add": sorted(host.get("CapAdd") or []), "cap_drop": sorted(host.get("CapDrop") or []),
        "extra_hosts": sorted(host.get("ExtraHosts") or []), "dns": host.get("Dns") or [],
        "shm_size": host["ShmSize"],
        "ulimits": sorted((u["Name"], u["Soft"], u["Hard"]) for u in host["Ulimits"] or []),
        "sysctls": host.get("Sysctls") or {}, "security_opt": host.get("SecurityOpt") or [],
        "stop_signal": config.get("StopSignal"), "stop_timeout": config.get("StopTimeout"),
        "init": host.get("Init"), "logging": host["LogConfig"], "memory": host["Memory"],
        "nano_cpus": host["NanoCpus"], "mem_reservation": host["MemoryReservation"],
        "pids_limit": host.get("PidsLimit"), "read_only": host["ReadonlyRootfs"],
        "group_add": host.get("GroupAdd"), "devices": host.get("Devices"),
    }


async def build_stack(engine, scratch, tmp_path: Path) -> dict:
    """Two containers using every field docs/export.md lists as mapped; returns names, secrets and ports for the
    checks."""
    tag = unique("rt")
    network, volume = f"{tag}-net", f"{tag}-data"
    await api(engine, "POST", "/networks/create", {"Name": network, "Labels": {"org.example.stack": tag}},
              expect=(201,))
    scratch["networks"].append(network)
    await api(engine, "POST", "/volumes/create", {"Name": volume}, expect=(201,))
    scratch["volumes"].append(volume)
    image = await make_image(engine, scratch, tag)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "app.conf").write_text("mode=test\n")
    p1, p2, p6, pudp = free_port(), free_port(), free_port(socket.AF_INET6, "::1"), free_port()
    secrets = {"web": {"DB_PASSWORD": "web-pw-" + tag, "API_KEY": "api-key-" + tag, "SESSION_SEED": JWT},
               "worker": {"DB_PASSWORD": "worker-pw-" + tag}}
    web, worker = f"{tag}-web", f"{tag}-worker"
    await create(engine, web, {
        "Image": image, "Hostname": "webhost",
        "Env": [f"{k}={v}" for k, v in secrets["web"].items()] + ["GREETING=costs $5 (${not a var})", "PLAIN=1"],
        "Labels": {"com.example.role": "web"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "9000/tcp": {}},
        "Healthcheck": {"Test": ["CMD-SHELL", "test -d /data"], "Interval": 5_000_000_000,
                        "Timeout": 2_000_000_000, "Retries": 4, "StartPeriod": 1_000_000_000},
        "StopSignal": "SIGINT", "StopTimeout": 7,
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": ["web-alias", "api"]}}},
        "HostConfig": {
            "NetworkMode": network,
            "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(p1)},
                                        {"HostIp": "127.0.0.1", "HostPort": str(p2)},
                                        {"HostIp": "::1", "HostPort": str(p6)}],
                             "53/udp": [{"HostIp": "127.0.0.1", "HostPort": str(pudp)}]},
            "Binds": [f"{volume}:/data", f"{conf_dir}:/etc/app:ro"],
            "Tmpfs": {"/run/scratch": "size=16m"},
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
            "CapAdd": ["NET_ADMIN"], "CapDrop": ["MKNOD"],
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
            "Sysctls": {"net.ipv4.tcp_keepalive_time": "600"},
            "ExtraHosts": ["db.local:127.0.0.5"], "Dns": ["127.0.0.53"],
            "Memory": 64 << 20, "MemoryReservation": 32 << 20, "NanoCpus": 500_000_000, "ShmSize": 32 << 20,
            "SecurityOpt": ["no-new-privileges"], "Init": True,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
        },
    })
    await create(engine, worker, {
        "Image": BUSYBOX, "User": "65534:65534", "WorkingDir": "/tmp",
        "Entrypoint": ["sh", "-c"], "Cmd": ["trap 'exit 0' TERM; sleep 100000 & wait $!"],
        "Env": [f"{k}={v}" for k, v in secrets["worker"].items()],
        "HostConfig": {"NetworkMode": f"container:{web}", "Binds": [f"{volume}:/shared:ro"],
                       "RestartPolicy": {"Name": "always"}, "ReadonlyRootfs": True, "GroupAdd": ["daemon"],
                       "PidsLimit": 64, "Devices": [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zero2",
                                                     "CgroupPermissions": "rw"}]},
    })
    return {"tag": tag, "web": web, "worker": worker, "network": network, "volume": volume, "secrets": secrets}


async def test_stack_round_trip_through_docker_compose(client, engine, scratch, tmp_path):
    stack = await build_stack(engine, scratch, tmp_path)
    web, worker = stack["web"], stack["worker"]
    originals = {name: await api(engine, "GET", f"/containers/{name}/json") for name in (web, worker)}
    # The engine took every setting (else the comparison below would prove nothing about it).
    made = mapped_fields(originals[web])
    assert made["tmpfs"] == {"/run/scratch": "size=16m"} and made["sysctls"] and made["init"] is True
    assert ("nofile", 1024, 2048) in made["ulimits"] and made["stop_timeout"] == 7
    assert len(made["ports"]["80/tcp"]) == 3 and made["memory"] and made["nano_cpus"] and made["mem_reservation"]
    made = mapped_fields(originals[worker])
    assert made["devices"] and made["pids_limit"] == 64 and made["read_only"] and made["group_add"] == ["daemon"]

    response = await client.post("/api/v1/containers/batch/export",
                                 json={"container_ids": [web, worker], "stack_name": stack["tag"]})
    assert response.status == 200, await response.text()
    raw = await response.text()
    body = json.loads(raw)
    document = yaml.safe_load(body["content"])
    jsonschema.Draft7Validator(SCHEMA).validate(document)
    for values in stack["secrets"].values():
        for value in values.values():
            assert value not in raw
    # The same name with two values gets one placeholder per service, so that one .env feeds both.
    prefix = stack["tag"].upper().replace("-", "_")
    fill = {f"{prefix}_WEB_DB_PASSWORD": stack["secrets"]["web"]["DB_PASSWORD"],
            f"{prefix}_WORKER_DB_PASSWORD": stack["secrets"]["worker"]["DB_PASSWORD"],
            "API_KEY": stack["secrets"]["web"]["API_KEY"], "SESSION_SEED": JWT}
    assert env_lines(body["env_content"]) == [f"{k}=" for k in sorted(fill)]
    assert sorted(w for w in body["warnings"] if w.startswith("Secret ")) == \
        sorted(f"Secret '{k}' was sanitized" for k in fill)
    web_service = document["services"][stack["web"].lower()]
    # What the image sets is not repeated; what the container adds is there.
    assert "command" not in web_service and "working_dir" not in web_service
    assert "org.example.team" not in web_service["labels"]
    assert not any(e.startswith(("APP_MODE=", "PATH=")) for e in web_service["environment"])
    assert web_service["expose"] == ["9000/tcp"]  # 80 and 53/udp are published: under ports
    assert document["services"][stack["worker"].lower()]["network_mode"] == f"service:{web.lower()}"

    for container in originals.values():
        await asyncio.to_thread(engine.api, "DELETE", f"/containers/{container['Id']}?force=1")
    project_dir = tmp_path / "stack"
    project_dir.mkdir()
    (project_dir / "compose.yaml").write_text(body["content"])
    (project_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in sorted(fill.items())))
    project = unique("again").replace("-", "")
    await compose(engine, project_dir, project, "-f", "compose.yaml", "up", "-d", "--no-build")

    recreated = {name: await api(engine, "GET", f"/containers/{name}/json") for name in (web, worker)}
    for name in (web, worker):
        assert recreated[name]["Config"]["Labels"]["com.docker.compose.project"] == project
        assert recreated[name]["Id"] != originals[name]["Id"]
        before, after = mapped_fields(originals[name]), mapped_fields(recreated[name])
        assert {k: v for k, v in after.items() if v != before[k]} == {}, (before, after)
    # The worker shares the new web container's network; the alias the user set survives on the old network.
    assert recreated[worker]["HostConfig"]["NetworkMode"] == f"container:{recreated[web]['Id']}"
    automatic = {web, recreated[web]["Id"][:12], originals[web]["Id"][:12], "webhost"}
    assert aliases(recreated[web], stack["network"], automatic) == ["api", "web-alias"]
    assert aliases(originals[web], stack["network"], automatic) == ["api", "web-alias"]
    assert recreated[web]["Config"]["Env"].count(f"SESSION_SEED={JWT}") == 1

    await compose(engine, project_dir, project, "-f", "compose.yaml", "down", "--timeout", "1")


async def test_zip_unpacks_and_docker_compose_accepts_it(client, engine, scratch, tmp_path):
    stack = await build_stack(engine, scratch, tmp_path)
    response = await client.post("/api/v1/containers/batch/export?format=zip",
                                 json={"container_ids": [stack["web"], stack["worker"]], "stack_name": "My Stack"})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="my-stack.zip"'
    data = await response.read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["my-stack/compose.yaml", "my-stack/.env"]
        texts = {n: archive.read(n).decode() for n in archive.namelist()}
        archive.extractall(tmp_path / "unzipped")
    for values in stack["secrets"].values():
        for value in values.values():
            assert value.encode() not in data and all(value not in t for t in texts.values())
    jsonschema.Draft7Validator(SCHEMA).validate(yaml.safe_load(texts["my-stack/compose.yaml"]))
    folder = tmp_path / "unzipped" / "my-stack"
    prefix = stack["tag"].upper().replace("-", "_")
    assert env_lines((folder / ".env").read_text()) == [
        "API_KEY=", f"{prefix}_WEB_DB_PASSWORD=", f"{prefix}_WORKER_DB_PASSWORD=", "SESSION_SEED="]
    resolved = yaml.safe_load(await compose(engine, folder, "zipcheck", "-f", "compose.yaml", "config"))
    assert set(resolved["services"]) == {stack["web"].lower(), stack["worker"].lower()}
    web = resolved["services"][stack["web"].lower()]
    # `config` prints the resolved file with `$` escaped again; the unfilled placeholders resolve to "".
    assert web["environment"]["GREETING"] == "costs $$5 ($${not a var})"
    assert web["environment"]["API_KEY"] == "" and web["environment"]["SESSION_SEED"] == ""


async def test_secrets_under_names_compose_cannot_interpolate_come_back_from_the_env_file(client, engine, tmp_path):
    """`DB-PASSWORD`, `db.password`, a name with a newline, a secret label and a log option: the export
    holds none of their values, docker-compose accepts the file and the commented .env template, and once
    the template is filled each setting resolves to its original value."""
    name = unique("oddnames")
    values = {"DB-PASSWORD": "dash-value-123", "db.password": "dot-value-456", "DB_PASSWORD": "plain-value-789"}
    await asyncio.to_thread(
        engine.run, name, "sleep 100000", env=[f"{k}={v}" for k, v in values.items()] + ["ODD\nNAME=x"],
        labels={"traefik.http.middlewares.a.basicauth.users": "admin:hashed-value-1"},
        LogConfig={"Type": "json-file", "Config": {"max-size": "1m"}})
    response = await client.post(f"/api/v1/containers/{name}/export", json={})
    assert response.status == 200, await response.text()
    raw = await response.text()
    body = json.loads(raw)
    for value in list(values.values()) + ["hashed-value-1"]:
        assert value not in raw
    # A name with whitespace is refused by Compose: left out, and said so.
    warnings = body["warnings"]
    assert any(w.startswith('Environment variable "ODD\\nNAME" of container') for w in warnings), warnings
    service = yaml.safe_load(body["content"])["services"][name.lower()]
    # Fill the template: each `${VARIABLE}` of the file gets the value of the setting it stands for.
    originals = {**values, "traefik.http.middlewares.a.basicauth.users": "admin:hashed-value-1"}
    settings = {**{e.partition("=")[0]: e.partition("=")[2] for e in service["environment"]}, **service["labels"]}
    fill = {settings[k][2:-1]: v for k, v in originals.items()}
    assert [f"{k}=" for k in sorted(fill)] == env_lines(body["env_content"]) and len(fill) == len(originals)
    filled = "".join(f"{line}{fill[line[:-1]]}\n" if line.endswith("=") and not line.startswith("#") else line + "\n"
                     for line in body["env_content"].splitlines())
    project_dir = tmp_path / "odd"
    project_dir.mkdir()
    (project_dir / "compose.yaml").write_text(body["content"])
    (project_dir / ".env").write_text(filled)
    resolved = yaml.safe_load(await compose(engine, project_dir, "oddcheck", "-f", "compose.yaml", "config"))
    again = resolved["services"][name.lower()]
    assert {k: again["environment"][k] for k in values} == values
    assert again["labels"]["traefik.http.middlewares.a.basicauth.users"] == "admin:hashed-value-1"
