"""The YAML configuration: typed, defaults filled, every problem reported at once with its key path.

The schema is the dataclasses below; a field's ``check`` metadata validates (and may convert) its value.
Unknown keys are errors so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import yaml

from .hostnames import check_name  # the one grammar of host names, shared with the request check

DEFAULT_CONFIG_PATH = "/etc/nekzusd/nekzusd.yaml"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """Carries every problem found, each as "key.path: what is wrong"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _checked(check: Callable[[Any], Any], default: Any = MISSING, **kw: Any) -> Any:
    if default is MISSING and "default_factory" not in kw:
        return field(metadata={"check": check}, **kw)
    return field(default=default, metadata={"check": check}, **kw)


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError('must be "host:port", e.g. "0.0.0.0:8443" or "[::]:8443"')
    return value


def _engine_url(value: str) -> str:
    if not (value.startswith("unix://") or value.startswith("tcp://")):
        raise ValueError("must be a unix:// or tcp:// URL")
    return value


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return check


def _networks(value: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    nets = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network") from None
    return tuple(nets)


def _host_names(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_name(item) for item in value)


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def check_app_id(value: str) -> str:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError("must be 1-64 characters of letters, digits, '-', '_' or '.'")
    return value


@dataclass(frozen=True)
class TLSConfig:
    mode: str = _checked(_one_of("auto", "files", "off"), "auto")
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    listen: str = _checked(_listen, "0.0.0.0:8443")
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Host names (besides IP literals, localhost and the machine's own names) that a local client may use
    # and still be trusted without a token; any other Host is treated as remote (DNS rebinding).
    allowed_hosts: tuple[str, ...] = _checked(_host_names, default_factory=tuple)
    # Connection guards (nekzusd.listen): seconds a client has to send a complete request head, seconds
    # an idle keep-alive connection stays open, and open connections per client address.
    head_timeout: float = _checked(_positive, 10.0)
    keepalive_timeout: float = _checked(_positive, 60.0)
    max_connections_per_client: int = _checked(_positive, 64)
    # Peers without that cap: the host itself (a local reverse proxy, the owner's scripts). Peers in
    # auth.trusted_proxies are never capped either: a proxy carries many clients on one address.
    connection_cap_exempt: tuple[IPNetwork, ...] = _checked(_networks, default_factory=lambda: _networks((
        "127.0.0.1/32", "::1/128")))

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class AuthConfig:
    jwt_secret_file: str | None = None
    issuer: str = "nekzus"
    audience: str = "nekzus"
    local_networks: tuple[IPNetwork, ...] = _checked(_networks, default_factory=lambda: _networks((
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")))
    trusted_proxies: tuple[IPNetwork, ...] = _checked(_networks, default_factory=tuple)
    trust_container_networks: bool = False  # true: the host's containers may be local clients too


@dataclass(frozen=True)
class RatePool:
    per_minute: float = _checked(_positive, 30.0)
    burst: int = _checked(_positive, 20)


@dataclass(frozen=True)
class RateLimitConfig:
    containers: RatePool = field(default_factory=RatePool)
    apps: RatePool = field(default_factory=RatePool)
    websocket: RatePool = field(default_factory=lambda: RatePool(per_minute=30.0, burst=10))
    status: RatePool = field(default_factory=lambda: RatePool(per_minute=60.0, burst=20))
    exempt_local: bool = True


@dataclass(frozen=True)
class DockerConfig:
    enabled: bool = True
    host: str = _checked(_engine_url, "unix:///var/run/docker.sock")


@dataclass(frozen=True)
class KubernetesConfig:
    enabled: bool = False
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ("default",)
    # Where pod statistics come from: the metrics API (metrics-server), the kubelet's summary through the
    # API server's node proxy (needs get on nodes/proxy), or auto: the metrics API when the cluster serves
    # it, else the kubelet (runtimes/k8s_stats.py).
    stats: str = _checked(_one_of("auto", "metrics", "kubelet"), "auto")


@dataclass(frozen=True)
class RuntimesConfig:
    primary: str = _checked(_one_of("docker", "kubernetes"), "docker")
    # Seconds each runtime has to answer a read that covers several runtimes (the container list, batch
    # stats, discovery, the listing of `<action>-all`); a slower one is left out and reported unavailable.
    read_timeout: float = _checked(_positive, 10.0)
    docker: DockerConfig = field(default_factory=DockerConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)


@dataclass(frozen=True)
class BulkConfig:
    concurrency: int = _checked(_positive, 5)


@dataclass(frozen=True)
class LiveStatsConfig:
    """Caps of live stats over the WebSocket (nekzusd.livestats): containers watched per connection, and
    by all connections together (a container watched by two connections counts twice)."""

    max_per_connection: int = _checked(_positive, 256)
    max_total: int = _checked(_positive, 4096)


@dataclass(frozen=True)
class AppConfig:
    id: str = _checked(check_app_id)
    name: str = ""
    containers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    state_dir: str = "/var/lib/nekzusd"
    auth: AuthConfig = field(default_factory=AuthConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    runtimes: RuntimesConfig = field(default_factory=RuntimesConfig)
    bulk: BulkConfig = field(default_factory=BulkConfig)
    live_stats: LiveStatsConfig = field(default_factory=LiveStatsConfig)
    apps: tuple[AppConfig, ...] = ()
    max_api_apps: int = _checked(_non_negative, 256)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def jwt_secret_path(self) -> Path:
        return Path(self.auth.jwt_secret_file or self.state_path / "jwt.secret")


_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Turn a YAML value into ``tp``, appending a problem (and returning None) when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return _convert(args[0], value, path, problems)
        if isinstance(value, str):  # IPNetwork items arrive as strings and are checked later
            return value
        problems.append(f"{path}: must be a string")
        return None
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list")
            return None
        item_tp = typing.get_args(tp)[0]
        return tuple(_convert(item_tp, item, f"{path}[{i}]", problems) for i, item in enumerate(value))
    if isinstance(tp, type) and is_dataclass(tp):
        return _build(tp, value, path, problems)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in _SCALARS and (type(value) is not tp):
        problems.append(f"{path}: must be {_SCALARS[tp]}")
        return None
    return value


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'config'}: must be a mapping")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            problems.append(f"{path + '.' if path else ''}{key}: unknown key")
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for f in fields(cls):
        key_path = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                problems.append(f"{key_path}: is required")
            continue
        field_start = len(problems)
        value = _convert(hints[f.name], data[f.name], key_path, problems)
        check = f.metadata.get("check")
        if check and value is not None and len(problems) == field_start:
            try:
                value = check(value)
            except ValueError as exc:
                problems.append(f"{key_path}: {exc}")
        kwargs[f.name] = value
    if len(problems) > before:
        return None
    return cls(**kwargs)


def _cross_checks(config: Config) -> list[str]:
    problems = []
    rt = config.runtimes
    if not getattr(rt, rt.primary).enabled:
        problems.append(f"runtimes.primary: runtime {rt.primary!r} is not enabled")
    tls = config.server.tls
    live = config.live_stats
    if live.max_per_connection > live.max_total:
        problems.append("live_stats.max_per_connection: must not be more than live_stats.max_total")
    if tls.mode == "files" and not (tls.cert and tls.key):
        problems.append("server.tls: mode 'files' needs both cert and key")
    seen: set[str] = set()
    for i, app in enumerate(config.apps):
        if app.id in seen:
            problems.append(f"apps[{i}].id: duplicate app id {app.id!r}")
        seen.add(app.id)
    return problems


def parse(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed YAML, applying the NEKZUSD_* environment overrides."""
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = dict(data)
        if env.get("NEKZUSD_STATE_DIR"):
            data["state_dir"] = env["NEKZUSD_STATE_DIR"]
        if env.get("NEKZUSD_LISTEN"):
            data["server"] = {**(data.get("server") or {}), "listen": env["NEKZUSD_LISTEN"]}
    problems: list[str] = []
    config = _build(Config, data, "", problems)
    if config is not None:
        problems += _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse(data, env)


def default_path() -> str:
    return os.environ.get("NEKZUSD_CONFIG", DEFAULT_CONFIG_PATH)
