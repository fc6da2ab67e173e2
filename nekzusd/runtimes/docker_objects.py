"""Docker Engine (and Podman) documents mapped to the API's shapes: pure functions, no I/O.

Kept apart from the runtime (nekzusd/runtimes/docker.py), like k8s_objects.py for Kubernetes, so that the
mapping of the container list, inspect and stats documents can be read, and tested, alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..secrets import mask_labels, secret_values_of
from ..stats import Sample
from .base import Container, Port

# The engines' state words mapped onto the API's.
_STATES = {
    "running": "running", "paused": "paused", "restarting": "restarting", "created": "created",
    "exited": "exited", "dead": "exited", "removing": "stopped", "stopped": "stopped",
    "configured": "created", "initialized": "created",  # Podman's extra words
}


def short_id(full_id: str) -> str:
    return full_id[:12]


def _health_of(status: str) -> str | None:
    if "(" not in status:
        return None
    for word in ("unhealthy", "healthy", "starting"):
        if f"({word})" in status or f"(health: {word})" in status:
            return word
    return None


def _ports_of(entries: list[dict[str, Any]] | None) -> tuple[Port, ...]:
    if not entries:
        return ()
    ports = [Port(e.get("IP", ""), int(e["PrivatePort"]), e.get("PublicPort"), e.get("Type", "tcp"))
             for e in entries or [] if "PrivatePort" in e]
    ports.sort(key=lambda p: (p.private_port, p.type, p.ip, p.public_port or 0))
    return tuple(ports)


def container_from_list(row: dict[str, Any], labels: dict[str, str] | None = None) -> Container:
    """Map one entry of GET /containers/json to the API's row; `labels` are its labels already masked
    (the list has no environment, so the caller knows the secrets they may repeat)."""
    names = row.get("Names") or [""]
    status = row.get("Status", "")
    return Container(
        id=short_id(row["Id"]),
        name=names[0].lstrip("/"),
        image=row.get("Image", ""),
        state=_STATES.get(row.get("State", ""), "unknown"),
        status=status,
        created=int(row.get("Created", 0)),
        runtime="docker",
        ports=_ports_of(row.get("Ports")),
        labels=labels if labels is not None else mask_labels(row.get("Labels") or {}),
        health=_health_of(status),
    )


def _parse_time(value: str | None) -> float | None:
    if not value or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}"
    return "About a minute" if seconds >= 60 else f"{max(int(seconds), 1)} seconds"


def _status_text(state: dict[str, Any], now: float) -> str:
    """The human status line `docker ps` shows, rebuilt from an inspect document."""
    status = state.get("Status", "")
    if status in ("running", "paused", "restarting"):
        started = _parse_time(state.get("StartedAt")) or now
        text = f"Up {_ago(now - started)}"
        if status == "paused":
            text += " (Paused)"
        health = (state.get("Health") or {}).get("Status")
        if health:
            text += f" ({health})"
        return text if status != "restarting" else f"Restarting ({state.get('ExitCode', 0)})"
    if status in ("exited", "dead"):
        finished = _parse_time(state.get("FinishedAt")) or now
        return f"Exited ({state.get('ExitCode', 0)}) {_ago(now - finished)} ago"
    return status.capitalize()


def container_from_inspect(doc: dict[str, Any]) -> Container:
    """Map GET /containers/{id}/json to the API's row (same fields as the list)."""
    state = doc.get("State") or {}
    config = doc.get("Config") or {}
    ports = []
    for key, bindings in ((doc.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, _, proto = key.partition("/")
        for b in bindings or [None]:
            public = int(b["HostPort"]) if b and b.get("HostPort") else None
            ports.append({"IP": b.get("HostIp", "") if b else "", "PrivatePort": int(port),
                          "PublicPort": public, "Type": proto or "tcp"})
    created = _parse_time(doc.get("Created")) or 0
    return Container(
        id=short_id(doc["Id"]),
        name=doc.get("Name", "").lstrip("/"),
        image=config.get("Image", ""),
        state=_STATES.get(state.get("Status", ""), "unknown"),
        status=_status_text(state, time.time()),
        created=int(created),
        runtime="docker",
        ports=_ports_of(ports),
        labels=mask_labels(config.get("Labels") or {}, secret_values_of(doc)),
        health=(state.get("Health") or {}).get("Status"),
    )


def _sum_networks(networks: dict[str, Any] | None, key: str) -> int:
    return sum(int((iface or {}).get(key) or 0) for iface in (networks or {}).values())


def sample_from_stats(doc: dict[str, Any]) -> Sample | None:
    """A dockerd or Podman stats document as a Sample; None when it says the container is not running
    (dockerd: a zero ``read`` time)."""
    read = _parse_time(doc.get("read"))
    if read is None:
        return None
    cpu = doc.get("cpu_stats") or {}
    pre = doc.get("precpu_stats") or {}
    memory = doc.get("memory_stats") or {}
    counters = memory.get("stats") or {}  # Podman gives only usage and limit
    reclaimable = counters["cache"] if "cache" in counters else counters.get("inactive_file", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    return Sample(
        container_id=short_id(doc.get("id") or doc.get("Id") or ""),
        read=read,
        online_cpus=int(online),
        cpu_total=int((cpu.get("cpu_usage") or {}).get("total_usage") or 0),
        system_cpu=int(cpu.get("system_cpu_usage") or 0),
        pre_cpu_total=int((pre.get("cpu_usage") or {}).get("total_usage") or 0),
        pre_system_cpu=int(pre.get("system_cpu_usage") or 0),
        memory_usage=int(memory.get("usage") or 0),
        memory_reclaimable=int(reclaimable or 0),
        memory_limit=int(memory.get("limit") or 0),
        rx_bytes=_sum_networks(doc.get("networks"), "rx_bytes"),
        tx_bytes=_sum_networks(doc.get("networks"), "tx_bytes"),
    )


def podman_sample(doc: dict[str, Any]) -> Sample | None:
    """A Podman stats document as a Sample whose system CPU time is the elapsed time × online CPUs.

    Podman's system_cpu_usage is the host's busy CPU time (its root cgroup's usage), where dockerd's is the
    elapsed CPU time (/proc/stat, idle included): divided by busy time, a container on a quiet host seemed
    to use nearly every core (1.86 of 2 for a 0.2 quota). Its own previous reading is ignored too."""
    sample = sample_from_stats(doc)
    if sample is None:
        return None
    elapsed = round(sample.read * 1e9) * sample.online_cpus
    return replace(sample, system_cpu=elapsed, pre_cpu_total=0, pre_system_cpu=0)
