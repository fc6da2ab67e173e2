"""Export of Docker containers to a Compose file (docs/export.md).

Pure functions over raw Engine inspect JSON: the HTTP layer fetches the container, its image and
(optionally) its named volumes and user networks, and hands them over as `ServiceSource`s.

What the container merely inherits from its image (Env, Cmd, Entrypoint, Labels, ExposedPorts,
WorkingDir, User, Healthcheck, StopSignal) is left out, so that the file states only what its owner chose
and keeps following the image. Output is byte-identical for the same input: maps without meaningful order
are sorted, lists whose order matters (command, dns) are kept.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .secrets import SecretBook, Spans, argv_spans, command_spans, is_secret, is_secret_option, scrub_text

__all__ = ["ServiceSource", "Export", "export_services", "export_zip", "sanitize_name", "variable_name"]

DEFAULT_STACK_NAME = "exported-stack"
# The PATH the engine puts in a container whose image sets none.
ENGINE_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DEFAULT_SHM_SIZE = 64 * 1024 * 1024
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_COMPOSE_LABEL_PREFIX = "com.docker.compose."
_ANON_VOLUME_RE = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WHITESPACE_RE = re.compile(r"\s")
# Fields that name or locate things: never hunted for repeated secrets, so that a password equal to
# "postgres" does not turn the image "postgres:16" into a placeholder. Every other field is (command,
# healthcheck, labels, logging, extra_hosts, sysctls, … and driver options of volumes and networks).
_IDENTITY_KEYS = frozenset({"image", "container_name", "hostname", "domainname", "network_mode", "networks",
                            "volumes", "volumes_from", "pid", "ipc", "name", "driver"})
_ENV_HEADER = ("# Secrets taken out of the compose file, one variable each: write the value after '='\n"
               "# (in single quotes if it holds $, # or spaces). Each comment says what the variable replaces.\n")

# The order keys appear in a service: identity first, then what runs, then wiring, then tuning.
SERVICE_KEY_ORDER = (
    "image", "container_name", "hostname", "domainname", "user", "working_dir", "entrypoint", "command",
    "environment", "ports", "expose", "volumes", "volumes_from", "tmpfs", "network_mode", "networks",
    "extra_hosts", "dns", "dns_search", "dns_opt", "restart", "healthcheck", "labels", "privileged",
    "cap_add", "cap_drop", "security_opt", "devices", "group_add", "read_only", "init", "tty", "stdin_open",
    "pid", "ipc", "userns_mode", "runtime", "cgroup_parent", "stop_signal", "stop_grace_period", "logging",
    "mem_limit", "mem_reservation", "memswap_limit", "mem_swappiness", "oom_kill_disable", "oom_score_adj",
    "cpus", "cpu_shares", "cpu_period", "cpu_quota", "cpuset", "pids_limit", "shm_size", "ulimits", "sysctls",
)


@dataclass(frozen=True)
class ServiceSource:
    """One container to export, with the inspects that let the exporter tell user settings from defaults."""

    container: dict
    image: dict | None
    volumes: dict[str, dict] = field(default_factory=dict)
    networks: dict[str, dict] = field(default_factory=dict)


@dataclass
class Export:
    """The export result, shaped like the API's JSON answer."""

    content: str
    filename: str
    warnings: list[str]
    env_content: str
    env_filename: str

    def as_json(self) -> dict:
        return {
            "format": "docker-compose",
            "content": self.content,
            "filename": self.filename,
            "warnings": list(self.warnings),
            "env_content": self.env_content,
            "env_filename": self.env_filename,
        }


def sanitize_name(name: str) -> str:
    """Lower-case `name` and keep only [a-z0-9_-], so that it is a safe service, file and project name."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    return cleaned or "unnamed"


# ---------------------------------------------------------------------------------------------------------
# Values: `$` escaping and secret placeholders


class _Placeholder(str):
    """A string the exporter wrote itself (`${NAME}`): exempt from `$` escaping."""


def _escape_tree(value: Any, book: SecretBook | None, spans: list[Spans] | None = None) -> Any:
    """Escape `$` in every string of a built structure and replace secrets (revealed by their shape, or
    values recorded in `book`) by their placeholders (`${NAME}`).

    One pass at the end, rather than at each field, so that no field can be forgotten.
    """
    if isinstance(value, _Placeholder):
        return str(value)
    if isinstance(value, str):
        return _escape_string(value, book)
    if isinstance(value, dict):
        lines = command_spans(value) if book is not None else {}
        return {k: _escape_tree(v, book, lines.get(k)) for k, v in value.items()}
    if isinstance(value, list):  # a list of strings may be a command line (command, healthcheck test)
        if book is None:
            return [_escape_tree(v, book) for v in value]
        return [book.scrub(v, _dollar, extra=extra) if isinstance(v, str) and not isinstance(v, _Placeholder)
                else _escape_tree(v, book) for v, extra in zip(value, spans or argv_spans(value), strict=True)]
    return value


def _dollar(plain: str) -> str:
    return plain.replace("$", "$$")


def _escape_string(text: str, book: SecretBook | None) -> str:
    return _dollar(text) if book is None else book.scrub(text, _dollar)


def _collect_tree(value: Any, book: SecretBook, spans: list[Spans] | None = None) -> None:
    """First pass: record every secret a string reveals by its shape or its place in a command line, so
    that all are hunted everywhere."""
    if isinstance(value, _Placeholder):
        return
    if isinstance(value, str):
        book.collect(value)
    elif isinstance(value, dict):
        lines = command_spans(value)
        for k, v in value.items():
            if isinstance(v, str) and not isinstance(v, _Placeholder):
                book.publish(v)  # an ordinary setting: a word it holds whole is no secret's
            _collect_tree(v, book, lines.get(k))
    elif isinstance(value, list):
        for v, extra in zip(value, spans or argv_spans(value), strict=True):
            if isinstance(v, str) and not isinstance(v, _Placeholder):
                book.collect(v, extra=extra)
            else:
                _collect_tree(v, book)


def variable_name(name: str) -> str:
    """A valid Compose variable name for a secret's name: kept when it is one, else upper-cased with every
    other character run as `_` (`DB-PASSWORD`, `db.password` → `DB_PASSWORD`)."""
    if _ENV_NAME_RE.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").upper() or "SECRET"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


class _Placeholders:
    """The export's secrets: real value -> `${NAME}`, each NAME unique, with a note of what it replaces.

    An environment variable keeps its own name (made valid); two services holding different values under
    the same name both get `<SERVICE>_<NAME>`; any other clash gets `_2`, `_3`, … A secret with no name of
    its own (a label value, a driver option, a password inside a URL) is named from where it was found.
    """

    def __init__(self, conflicted: set[str]) -> None:
        self._conflicted = conflicted
        self.values: dict[str, str] = {}        # placeholder name -> real value
        self.notes: dict[str, list[str]] = {}   # placeholder name -> what it replaces
        self.where = ""                         # the service (or declaration) being written
        self.prefix = ""                        # its name as a variable prefix
        self.book = SecretBook(self._on_found)

    def _allocate(self, base: str, value: str, note: str, clash_prefix: bool) -> str:
        name = base
        if clash_prefix and name in self.values and self.values[name] != value and self.prefix:
            name = f"{self.prefix}_{base}"
        candidate, n = name, 1
        while candidate in self.values and self.values[candidate] != value:
            n += 1
            candidate = f"{name}_{n}"
        self.values[candidate] = value
        if note not in self.notes.setdefault(candidate, []):
            self.notes[candidate].append(note)
        return candidate

    def env(self, name: str, value: str) -> str:
        base = variable_name(name)
        if base in self._conflicted:
            base = f"{self.prefix}_{base}"
        placeholder = self._allocate(base, value, f"environment variable {json.dumps(name)} of {self.where}", False)
        self.book.add(value, replacement=f"${{{placeholder}}}")
        return placeholder

    def named(self, kind: str, name: str, value: str) -> str:
        """A secret with a name of its own (label, log option, driver option): its `${NAME}`."""
        if value in self.book:
            return self.book.add(value)
        placeholder = self._allocate(variable_name(name).upper(), value,
                                     f"{kind} {json.dumps(name)} of {self.where}", True)
        return self.book.add(value, replacement=f"${{{placeholder}}}")

    def _on_found(self, value: str, hint: str) -> str:
        base = variable_name(f"{self.prefix}_{hint}" if self.prefix else hint).upper()
        placeholder = self._allocate(base, value, f"a secret ({hint}) found in {self.where}", False)
        return f"${{{placeholder}}}"

    def at(self, where: str, prefix: str) -> None:
        self.where, self.prefix = where, variable_name(prefix).upper()

    def env_content(self) -> str:
        """The .env template: a header, then each variable after the comments that say what it replaces."""
        if not self.values:
            return ""
        lines = [_ENV_HEADER]
        for name in sorted(self.values):
            lines += [f"# {name}: {note}\n" for note in self.notes[name]] + [f"{name}=\n"]
        return "".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Formatting helpers


def _duration(ns: int) -> str:
    """Nanoseconds as a compose duration string ("1m30s", "500ms")."""
    units = (("h", 3_600_000_000_000), ("m", 60_000_000_000), ("s", 1_000_000_000),
             ("ms", 1_000_000), ("us", 1_000), ("ns", 1))
    out = []
    for suffix, size in units:
        count, ns = divmod(ns, size)
        if count:
            out.append(f"{count}{suffix}")
    return "".join(out) or "0s"


def _byte_size(n: int) -> str | int:
    """Bytes in the largest exact unit compose understands ("256m"); plain bytes when none fits."""
    for suffix, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return n


def _cpus(nano: int) -> int | float:
    whole, rest = divmod(nano, 1_000_000_000)
    return whole if not rest else nano / 1_000_000_000


def _port_key(spec: str) -> tuple[int, str]:
    """Numeric order of "443/tcp"-style keys (the engine records each port of a range separately)."""
    number, _, proto = spec.partition("/")
    return (int(number) if number.isdigit() else 0, proto or "tcp")


def _format_host_ip(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _env_map(env: list[str] | None) -> dict[str, str | None]:
    """Docker's "K=V" list as a dict; a bare "K" (no value) maps to None."""
    out: dict[str, str | None] = {}
    for entry in env or []:
        if isinstance(entry, str):
            name, sep, value = entry.partition("=")
            out.setdefault(name, value if sep else None)
    return out


# ---------------------------------------------------------------------------------------------------------
# One service


@dataclass
class _Ctx:
    """Everything a field mapper may need about one container, and where it reports."""

    source: ServiceSource
    service: str
    services_by_ref: dict[str, str]
    sanitize: bool
    include_volumes: bool
    include_networks: bool
    warnings: list[str]
    volumes: dict[str, dict] = field(default_factory=dict)    # top-level volume declarations
    networks: dict[str, dict] = field(default_factory=dict)   # top-level network declarations
    secrets: _Placeholders | None = None                       # None when secrets are kept

    @property
    def cfg(self) -> dict:
        return self.source.container.get("Config") or {}

    @property
    def host(self) -> dict:
        return self.source.container.get("HostConfig") or {}

    @property
    def img(self) -> dict:
        return (self.source.image or {}).get("Config") or {}

    @property
    def name(self) -> str:
        return (self.source.container.get("Name") or "").lstrip("/")

    @property
    def short_id(self) -> str:
        return (self.source.container.get("Id") or "")[:12]

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def _map_image(ctx: _Ctx) -> dict:
    ref = ctx.cfg.get("Image") or ctx.source.container.get("Image") or ""
    if ref.startswith("sha256:") or _ANON_VOLUME_RE.match(ref):
        tags = [t for t in (ctx.source.image or {}).get("RepoTags") or [] if t != "<none>:<none>"]
        if tags:
            return {"image": sorted(tags)[0]}
        ctx.warn(f"Container '{ctx.name}' refers to its image by id only ({ref[:19]}): "
                 "it cannot be pulled elsewhere")
    return {"image": ref}


def _map_identity(ctx: _Ctx) -> dict:
    out = {"container_name": ctx.name}
    mode = ctx.host.get("NetworkMode") or ""
    hostname = ctx.cfg.get("Hostname") or ""
    # The engine sets the hostname to the short id, or to the host's name on the host network.
    if hostname and hostname != ctx.short_id and mode != "host" and not mode.startswith("container:"):
        out["hostname"] = hostname
    if ctx.cfg.get("Domainname"):
        out["domainname"] = ctx.cfg["Domainname"]
    for key, docker_key in (("user", "User"), ("working_dir", "WorkingDir")):
        if ctx.cfg.get(docker_key) and ctx.cfg.get(docker_key) != ctx.img.get(docker_key):
            out[key] = ctx.cfg[docker_key]
    return out


def _map_command(ctx: _Ctx) -> dict:
    """Entrypoint and command, as far as they differ from the image's.

    The engine inherits the image's Cmd only when the Entrypoint is not overridden, so a command is
    written whenever the entrypoint is, and an emptied one (`[]`) is written to beat the image's.
    """
    entrypoint, command = ctx.cfg.get("Entrypoint") or [], ctx.cfg.get("Cmd") or []
    out: dict = {}
    entrypoint_changed = ctx.source.image is not None and entrypoint != (ctx.img.get("Entrypoint") or [])
    if entrypoint_changed or (ctx.source.image is None and entrypoint):
        out["entrypoint"] = list(entrypoint)
    if command and (entrypoint_changed or command != (ctx.img.get("Cmd") or [])):
        out["command"] = list(command)
    elif not command and not entrypoint_changed and ctx.img.get("Cmd"):
        out["command"] = []
    return out


def _exported_env(ctx: _Ctx) -> list[tuple[str, str | None]]:
    """The container's environment minus what it inherits unchanged (from its image, or the engine's PATH)."""
    image_env = _env_map(ctx.img.get("Env"))
    entries = []
    for name, value in sorted(_env_map(ctx.cfg.get("Env")).items()):
        if name in image_env and image_env[name] == value:
            continue
        if name == "PATH" and "PATH" not in image_env and value == ENGINE_DEFAULT_PATH:
            continue
        entries.append((name, value))
    return entries


def _map_environment(ctx: _Ctx) -> dict:
    if ctx.secrets is not None:  # inherited secrets are not written, but hunted where a field repeats them
        exported = dict(_exported_env(ctx))
        for name, value in _env_map(ctx.cfg.get("Env")).items():
            if name not in exported and value and is_secret(name, value):
                ctx.secrets.book.watch(value, name)
    entries = []
    for name, value in _exported_env(ctx):
        if _WHITESPACE_RE.search(name):
            # Compose refuses such a name; its secret value still gets a variable, for the fields repeating it.
            ctx.warn(f"Environment variable {json.dumps(name)} of container '{ctx.name}' is not exported: "
                     "Compose refuses names with whitespace")
            if value and ctx.secrets is not None and is_secret(name, value):
                ctx.secrets.env(name, value)
            continue
        if value is None:
            entries.append(name)
        elif ctx.secrets is not None and is_secret(name, value):
            # `NAME=${VARIABLE}`: the variable is a valid Compose name even when NAME is not one.
            entries.append(_Placeholder(f"{name}=${{{ctx.secrets.env(name, value)}}}"))
        else:
            if ctx.secrets is not None:
                ctx.secrets.book.publish(value)
            entries.append(f"{name}={value}")
    return {"environment": entries} if entries else {}


def _secret_options(ctx: _Ctx, kind: str, options: dict, owner: tuple[str, str] | None = None) -> dict:
    """Options (labels, log or driver options) sorted, each secret-named one as a placeholder when
    sanitising. `owner` is (where, prefix) for declarations, which belong to no service."""
    out = {}
    for key, value in sorted(options.items()):
        if ctx.secrets is not None and isinstance(value, str) and value and is_secret_option(key):
            saved = (ctx.secrets.where, ctx.secrets.prefix)
            if owner is not None:
                ctx.secrets.at(*owner)
            value = _Placeholder(ctx.secrets.named(kind, key, value))
            ctx.secrets.where, ctx.secrets.prefix = saved
        out[key] = value
    return out


def _map_ports(ctx: _Ctx) -> dict:
    """Every binding of every published port, and ports the container (not its image) exposes only."""
    bindings = ctx.host.get("PortBindings") or {}
    ports = []
    for spec in sorted(bindings, key=_port_key):
        number, _, proto = spec.partition("/")
        target = f"{number}/{proto or 'tcp'}"
        rows = sorted(bindings[spec] or [{}], key=lambda b: (b.get("HostIp") or "", b.get("HostPort") or ""))
        for binding in rows:
            host_ip, host_port = binding.get("HostIp") or "", binding.get("HostPort") or ""
            if host_ip:
                ports.append(f"{_format_host_ip(host_ip)}:{host_port}:{target}")
            else:
                ports.append(f"{host_port}:{target}" if host_port else target)
    exposed = set(ctx.cfg.get("ExposedPorts") or {})
    image_exposed = set(ctx.img.get("ExposedPorts") or {})
    if ctx.host.get("PublishAllPorts"):
        ports += [_canonical_port(p) for p in sorted(exposed - set(bindings), key=_port_key)]
        exposed = set()
    expose = [_canonical_port(p) for p in sorted(exposed - image_exposed - set(bindings), key=_port_key)]
    out: dict = {}
    if ports:
        out["ports"] = ports
    if expose:
        out["expose"] = expose
    return out


def _canonical_port(spec: str) -> str:
    number, _, proto = spec.partition("/")
    return f"{number}/{proto or 'tcp'}"


def _map_mounts(ctx: _Ctx) -> dict:
    out: dict = {}
    tmpfs = [f"{path}:{opts}" if opts else path for path, opts in sorted((ctx.host.get("Tmpfs") or {}).items())]
    volumes = []
    for mount in sorted(ctx.source.container.get("Mounts") or [], key=lambda m: m.get("Destination") or ""):
        kind = mount.get("Type")
        if kind == "tmpfs":
            tmpfs.append(_tmpfs_mount(ctx, mount.get("Destination") or ""))
        elif ctx.include_volumes and kind == "bind":
            volumes.append(_bind_entry(ctx, mount))
        elif ctx.include_volumes and kind == "volume":
            entry = _volume_entry(ctx, mount)
            if entry:
                volumes.append(entry)
    if volumes:
        out["volumes"] = volumes
    if ctx.include_volumes and ctx.host.get("VolumesFrom"):
        out["volumes_from"] = [f"container:{ref}" for ref in ctx.host["VolumesFrom"]]
    if tmpfs:
        out["tmpfs"] = sorted(tmpfs)
    return out


def _tmpfs_mount(ctx: _Ctx, target: str) -> str:
    """A `--mount type=tmpfs` as a tmpfs entry, with its size and mode from HostConfig.Mounts."""
    for spec in ctx.host.get("Mounts") or []:
        if spec.get("Type") == "tmpfs" and spec.get("Target") == target:
            opts = spec.get("TmpfsOptions") or {}
            parts = [f"size={opts['SizeBytes']}"] if opts.get("SizeBytes") else []
            parts += [f"mode={opts['Mode']:o}"] if opts.get("Mode") else []
            return f"{target}:{','.join(parts)}" if parts else target
    return target


def _bind_entry(ctx: _Ctx, mount: dict) -> str:
    source, target = mount.get("Source") or "", mount.get("Destination") or ""
    if source in _DOCKER_SOCKETS or target in _DOCKER_SOCKETS or source.endswith("/docker.sock"):
        ctx.warn(f"Container '{ctx.name}' mounts the Docker socket ({source}): it has full control of the host")
    else:
        ctx.warn(f"Bind mount '{source}' of container '{ctx.name}' is a host path: "
                 "it must exist on the host that runs this file")
    options = []
    if mount.get("RW") is False:
        options.append("ro")
    if (mount.get("Propagation") or "rprivate") != "rprivate":
        options.append(mount["Propagation"])
    options += [m for m in (mount.get("Mode") or "").split(",") if m in ("z", "Z")]
    return ":".join([source, target] + ([",".join(options)] if options else []))


def _volume_entry(ctx: _Ctx, mount: dict) -> str | None:
    name, target = mount.get("Name") or "", mount.get("Destination") or ""
    suffix = ":ro" if mount.get("RW") is False else ""
    if _is_anonymous(ctx, name):
        if target in (ctx.img.get("Volumes") or {}):
            ctx.warn(f"Anonymous volume at '{target}' of container '{ctx.name}' (declared by its image) "
                     "is recreated empty: its data is not carried over")
            return None
        ctx.warn(f"Anonymous volume at '{target}' of container '{ctx.name}' is recreated empty: "
                 "its data is not portable; give it a name to keep it")
        return f"{target}{suffix}"
    ctx.volumes[name] = _volume_declaration(ctx, name, mount, ctx.source.volumes.get(name))
    return f"{name}:{target}{suffix}"


def _is_anonymous(ctx: _Ctx, name: str) -> bool:
    labels = (ctx.source.volumes.get(name) or {}).get("Labels") or {}
    return not name or "com.docker.volume.anonymous" in labels or bool(_ANON_VOLUME_RE.match(name))


def _volume_declaration(ctx: _Ctx, name: str, mount: dict, inspect: dict | None) -> dict:
    """Top-level entry with the real name, so that the stack re-attaches the same data."""
    decl: dict = {"name": name}
    driver = (inspect or {}).get("Driver") or mount.get("Driver") or "local"
    if driver != "local":
        decl["driver"] = driver
    if inspect and inspect.get("Options"):
        decl["driver_opts"] = _secret_options(ctx, "driver option", inspect["Options"], (f"volume {name}", name))
    labels = _user_labels((inspect or {}).get("Labels"))
    if labels:
        decl["labels"] = _secret_options(ctx, "label", labels, (f"volume {name}", name))
    return decl


def _map_networks(ctx: _Ctx) -> dict:
    mode = ctx.host.get("NetworkMode") or "default"
    if mode in ("host", "none"):
        if mode == "host":
            ctx.warn(f"Container '{ctx.name}' uses the host network: its ports are the host's")
        return {"network_mode": mode}
    if mode.startswith("container:"):
        return {"network_mode": _container_ref(ctx, mode.partition(":")[2], "network")}
    if not ctx.include_networks:
        return {}
    attached = (ctx.source.container.get("NetworkSettings") or {}).get("Networks") or {}
    user_networks = sorted(n for n in set(attached) | ({mode} - {"default"}) if n not in ("bridge", "default"))
    if "bridge" in attached and user_networks:
        ctx.warn(f"Container '{ctx.name}' is also on the default 'bridge' network: "
                 "the stack's default network takes its place")
    networks = {}
    for net in user_networks:
        networks[net] = _service_network(ctx, attached.get(net) or {})
        ctx.networks[net] = _network_declaration(ctx, net, ctx.source.networks.get(net))
    return {"networks": networks} if networks else {}


def _container_ref(ctx: _Ctx, ref: str, what: str) -> str:
    """`service:<name>` when the container is exported alongside, else `container:<ref>`."""
    by_id = len(ref) >= 12 and re.fullmatch(r"[0-9a-f]+", ref)
    for key, service in ctx.services_by_ref.items():
        if ref == key or (by_id and key.startswith(ref)):
            return f"service:{service}"
    if _ANON_VOLUME_RE.match(ref):
        ctx.warn(f"Container '{ctx.name}' shares the {what} of container {ref[:12]}, named by id: "
                 "replace it with that container's name, or export both together")
    return f"container:{ref}"


def _service_network(ctx: _Ctx, endpoint: dict) -> dict:
    """Aliases the user set (the engine adds the short id, the name and the hostname itself), static IPs."""
    automatic = {ctx.short_id, ctx.source.container.get("Id"), ctx.name, ctx.cfg.get("Hostname")}
    out: dict = {}
    aliases = sorted(set(endpoint.get("Aliases") or []) - automatic)
    if aliases:
        out["aliases"] = aliases
    ipam = endpoint.get("IPAMConfig") or {}
    if ipam.get("IPv4Address"):
        out["ipv4_address"] = ipam["IPv4Address"]
    if ipam.get("IPv6Address"):
        out["ipv6_address"] = ipam["IPv6Address"]
    return out


def _network_declaration(ctx: _Ctx, name: str, inspect: dict | None) -> dict:
    """Top-level entry with the real name, and the network's settings when known (compose compares them)."""
    decl: dict = {"name": name}
    if not inspect:
        return decl
    if inspect.get("Driver") and inspect["Driver"] != "bridge":
        decl["driver"] = inspect["Driver"]
    if inspect.get("Options"):
        decl["driver_opts"] = _secret_options(ctx, "driver option", inspect["Options"], (f"network {name}", name))
    for key, docker_key in (("internal", "Internal"), ("enable_ipv6", "EnableIPv6"), ("attachable", "Attachable")):
        if inspect.get(docker_key):
            decl[key] = True
    ipam = _ipam(ctx, inspect.get("IPAM") or {}, (f"network {name}", name))
    if ipam:
        decl["ipam"] = ipam
    labels = _user_labels(inspect.get("Labels"))
    if labels:
        decl["labels"] = _secret_options(ctx, "label", labels, (f"network {name}", name))
    return decl


def _ipam(ctx: _Ctx, ipam: dict, owner: tuple[str, str]) -> dict:
    out: dict = {}
    if ipam.get("Driver") and ipam["Driver"] != "default":
        out["driver"] = ipam["Driver"]
    keys = (("subnet", "Subnet"), ("ip_range", "IPRange"), ("gateway", "Gateway"),
            ("aux_addresses", "AuxiliaryAddresses"))
    config = [{k: c[dk] for k, dk in keys if c.get(dk)} for c in ipam.get("Config") or []]
    if any(config):
        out["config"] = [c for c in config if c]
    if ipam.get("Options"):
        out["options"] = _secret_options(ctx, "IPAM option", ipam["Options"], owner)
    return out


def _map_hosts_and_dns(ctx: _Ctx) -> dict:
    out: dict = {}
    if ctx.host.get("ExtraHosts"):
        out["extra_hosts"] = sorted(ctx.host["ExtraHosts"])
    # Resolver and search order matter: kept as given.
    for key, docker_key in (("dns", "Dns"), ("dns_search", "DnsSearch"), ("dns_opt", "DnsOptions")):
        if ctx.host.get(docker_key):
            out[key] = list(ctx.host[docker_key])
    return out


def _map_restart(ctx: _Ctx) -> dict:
    policy = ctx.host.get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if name == "no":
        return {}
    if name == "on-failure" and policy.get("MaximumRetryCount"):
        return {"restart": f"on-failure:{policy['MaximumRetryCount']}"}
    return {"restart": name}


def _map_healthcheck(ctx: _Ctx) -> dict:
    check = ctx.cfg.get("Healthcheck")
    if not check or check == ctx.img.get("Healthcheck"):
        return {}
    test = check.get("Test") or []
    if test[:1] == ["NONE"]:
        return {"healthcheck": {"disable": True}}
    out: dict = {}
    if test:
        out["test"] = list(test)
    for key, docker_key in (("interval", "Interval"), ("timeout", "Timeout"),
                            ("start_period", "StartPeriod"), ("start_interval", "StartInterval")):
        if check.get(docker_key):
            out[key] = _duration(check[docker_key])
    if check.get("Retries"):
        out["retries"] = check["Retries"]
    return {"healthcheck": out} if out else {}


def _user_labels(labels: dict | None, inherited: dict | None = None) -> dict:
    """Labels minus compose's own and minus those inherited unchanged from the image, sorted."""
    inherited = inherited or {}
    return {k: v for k, v in sorted((labels or {}).items())
            if not k.startswith(_COMPOSE_LABEL_PREFIX) and k != "com.docker.volume.anonymous"
            and inherited.get(k) != v}


def _map_labels(ctx: _Ctx) -> dict:
    labels = _user_labels(ctx.cfg.get("Labels"), ctx.img.get("Labels"))
    return {"labels": _secret_options(ctx, "label", labels)} if labels else {}


def _map_security(ctx: _Ctx) -> dict:
    h = ctx.host
    out: dict = {}
    if h.get("Privileged"):
        ctx.warn(f"Container '{ctx.name}' runs privileged: it has full access to the host")
        out["privileged"] = True
    for key, docker_key in (("cap_add", "CapAdd"), ("cap_drop", "CapDrop"), ("group_add", "GroupAdd")):
        if h.get(docker_key):
            out[key] = sorted(h[docker_key])
    security_opt = [o for o in h.get("SecurityOpt") or [] if not (o == "label=disable" and _engine_disables_labels(h))]
    if security_opt:
        out["security_opt"] = security_opt
    devices = [_device(d) for d in h.get("Devices") or []]
    if devices:
        out["devices"] = sorted(devices)
    if h.get("ReadonlyRootfs"):
        out["read_only"] = True
    if h.get("DeviceRequests"):
        ctx.warn(f"Device requests (GPUs) of container '{ctx.name}' are not exported")
    if h.get("Links"):
        ctx.warn(f"Legacy links of container '{ctx.name}' are not exported: use a shared network")
    return out


def _engine_disables_labels(h: dict) -> bool:
    """The engine adds `label=disable` itself to privileged containers and those sharing the host's PID/IPC."""
    return bool(h.get("Privileged")) or h.get("PidMode") == "host" or h.get("IpcMode") == "host"


def _device(d: dict) -> str:
    parts = [d.get("PathOnHost") or "", d.get("PathInContainer") or d.get("PathOnHost") or ""]
    if (d.get("CgroupPermissions") or "rwm") != "rwm":
        parts.append(d["CgroupPermissions"])
    return ":".join(parts)


def _map_process(ctx: _Ctx) -> dict:
    h, c = ctx.host, ctx.cfg
    out: dict = {}
    if h.get("Init"):
        out["init"] = True
    if c.get("Tty"):
        out["tty"] = True
    if c.get("OpenStdin"):
        out["stdin_open"] = True
    if h.get("PidMode"):
        out["pid"] = _namespace_ref(ctx, h["PidMode"], "PID namespace")
    if (h.get("IpcMode") or "private") != "private":
        out["ipc"] = _namespace_ref(ctx, h["IpcMode"], "IPC namespace")
    if h.get("UsernsMode"):
        out["userns_mode"] = h["UsernsMode"]
    if (h.get("Runtime") or "runc") != "runc":
        out["runtime"] = h["Runtime"]
    if h.get("CgroupParent"):
        out["cgroup_parent"] = h["CgroupParent"]
    signal = c.get("StopSignal")
    if signal and signal != (ctx.img.get("StopSignal") or "SIGTERM"):
        out["stop_signal"] = signal
    if c.get("StopTimeout") is not None:
        out["stop_grace_period"] = _duration(c["StopTimeout"] * 1_000_000_000)
    return out


def _namespace_ref(ctx: _Ctx, mode: str, what: str) -> str:
    if mode.startswith("container:"):
        return _container_ref(ctx, mode.partition(":")[2], what)
    return mode


def _map_logging(ctx: _Ctx) -> dict:
    log = ctx.host.get("LogConfig") or {}
    driver, options = log.get("Type") or "", log.get("Config") or {}
    if not driver or (driver == "json-file" and not options):
        return {}
    out: dict = {"driver": driver}
    if options:
        out["options"] = _secret_options(ctx, "log option", options)
    return {"logging": out}


def _map_resources(ctx: _Ctx) -> dict:
    h = ctx.host
    out: dict = {}
    memory = h.get("Memory") or 0
    if memory:
        out["mem_limit"] = _byte_size(memory)
    if h.get("MemoryReservation"):
        out["mem_reservation"] = _byte_size(h["MemoryReservation"])
    swap = h.get("MemorySwap") or 0
    # The engine sets swap to twice the memory limit when only the limit is given.
    if swap and swap != 2 * memory:
        out["memswap_limit"] = swap if swap < 0 else _byte_size(swap)
    if h.get("MemorySwappiness") is not None and h["MemorySwappiness"] >= 0:
        out["mem_swappiness"] = h["MemorySwappiness"]
    if h.get("OomKillDisable"):
        out["oom_kill_disable"] = True
    if h.get("OomScoreAdj"):
        out["oom_score_adj"] = h["OomScoreAdj"]
    if h.get("NanoCpus"):
        out["cpus"] = _cpus(h["NanoCpus"])
    for key, docker_key in (("cpu_shares", "CpuShares"), ("cpu_period", "CpuPeriod"), ("cpu_quota", "CpuQuota")):
        if h.get(docker_key):
            out[key] = h[docker_key]
    if h.get("CpusetCpus"):
        out["cpuset"] = h["CpusetCpus"]
    if (h.get("PidsLimit") or 0) > 0:
        out["pids_limit"] = h["PidsLimit"]
    if h.get("ShmSize") and h["ShmSize"] != _DEFAULT_SHM_SIZE:
        out["shm_size"] = _byte_size(h["ShmSize"])
    ulimits = {u["Name"]: _ulimit(u) for u in sorted(h.get("Ulimits") or [], key=lambda u: u["Name"])}
    if ulimits:
        out["ulimits"] = ulimits
    if h.get("Sysctls"):
        out["sysctls"] = _secret_options(ctx, "sysctl", h["Sysctls"])
    return out


def _ulimit(u: dict) -> int | dict:
    return u["Soft"] if u["Soft"] == u["Hard"] else {"soft": u["Soft"], "hard": u["Hard"]}


_MAPPERS: tuple[Callable[[_Ctx], dict], ...] = (
    _map_image, _map_identity, _map_command, _map_environment, _map_ports, _map_mounts, _map_networks,
    _map_hosts_and_dns, _map_restart, _map_healthcheck, _map_labels, _map_security, _map_process, _map_logging,
    _map_resources,
)


def _build_service(ctx: _Ctx) -> dict:
    if ctx.source.image is None:
        ctx.warn(f"Image of container '{ctx.name}' could not be inspected: "
                 "settings it may already provide are kept in the output")
    fields: dict = {}
    for mapper in _MAPPERS:
        fields.update(mapper(ctx))
    return {key: fields[key] for key in SERVICE_KEY_ORDER if key in fields}


# ---------------------------------------------------------------------------------------------------------
# The stack


def _unique_service_names(sources: list[ServiceSource]) -> list[str]:
    """Sanitised container names; a repeated one gets -2, -3, … in input order."""
    names: list[str] = []
    for source in sources:
        base = sanitize_name((source.container.get("Name") or "").lstrip("/") or "service")
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def _conflicted_names(sources: list[ServiceSource], sanitize: bool) -> set[str]:
    """Variable names that two containers hold with different secret values (they get a service prefix;
    two names of one container that map to the same variable get `_2` instead)."""
    values: dict[str, set[str]] = {}
    holders: dict[str, set[int]] = {}
    if sanitize:
        for index, source in enumerate(sources):
            probe = _Ctx(source, "", {}, False, False, False, [])
            for name, value in _exported_env(probe):
                if value is not None and is_secret(name, value):
                    values.setdefault(variable_name(name), set()).add(value)
                    holders.setdefault(variable_name(name), set()).add(index)
    return {name for name, found in values.items() if len(found) > 1 and len(holders[name]) > 1}


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with list items indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


_Dumper.add_representer(_Placeholder, lambda d, v: d.represent_str(str(v)))


def _dump(document: dict) -> str:
    """Each top-level section separately, with a blank line between them, for readability."""
    return "\n".join(
        yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                  allow_unicode=True, width=1 << 16)
        for key, value in document.items()
    )


def _service_refs(sources: list[ServiceSource], names: list[str]) -> dict[str, str]:
    """Container id and name -> service name, so that `container:` references become `service:`."""
    refs = {}
    for source, name in zip(sources, names, strict=True):
        for ref in (source.container.get("Id"), (source.container.get("Name") or "").lstrip("/")):
            if ref:
                refs[ref] = name
    return refs


def _finish(value: dict, identity: frozenset[str], book: SecretBook | None, heads: dict | None = None) -> dict:
    lines = command_spans(value, heads)
    return {key: _escape_tree(v, None if key in identity else book, lines.get(key)) for key, v in value.items()}


def _collect(value: dict, identity: frozenset[str], book: SecretBook, heads: dict | None = None) -> None:
    """First pass over a service or a declaration; ``heads``: what its command follows though not written
    (the image's entrypoint: `redis-cli` there gives `-a X` in the command its meaning)."""
    lines = command_spans(value, heads)
    for key, v in value.items():
        if key not in identity:
            _collect_tree(v, book, lines.get(key))


def _declarations(contexts: list[_Ctx], attr: str) -> dict:
    declared: dict = {}
    for ctx in contexts:
        declared.update(getattr(ctx, attr))
    return dict(sorted(declared.items()))


def export_services(sources: list[ServiceSource], *, stack_name: str | None = None,
                    sanitize_secrets: bool = True, include_volumes: bool = True,
                    include_networks: bool = True) -> Export:
    """Build one compose file from the given containers (one service each, in the given order)."""
    if not sources:
        raise ValueError("nothing to export")
    names = _unique_service_names(sources)
    refs = _service_refs(sources, names)
    warnings: list[str] = []
    secrets = _Placeholders(_conflicted_names(sources, sanitize_secrets)) if sanitize_secrets else None
    contexts = [_Ctx(s, n, refs, sanitize_secrets, include_volumes, include_networks, warnings, secrets=secrets)
                for s, n in zip(sources, names, strict=True)]
    services = {}
    for ctx in contexts:
        if secrets is not None:
            secrets.at(f"service {ctx.service}", ctx.service)
        services[ctx.service] = _build_service(ctx)
    declarations = {key: _declarations(contexts, key) for key in ("volumes", "networks")}

    book = secrets.book if secrets is not None else None
    # Two passes: every secret is found first, then hunted in every field (not only in those after it).
    for finishing in (False, True):
        for ctx in contexts:
            if secrets is not None:
                secrets.at(f"service {ctx.service}", ctx.service)
            heads = {"entrypoint": ctx.img.get("Entrypoint")}
            if finishing:
                services[ctx.service] = _finish(services[ctx.service], _IDENTITY_KEYS, book, heads)
            elif book is not None:
                _collect(services[ctx.service], _IDENTITY_KEYS, book, heads)
        for key, declared in declarations.items():
            for name in declared:
                if secrets is not None:
                    secrets.at(f"{key[:-1]} {name}", name)
                if finishing:
                    declared[name] = _finish(declared[name], _IDENTITY_KEYS, book)
                elif book is not None:
                    _collect(declared[name], _IDENTITY_KEYS, book)

    document: dict = {"services": services}
    for key, declared in declarations.items():
        if declared:
            document[key] = declared

    secret_names = sorted(secrets.values) if secrets is not None else []
    warnings += [f"Secret '{name}' was sanitized" for name in secret_names]
    if not sanitize_secrets and any(is_secret(n, v or "") for ctx in contexts
                                    for n, v in _env_map(ctx.cfg.get("Env")).items()):
        warnings.append("Secrets were not sanitized: this file contains credentials")

    single = len(sources) == 1 and stack_name is None
    base = sanitize_name(names[0] if single else stack_name or DEFAULT_STACK_NAME)
    if book is not None:  # a warning quotes names and paths: a secret repeated there is masked too
        warnings = [scrub_text(w, book.replacements) for w in warnings]
    return Export(
        content=_dump(document),
        filename=f"{base}-compose.yaml",
        warnings=list(dict.fromkeys(warnings)),
        env_content=secrets.env_content() if secrets is not None else "",
        env_filename=f"{base}.env",
    )


def export_zip(export: Export, stack_name: str) -> bytes:
    """A zip holding `<stack>/compose.yaml` and `<stack>/.env`: unzip, fill .env, `docker compose up`.

    Fixed timestamps and attributes make the archive byte-identical for the same export.
    """
    folder = sanitize_name(stack_name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in (("compose.yaml", export.content), (".env", export.env_content)):
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, text.encode("utf-8"))
    return buffer.getvalue()
