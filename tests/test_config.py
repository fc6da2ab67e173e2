"""Configuration: defaults, every problem reported with its key path, overrides, the example file."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from nekzusd import config

ROOT = Path(__file__).resolve().parent.parent


def problems_of(data, env=None) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.parse(data, env or {})
    return info.value.problems


def test_empty_file_gives_every_default():
    c = config.parse(None, {})
    assert c.server.listen == "0.0.0.0:8443"
    assert c.server.tls.mode == "auto"
    assert c.state_dir == "/var/lib/nekzusd"
    assert c.auth.issuer == c.auth.audience == "nekzus"
    assert ipaddress.ip_network("192.168.0.0/16") in c.auth.local_networks
    assert c.auth.trusted_proxies == ()
    assert (c.rate_limit.containers.per_minute, c.rate_limit.containers.burst) == (30.0, 20)
    assert c.rate_limit.exempt_local is True
    assert c.runtimes.primary == "docker" and c.runtimes.docker.host == "unix:///var/run/docker.sock"
    assert c.runtimes.kubernetes.enabled is False and c.runtimes.kubernetes.namespaces == ("default",)
    assert c.bulk.concurrency == 5
    assert c.apps == ()
    assert c.jwt_secret_path == Path("/var/lib/nekzusd/jwt.secret")


def test_example_config_is_valid_and_complete():
    c = config.load(ROOT / "etc" / "nekzusd.yaml", env={})
    assert c.apps[0].id == "grafana"
    text = (ROOT / "etc" / "nekzusd.yaml").read_text()
    for key in ("listen", "tls", "state_dir", "jwt_secret_file", "issuer", "audience", "local_networks",
                "trusted_proxies", "rate_limit", "exempt_local", "primary", "docker", "kubernetes",
                "kubeconfig", "namespaces", "concurrency", "apps"):
        assert key in text, key


def test_every_problem_is_reported_at_once_with_its_key_path():
    found = problems_of({
        "server": {"listen": "nowhere", "colour": "blue"},
        "runtimes": {"docker": {"host": "http://localhost:2375"}},
        "bulk": {"concurrency": "five"},
        "apps": [{"name": "no id"}, {"id": "has space"}],
        "auth": {"local_networks": ["not-a-net"]},
    })
    assert found == [
        "server.colour: unknown key",
        'server.listen: must be "host:port", e.g. "0.0.0.0:8443" or "[::]:8443"',
        "auth.local_networks: 'not-a-net' is not an IP network",
        "runtimes.docker.host: must be a unix:// or tcp:// URL",
        "bulk.concurrency: must be an integer",
        "apps[0].id: is required",
        "apps[1].id: must be 1-64 characters of letters, digits, '-', '_' or '.'",
    ]


@pytest.mark.parametrize("data, expected", [
    ({"nonsense": 1}, "nonsense: unknown key"),
    ({"server": []}, "server: must be a mapping"),
    ({"rate_limit": {"containers": {"burst": 0}}}, "rate_limit.containers.burst: must be greater than 0"),
    ({"rate_limit": {"exempt_local": "yes"}}, "rate_limit.exempt_local: must be true or false"),
    ({"server": {"tls": {"mode": "maybe"}}}, "server.tls.mode: must be one of auto, files, off"),
    ({"server": {"tls": {"mode": "files"}}}, "server.tls: mode 'files' needs both cert and key"),
    ({"runtimes": {"primary": "kubernetes"}}, "runtimes.primary: runtime 'kubernetes' is not enabled"),
    ({"apps": [{"id": "a"}, {"id": "a"}]}, "apps[1].id: duplicate app id 'a'"),
    ({"runtimes": {"kubernetes": {"namespaces": "default"}}}, "runtimes.kubernetes.namespaces: must be a list"),
    ([1, 2], "config: must be a mapping"),
])
def test_single_problems(data, expected):
    assert problems_of(data) == [expected]


def test_environment_overrides_state_dir_and_listen():
    c = config.parse({"state_dir": "/x", "server": {"listen": "1.2.3.4:1"}},
                     {"NEKZUSD_STATE_DIR": "/tmp/s", "NEKZUSD_LISTEN": "127.0.0.1:9000"})
    assert c.state_dir == "/tmp/s"
    assert c.server.host_port == ("127.0.0.1", 9000)
    assert config.parse({"server": {"listen": "[::]:8443"}}, {}).server.host_port == ("::", 8443)


def test_load_reports_unreadable_and_broken_files(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        config.load(tmp_path / "missing.yaml", env={})
    assert "cannot read" in info.value.problems[0]
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(broken, env={})
    assert "not valid YAML" in info.value.problems[0]
