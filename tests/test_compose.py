"""Compose export (docs/export.md) over inspect JSON recorded from a real dockerd 20.10 (tests/data/inspect).

Fixtures: container-web (running; user network + second network with aliases, ports on several addresses
and IPv6, secrets, limits, …), container-db (busybox image without config; healthcheck, named + anonymous
volumes, hostname), container-tool (privileged, host network, docker socket), container-sidecar (network of
container web), container-isolated (network none, healthcheck disabled, entrypoint reset). Cases the engine
could not produce here are derived in the tests from these, by `_edited` copies that say what they change.
"""

import copy
import io
import json
import re
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from nekzusd.compose import (ENGINE_DEFAULT_PATH, Export, ServiceSource, _duration, export_services, export_zip,
                             variable_name,
                             sanitize_name)

DATA = Path(__file__).parent / "data"
SCHEMA = json.loads((DATA / "compose-spec.json").read_text())
WEB_SECRETS = {
    "DB_PASSWORD": "hunter2-not-real",
    "API_KEY": "abc123-not-real",
    "TLS_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----",
    "SESSION_BLOB": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
}


def load(name: str) -> dict:
    return json.loads((DATA / "inspect" / f"{name}.json").read_text())


def web() -> ServiceSource:
    return ServiceSource(load("container-web"), load("image-webapp"), {"appdata": load("volume-appdata")},
                         {"appnet": load("network-appnet"), "frontnet": load("network-frontnet")})


def db() -> ServiceSource:
    return ServiceSource(load("container-db"), load("image-busybox"),
                         {"appdata": load("volume-appdata"), "scratchvol": load("volume-scratchvol")},
                         {"appnet": load("network-appnet")})


def tool() -> ServiceSource:
    return ServiceSource(load("container-tool"), load("image-busybox"))


def sidecar() -> ServiceSource:
    return ServiceSource(load("container-sidecar"), load("image-busybox"))


def isolated() -> ServiceSource:
    return ServiceSource(load("container-isolated"), load("image-webapp"))


ALL = (web, db, tool, sidecar, isolated)


def env_lines(export: Export) -> list[str]:
    """The .env template's variable lines (comments left out)."""
    return [line for line in export.env_content.splitlines() if line and not line.startswith("#")]


def _edited(source: ServiceSource, edit) -> ServiceSource:
    """A copy of a recorded source with `edit(container_dict)` applied (for cases not captured live)."""
    container = copy.deepcopy(source.container)
    edit(container)
    return ServiceSource(container, source.image, source.volumes, source.networks)


def parse(export: Export) -> dict:
    document = yaml.safe_load(export.content)
    jsonschema.Draft7Validator(SCHEMA).validate(document)
    return document


def service(export: Export, name: str) -> dict:
    return parse(export)["services"][name]


# --- validity and determinism --------------------------------------------------------------------------

@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("flags", [(True, True, True), (False, True, True), (True, False, True),
                                   (True, True, False), (False, False, False)])
def test_every_fixture_validates_against_the_compose_schema(make, flags):
    sanitize, volumes, networks = flags
    parse(export_services([make()], sanitize_secrets=sanitize, include_volumes=volumes, include_networks=networks))


def test_batch_validates_and_keeps_input_order():
    doc = parse(export_services([f() for f in ALL], stack_name="stack"))
    assert list(doc["services"]) == ["web", "db", "tool", "sidecar", "isolated"]


def test_output_is_byte_identical_for_the_same_input():
    first = export_services([f() for f in ALL])
    second = export_services([f() for f in ALL])
    assert first == second
    assert export_zip(first, "s") == export_zip(second, "s")


def test_output_does_not_depend_on_the_order_of_unordered_inspect_data():
    def shuffle(c):
        c["Config"]["Env"].reverse()
        c["Config"]["Labels"] = dict(reversed(list(c["Config"]["Labels"].items())))
        c["HostConfig"]["PortBindings"] = dict(reversed(list(c["HostConfig"]["PortBindings"].items())))
        for bindings in c["HostConfig"]["PortBindings"].values():
            bindings.reverse()
        c["Mounts"].reverse()
        c["HostConfig"]["CapAdd"].reverse()
        c["NetworkSettings"]["Networks"] = dict(reversed(list(c["NetworkSettings"]["Networks"].items())))
    assert export_services([_edited(web(), shuffle)]).content == export_services([web()]).content


def test_service_keys_come_in_a_deliberate_order():
    keys = list(service(export_services([db()]), "db"))
    assert keys[:4] == ["image", "container_name", "hostname", "user"]
    assert keys.index("environment") < keys.index("volumes") < keys.index("networks") < keys.index("restart")


def test_top_level_sections_are_separated_by_a_blank_line():
    content = export_services([web()]).content
    assert content.startswith("services:\n  web:\n    image: localhost/webapp:1.0\n")
    assert "\n\nvolumes:\n" in content and "\n\nnetworks:\n" in content


# --- what the image already sets is left out ------------------------------------------------------------

def test_image_defaults_are_left_out():
    svc = service(export_services([web()]), "web")
    env = dict(e.split("=", 1) for e in svc["environment"])
    assert "PATH" not in env and "APP_MODE" not in env          # same as the image's
    assert env["APP_HOME"] == "/opt/webapp"                      # overrides the image's /srv
    for key in ("command", "entrypoint", "user", "working_dir", "healthcheck", "hostname"):
        assert key not in svc
    assert svc["labels"] == {"org.opencontainers.image.version": "1.0-patched", "traefik.enable": "true",
                             "traefik.http.routers.web.rule": "Host(`web.local`)"}
    assert svc["expose"] == ["5000/tcp"]                         # 80, 443, 9000/udp come from the image
    assert svc["stop_signal"] == "SIGINT"


def test_compose_labels_are_dropped():
    content = export_services([web()]).content
    assert "com.docker.compose" not in content


def test_engine_default_path_is_left_out_when_the_image_sets_none():
    # dockerd 20.10 does not write the default PATH into Config.Env; other engines do: simulate one.
    source = _edited(db(), lambda c: c["Config"]["Env"].append(f"PATH={ENGINE_DEFAULT_PATH}"))
    assert not any(e.startswith("PATH=") for e in service(export_services([source]), "db")["environment"])
    custom = _edited(db(), lambda c: c["Config"]["Env"].append("PATH=/opt/bin:/bin"))
    assert "PATH=/opt/bin:/bin" in service(export_services([custom]), "db")["environment"]


def test_without_the_image_inspect_everything_is_kept_and_a_warning_says_so():
    export = export_services([ServiceSource(load("container-web"), None)])
    svc = service(export, "web")
    assert svc["entrypoint"] == ["/bin/sh", "-c"]
    assert svc["command"] == ["trap 'exit 0' TERM; httpd -f -p 8080 & wait"]
    assert svc["user"] == "app" and svc["working_dir"] == "/srv"
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in svc["environment"]
    assert svc["labels"]["maintainer"] == "ops@example.org"
    assert "com.docker.compose.project" not in svc["labels"]
    assert svc["healthcheck"]["interval"] == "30s"
    assert any("could not be inspected" in w for w in export.warnings)


def test_command_and_entrypoint_set_by_the_user():
    svc = service(export_services([db()]), "db")
    assert svc["entrypoint"] == ["/bin/sh"]
    assert svc["command"] == ["-c", "trap 'exit 0' TERM; sleep 3600"]


def test_reset_entrypoint_is_written_as_empty_list_so_that_it_beats_the_image():
    svc = service(export_services([isolated()]), "isolated")
    assert svc["entrypoint"] == [] and svc["command"] == ["sleep", "1000"]


def test_command_is_kept_with_an_overridden_entrypoint_even_when_equal_to_the_image():
    # The engine does not inherit the image's Cmd once the entrypoint is overridden.
    source = _edited(web(), lambda c: c["Config"].update(Entrypoint=["/bin/ash", "-c"]))
    svc = service(export_services([source]), "web")
    assert svc["entrypoint"] == ["/bin/ash", "-c"] and svc["command"] == ["trap 'exit 0' TERM; httpd -f -p 8080 & wait"]


def test_image_referenced_by_id_uses_its_tag():
    source = _edited(web(), lambda c: c["Config"].update(Image=c["Image"]))
    assert service(export_services([source]), "web")["image"] == "localhost/webapp:1.0"


# --- identity, hostname, restart, healthcheck ------------------------------------------------------------

def test_hostname_only_when_the_user_set_it():
    doc = parse(export_services([f() for f in ALL]))["services"]
    assert "hostname" not in doc["web"]          # the short id, set by the engine
    assert "hostname" not in doc["tool"]         # the host's name, on the host network
    assert "hostname" not in doc["sidecar"]      # shares web's network namespace
    assert doc["db"]["hostname"] == "db-primary"
    assert doc["isolated"]["hostname"] == "isolated-box"
    assert doc["db"]["container_name"] == "db"


@pytest.mark.parametrize("policy, expected", [
    ({"Name": "on-failure", "MaximumRetryCount": 3}, "on-failure:3"),
    ({"Name": "on-failure", "MaximumRetryCount": 0}, "on-failure"),
    ({"Name": "always", "MaximumRetryCount": 0}, "always"),
    ({"Name": "unless-stopped", "MaximumRetryCount": 0}, "unless-stopped"),
    ({"Name": "no", "MaximumRetryCount": 0}, None),
    ({"Name": "", "MaximumRetryCount": 0}, None),
])
def test_restart_policy(policy, expected):
    source = _edited(web(), lambda c: c["HostConfig"].update(RestartPolicy=policy))
    assert service(export_services([source]), "web").get("restart") == expected


def test_recorded_restart_policies():
    doc = parse(export_services([f() for f in ALL]))["services"]
    assert (doc["web"]["restart"], doc["db"]["restart"], doc["isolated"]["restart"]) == \
        ("on-failure:3", "unless-stopped", "always")
    assert "restart" not in doc["tool"]


def test_healthcheck_durations_and_disable():
    assert service(export_services([db()]), "db")["healthcheck"] == {
        "test": ["CMD-SHELL", "test -f /data/ok"], "interval": "1m30s", "timeout": "10s",
        "start_period": "2m", "retries": 5}
    assert service(export_services([isolated()]), "isolated")["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (1, "1ns"), (1_500, "1us500ns"), (500_000_000, "500ms"), (1_000_000_000, "1s"),
    (90_000_000_000, "1m30s"), (3_600_000_000_000, "1h"), (3_725_250_000_000, "1h2m5s250ms"),
])
def test_duration(ns, text):
    assert _duration(ns) == text


# --- ports -----------------------------------------------------------------------------------------------

def test_every_binding_of_every_port_with_ipv6_and_protocol():
    assert service(export_services([web()]), "web")["ports"] == [
        "127.0.0.1:8443:443/tcp",
        "[::1]:8443:443/tcp",
        "127.0.0.1::7000/tcp",        # published on a random host port
        "8080:8080/tcp",
        "9000:9000/udp",
    ]


def test_ports_on_all_ipv6_addresses_and_explicit_ipv4():
    def edit(c):
        c["HostConfig"]["PortBindings"] = {"53/udp": [{"HostIp": "::", "HostPort": "5353"},
                                                      {"HostIp": "0.0.0.0", "HostPort": "5353"}]}
    assert service(export_services([_edited(web(), edit)]), "web")["ports"] == \
        ["0.0.0.0:5353:53/udp", "[::]:5353:53/udp"]


def test_publish_all_ports_publishes_exposed_ports_on_random_host_ports():
    def edit(c):
        c["HostConfig"].update(PublishAllPorts=True, PortBindings={})
    svc = service(export_services([_edited(web(), edit)]), "web")
    assert svc["ports"] == ["80/tcp", "443/tcp", "5000/tcp", "7000/tcp", "8080/tcp", "9000/udp"]
    assert "expose" not in svc


# --- volumes ---------------------------------------------------------------------------------------------

def test_volumes_named_bind_readonly_anonymous_and_tmpfs():
    doc = parse(export_services([web(), db()]))
    assert doc["services"]["web"]["volumes"] == [
        "appdata:/data", "/tmp/nekz-capture.776y/host/config:/etc/webapp:ro", "/var/lib/extra"]
    assert doc["services"]["db"]["volumes"] == ["appdata:/data", "scratchvol:/scratch:ro", "/var/cache/anon"]
    assert doc["services"]["web"]["tmpfs"] == ["/run:rw,size=16m,mode=1777", "/scratch"]


def test_named_volumes_are_declared_with_their_real_name_and_settings():
    doc = parse(export_services([web(), db()]))
    assert doc["volumes"] == {
        "appdata": {"name": "appdata", "labels": {"com.example.backup": "daily"}},
        "scratchvol": {"name": "scratchvol", "driver_opts": {"device": "tmpfs", "o": "size=64m", "type": "tmpfs"}},
    }


def test_volume_without_its_inspect_is_declared_by_name():
    doc = parse(export_services([ServiceSource(load("container-db"), load("image-busybox"))]))
    assert doc["volumes"] == {"appdata": {"name": "appdata"}, "scratchvol": {"name": "scratchvol"}}


def test_bind_propagation_and_docker_socket():
    export = export_services([tool()])
    assert service(export, "tool")["volumes"] == [
        "/:/host:ro,rslave", "/tmp/nekz-capture.776y/docker.sock:/var/run/docker.sock"]
    assert any("Docker socket" in w for w in export.warnings)
    assert any("Bind mount '/'" in w and "host path" in w for w in export.warnings)


def test_image_declared_anonymous_volume_is_not_listed_but_warned():
    export = export_services([web()])
    assert "/srv/cache" not in service(export, "web")["volumes"]
    assert any("'/srv/cache'" in w and "not carried over" in w for w in export.warnings)
    assert any("'/var/lib/extra'" in w and "not portable" in w for w in export.warnings)


def test_tmpfs_mount_keeps_its_size():
    def edit(c):
        c["HostConfig"]["Mounts"] = [{"Target": "/cache", "Type": "tmpfs",
                                      "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1777}}]
        c["Mounts"].append({"Destination": "/cache", "Type": "tmpfs", "Mode": "", "RW": True, "Source": ""})
    assert service(export_services([_edited(db(), edit)]), "db")["tmpfs"] == ["/cache:size=1048576,mode=1777"]


def test_include_volumes_false_drops_volumes_but_keeps_tmpfs():
    doc = parse(export_services([web(), db()], include_volumes=False))
    assert "volumes" not in doc
    assert all("volumes" not in svc for svc in doc["services"].values())
    assert doc["services"]["web"]["tmpfs"]


# --- networks --------------------------------------------------------------------------------------------

def test_networks_with_user_aliases_only():
    doc = parse(export_services([web(), db()]))
    assert doc["services"]["web"]["networks"] == {"appnet": {"aliases": ["api", "web-frontend"]},
                                                  "frontnet": {"aliases": ["static-assets"]}}
    # db's recorded aliases are its short id and its hostname, both added by the engine.
    assert doc["services"]["db"]["networks"] == {"appnet": {}}


def test_user_networks_are_declared_with_their_real_name_and_settings():
    doc = parse(export_services([web()]))
    assert doc["networks"]["appnet"] == {"name": "appnet", "ipam": {"config": [{"subnet": "198.18.10.0/24"}]},
                                         "labels": {"com.example.tier": "backend"}}
    assert doc["networks"]["frontnet"] == {
        "name": "frontnet", "driver_opts": {"com.docker.network.bridge.name": "nkz-front"}, "internal": True,
        "enable_ipv6": True, "ipam": {"config": [{"subnet": "198.18.11.0/24"}, {"subnet": "fd00:dead:beef::/64"}]}}


def test_network_modes():
    doc = parse(export_services([f() for f in ALL]))["services"]
    assert doc["tool"]["network_mode"] == "host"
    assert doc["isolated"]["network_mode"] == "none"
    assert doc["sidecar"]["network_mode"] == "service:web"
    assert "networks" not in doc["tool"] and "networks" not in doc["sidecar"]


def test_container_network_mode_outside_the_batch_keeps_the_reference_and_warns():
    export = export_services([sidecar()])
    assert service(export, "sidecar")["network_mode"] == \
        "container:fa6dcfcac67e6e34448b4acb9aefba0519eec601c1180a115fe7742a7795cf09"
    assert any("named by id" in w for w in export.warnings)
    by_name = _edited(sidecar(), lambda c: c["HostConfig"].update(NetworkMode="container:web"))
    assert service(export_services([by_name]), "sidecar")["network_mode"] == "container:web"


def test_default_bridge_network_is_not_declared():
    def edit(c):
        c["HostConfig"]["NetworkMode"] = "default"
        c["NetworkSettings"]["Networks"] = {"bridge": {"Aliases": None, "IPAMConfig": None}}
    export = export_services([_edited(db(), edit)])
    doc = parse(export)
    assert "networks" not in doc and "networks" not in doc["services"]["db"]
    assert "network_mode" not in doc["services"]["db"]


def test_static_addresses_are_kept():
    def edit(c):
        c["NetworkSettings"]["Networks"]["appnet"]["IPAMConfig"] = {"IPv4Address": "198.18.10.50"}
    assert service(export_services([_edited(db(), edit)]), "db")["networks"] == \
        {"appnet": {"ipv4_address": "198.18.10.50"}}


def test_include_networks_false_drops_networks_but_keeps_network_mode():
    doc = parse(export_services([f() for f in ALL], include_networks=False))
    assert "networks" not in doc
    assert "networks" not in doc["services"]["web"]
    assert doc["services"]["tool"]["network_mode"] == "host"


# --- the rest of the mapping -----------------------------------------------------------------------------

def test_runtime_options_of_web():
    svc = service(export_services([web()]), "web")
    assert svc["cap_add"] == ["CAP_NET_ADMIN", "CAP_SYS_TIME"] and svc["cap_drop"] == ["CAP_MKNOD"]
    assert svc["ulimits"] == {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 512}
    assert svc["sysctls"] == {"net.core.somaxconn": "1024"}
    assert svc["security_opt"] == ["no-new-privileges:true"]
    assert svc["stop_grace_period"] == "20s" and svc["init"] is True
    assert svc["devices"] == ["/dev/null:/dev/xnull"]
    assert svc["extra_hosts"] == ["db.internal:198.18.10.5", "v6host:fd00::5"]
    assert (svc["dns"], svc["dns_search"], svc["dns_opt"]) == (["198.18.0.53"], ["example.internal"], ["ndots:2"])
    assert svc["shm_size"] == "128m"
    assert svc["logging"] == {"driver": "json-file", "options": {"max-file": "3", "max-size": "10m"}}
    assert (svc["mem_limit"], svc["mem_reservation"], svc["cpus"], svc["cpu_shares"], svc["pids_limit"]) == \
        ("256m", "128m", 1.5, 512, 100)
    assert "memswap_limit" not in svc     # twice the limit: the engine's own default


def test_defaults_of_the_engine_are_not_exported():
    svc = service(export_services([db()]), "db")
    for key in ("shm_size", "logging", "ipc", "privileged", "memswap_limit", "init", "stop_signal",
                "stop_grace_period", "security_opt", "expose", "ports"):
        assert key not in svc
    assert svc["read_only"] is True and svc["user"] == "1000:1000" and svc["working_dir"] == "/data"


def test_privileged_host_namespaces_and_no_engine_added_label_option():
    export = export_services([tool()])
    svc = service(export, "tool")
    assert svc["privileged"] is True and svc["pid"] == "host" and svc["ipc"] == "host"
    assert "security_opt" not in svc          # label=disable is added by the engine itself
    assert any("privileged" in w for w in export.warnings)
    assert any("host network" in w for w in export.warnings)


def test_resources_beyond_the_recorded_ones():
    def edit(c):
        c["HostConfig"].update(NanoCpus=2_000_000_000, MemorySwap=-1, CpuQuota=50000, CpuPeriod=100000,
                               CpusetCpus="0-1", OomScoreAdj=-100, MemorySwappiness=10, Memory=1 << 30,
                               Ulimits=[{"Name": "core", "Soft": 0, "Hard": 0}])
    svc = service(export_services([_edited(web(), edit)]), "web")
    assert (svc["cpus"], svc["memswap_limit"], svc["cpu_quota"], svc["cpu_period"], svc["cpuset"]) == \
        (2, -1, 50000, 100000, "0-1")
    assert (svc["oom_score_adj"], svc["mem_swappiness"], svc["mem_limit"]) == (-100, 10, "1g")
    assert svc["ulimits"] == {"core": 0}


def test_dollar_signs_are_escaped_everywhere():
    def edit(c):
        c["Config"]["Labels"]["price"] = "$5"
        c["Config"]["Cmd"] = ["echo $HOME"]
    svc = service(export_services([_edited(web(), edit)]), "web")
    assert "GREETING=Cost is $$5 $${HOME}" in svc["environment"]
    assert svc["labels"]["price"] == "$$5"
    assert svc["command"] == ["echo $$HOME"]


# --- secrets ---------------------------------------------------------------------------------------------

def test_secrets_become_placeholders_with_env_lines_and_one_warning_each():
    export = export_services([web()])
    env = service(export, "web")["environment"]
    for name in WEB_SECRETS:
        assert f"{name}=${{{name}}}" in env
    assert "AUTHOR=alice" in env and "KEYBOARD_LAYOUT=us" in env
    assert env_lines(export) == ["API_KEY=", "DB_PASSWORD=", "SESSION_BLOB=", "TLS_PRIVATE_KEY="]
    assert '# DB_PASSWORD: environment variable "DB_PASSWORD" of service web\n' in export.env_content
    secret_warnings = [w for w in export.warnings if w.startswith("Secret ")]
    assert secret_warnings == [f"Secret '{n}' was sanitized" for n in sorted(WEB_SECRETS)]


def test_real_secret_values_appear_nowhere_in_the_response():
    export = export_services([f() for f in ALL], stack_name="s")
    with zipfile.ZipFile(io.BytesIO(export_zip(export, "s"))) as archive:
        unzipped = "".join(archive.read(n).decode() for n in archive.namelist())
    everything = json.dumps(export.as_json()) + unzipped
    for value in list(WEB_SECRETS.values()) + ["pg-secret-not-real", "root-not-real", "ghp_notreal",
                                               "aws-not-real", "AKIANOTREAL", "user:pw-not-real"]:
        assert value not in everything


def test_secret_value_repeated_in_another_field_is_replaced_by_its_placeholder():
    def edit(c):
        c["Config"]["Cmd"] = ["--db-password=hunter2-not-real"]
        c["Config"]["Env"].append("DATABASE_URL_HOST=db:hunter2-not-real")
    export = export_services([_edited(web(), edit)])
    svc = service(export, "web")
    assert svc["command"] == ["--db-password=${DB_PASSWORD}"]
    assert "DATABASE_URL_HOST=db:${DB_PASSWORD}" in svc["environment"]
    assert "hunter2" not in export.content


def test_sanitize_false_keeps_values_escaped_and_warns():
    export = export_services([web()], sanitize_secrets=False)
    env = service(export, "web")["environment"]
    assert "DB_PASSWORD=hunter2-not-real" in env
    assert export.env_content == ""
    assert not any(w.startswith("Secret '") for w in export.warnings)
    assert any("not sanitized" in w for w in export.warnings)


def test_same_secret_name_with_different_values_in_a_batch_gets_per_service_placeholders():
    other = _edited(db(), lambda c: c["Config"]["Env"].append("DB_PASSWORD=another-not-real"))
    export = export_services([web(), other])
    doc = parse(export)
    assert "DB_PASSWORD=${WEB_DB_PASSWORD}" in doc["services"]["web"]["environment"]
    assert "DB_PASSWORD=${DB_DB_PASSWORD}" in doc["services"]["db"]["environment"]
    assert "WEB_DB_PASSWORD=\n" in export.env_content and "DB_DB_PASSWORD=\n" in export.env_content
    assert "\nDB_PASSWORD=\n" not in "\n" + export.env_content


def test_same_secret_in_two_services_shares_one_placeholder():
    same = _edited(db(), lambda c: c["Config"]["Env"].append("DB_PASSWORD=hunter2-not-real"))
    export = export_services([web(), same])
    assert export.env_content.count("DB_PASSWORD=") == 1
    assert export.warnings.count("Secret 'DB_PASSWORD' was sanitized") == 1


def test_secret_name_that_compose_cannot_interpolate_gets_a_valid_variable_explained_in_the_env_file():
    source = _edited(db(), lambda c: c["Config"]["Env"].append("my-token=abc-not-real"))
    export = export_services([source])
    assert "my-token=${MY_TOKEN}" in service(export, "db")["environment"]
    assert "MY_TOKEN=" in env_lines(export)
    assert '# MY_TOKEN: environment variable "my-token" of service db\n' in export.env_content
    assert "abc-not-real" not in export.content


# --- names, files, zip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("web", "web"), ("My Stack", "my-stack"), ("/web.1", "web-1"), ("a__b--c", "a__b--c"),
    ("Ünïcode!", "n-code"), ("...", "unnamed"), ("", "unnamed"),
])
def test_sanitize_name(raw, clean):
    assert sanitize_name(raw) == clean


def test_single_export_filenames_come_from_the_container_name():
    export = export_services([web()])
    assert (export.filename, export.env_filename) == ("web-compose.yaml", "web.env")
    assert export.as_json() == {"format": "docker-compose", "content": export.content,
                                "filename": "web-compose.yaml", "warnings": export.warnings,
                                "env_content": export.env_content, "env_filename": "web.env"}


def test_batch_filenames_come_from_the_stack_name():
    assert export_services([web(), db()]).filename == "exported-stack-compose.yaml"
    export = export_services([web(), db()], stack_name="My Stack")
    assert (export.filename, export.env_filename) == ("my-stack-compose.yaml", "my-stack.env")
    assert export_services([web()], stack_name="solo").filename == "solo-compose.yaml"


def test_duplicate_service_names_get_a_suffix():
    doc = parse(export_services([web(), web(), web()]))
    assert list(doc["services"]) == ["web", "web-2", "web-3"]


def test_zip_layout_and_content():
    export = export_services([web(), db()], stack_name="My Stack")
    data = export_zip(export, "My Stack")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["my-stack/compose.yaml", "my-stack/.env"]
        assert archive.read("my-stack/compose.yaml").decode() == export.content
        assert archive.read("my-stack/.env").decode() == export.env_content
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError):
        export_services([])


def test_secret_values_are_not_hunted_in_names_and_paths_or_when_too_short():
    def edit(c):
        c["Config"]["Env"].append("ADMIN_PASSWORD=localhost")    # also part of the image name
        c["Config"]["Env"].append("PIN_PASS=1234")
        c["Config"]["Cmd"] = ["serve", "--pin", "1234", "--host", "localhost"]
    svc = service(export_services([_edited(web(), edit)]), "web")
    assert svc["image"] == "localhost/webapp:1.0"
    assert svc["command"] == ["serve", "--pin", "1234", "--host", "${ADMIN_PASSWORD}"]


def test_secret_value_of_one_service_is_hunted_in_the_others():
    other = _edited(db(), lambda c: c["Config"].update(Cmd=["-c", "login --password hunter2-not-real"]))
    export = export_services([web(), other])
    assert service(export, "db")["command"] == ["-c", "login --password ${DB_PASSWORD}"]


# --- secrets outside the environment, and names compose cannot interpolate ------------------------------

@pytest.mark.parametrize("raw, clean", [
    ("DB_PASSWORD", "DB_PASSWORD"), ("token", "token"), ("DB-PASSWORD", "DB_PASSWORD"),
    ("db.password", "DB_PASSWORD"), ("BAD\nNAME", "BAD_NAME"), ("1st-key", "_1ST_KEY"), ("--", "SECRET"),
])
def test_variable_names_are_valid_compose_variables(raw, clean):
    assert variable_name(raw) == clean


def test_names_that_map_to_the_same_variable_get_distinct_placeholders():
    def edit(c):
        c["Config"]["Env"] += ["DB-PASSWORD=dash-not-real", "db.password=dot-not-real", "BAD\nNAME_TOKEN=nl-not-real"]
    export = export_services([_edited(web(), edit)])
    doc = parse(export)
    env = {e.partition("=")[0]: e.partition("=")[2] for e in doc["services"]["web"]["environment"]}
    chosen = [env[n] for n in ("DB_PASSWORD", "DB-PASSWORD", "db.password")]
    assert len(set(chosen)) == 3 and all(re.fullmatch(r"\$\{DB_PASSWORD(_\d)?\}", c) for c in chosen)
    assert "BAD\nNAME_TOKEN" not in env  # Compose refuses whitespace in a name: left out with a warning
    assert any(w.startswith('Environment variable "BAD\\nNAME_TOKEN"') for w in export.warnings)
    lines = env_lines(export)
    assert len(lines) == len(set(lines)) and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=", line) for line in lines)
    assert '"BAD\\nNAME_TOKEN"' in export.env_content   # its value still has a variable (hunted elsewhere)
    for value in ("dash-not-real", "dot-not-real", "nl-not-real"):
        assert value not in export.content + export.env_content


def test_log_options_labels_and_driver_options_get_placeholders():
    def edit(c):
        c["HostConfig"]["LogConfig"] = {"Type": "splunk", "Config": {"splunk-token": "tok-not-real",
                                                                    "splunk-url": "https://splunk"}}
        c["Config"]["Labels"]["traefik.http.middlewares.a.basicauth.users"] = "admin:$apr1$not$real"
    volume = load("volume-appdata")
    volume["Options"] = {"type": "nfs", "o": "addr=10.0.0.1,username=bob,password=nfs-not-real"}
    source = _edited(web(), edit)
    source = ServiceSource(source.container, source.image, {"appdata": volume}, source.networks)
    export = export_services([source])
    doc = parse(export)
    svc = doc["services"]["web"]
    assert svc["logging"]["options"] == {"splunk-token": "${SPLUNK_TOKEN}", "splunk-url": "https://splunk"}
    assert (svc["labels"]["traefik.http.middlewares.a.basicauth.users"]
            == "${TRAEFIK_HTTP_MIDDLEWARES_A_BASICAUTH_USERS}")
    assert doc["volumes"]["appdata"]["driver_opts"]["o"] == "addr=10.0.0.1,username=bob,password=${APPDATA_PASSWORD}"
    for value in ("tok-not-real", "apr1", "nfs-not-real"):
        assert value not in export.content + export.env_content
    assert '# SPLUNK_TOKEN: log option "splunk-token" of service web\n' in export.env_content
    # Without sanitising, the real values stay (escaped for compose).
    kept = export_services([source], sanitize_secrets=False)
    assert all(value in kept.content for value in ("tok-not-real", "admin:$$apr1$$not$$real", "nfs-not-real"))


def test_a_secret_inherited_from_the_image_is_hunted_where_the_container_repeats_it():
    def edit_image(i):
        i["Config"]["Env"] = i["Config"]["Env"] + ["IMAGE_TOKEN=image-secret-not-real"]

    def edit(c):
        c["Config"]["Env"].append("IMAGE_TOKEN=image-secret-not-real")  # the engine merges the image's Env
        c["Config"]["Cmd"] = ["--token", "image-secret-not-real"]
    base = _edited(web(), edit)
    image = copy.deepcopy(base.image)
    edit_image(image)
    export = export_services([ServiceSource(base.container, image, base.volumes, base.networks)])
    svc = service(export, "web")
    assert not any(e.startswith("IMAGE_TOKEN") for e in svc["environment"])  # inherited: not written
    assert svc["command"] == ["--token", "${WEB_IMAGE_TOKEN}"]
    assert "WEB_IMAGE_TOKEN=" in env_lines(export) and "image-secret-not-real" not in export.content
    # Not repeated anywhere: no variable at all.
    plain = export_services([ServiceSource(_edited(web(), lambda c: c["Config"]["Env"].append(
        "IMAGE_TOKEN=image-secret-not-real")).container, image, base.volumes, base.networks)])
    assert not any("IMAGE_TOKEN" in line for line in env_lines(plain))


def test_a_command_that_follows_the_image_entrypoint_is_read_after_it():
    """`redis-cli` is the image's entrypoint, not written; `-a X` in the command is its password."""
    image = load("image-busybox")
    image["Config"]["Entrypoint"] = ["redis-cli"]
    container = load("container-tool")
    container["Config"].update(Entrypoint=["redis-cli"], Cmd=["-h", "redis", "-a", "rclipw9", "ping"])
    export = export_services([ServiceSource(container, image)])
    svc = service(export, "tool")
    assert "entrypoint" not in svc and "rclipw9" not in export.content
    assert svc["command"][:3] == ["-h", "redis", "-a"] and svc["command"][3].startswith("${")
