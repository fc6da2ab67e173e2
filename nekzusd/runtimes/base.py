"""The runtime interface that Docker and Kubernetes both implement, so handlers never branch on the runtime."""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import NotSupported

@dataclass(frozen=True, slots=True)
class Port:
    ip: str
    private_port: int
    public_port: int | None
    type: str

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ip": self.ip, "privatePort": self.private_port}
        if self.public_port is not None:
            out["publicPort"] = self.public_port
        out["type"] = self.type
        return out


@dataclass(frozen=True, slots=True)
class Container:
    """One row of the container list, the same shape for every runtime."""

    id: str
    name: str
    image: str
    state: str
    status: str
    created: int
    runtime: str
    namespace: str = ""
    ports: tuple[Port, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    health: str | None = None  # engine health check status ("healthy", "unhealthy", ...), if any
    workload: str = ""  # Kubernetes: the Deployment/StatefulSet/DaemonSet a pod belongs to (stable, unlike its name)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "state": self.state,
            "status": self.status,
            "created": self.created,
            "ports": [p.as_json() for p in self.ports],
            "labels": dict(self.labels),
            "runtime": self.runtime,
            "namespace": self.namespace,
        }


@dataclass(frozen=True, slots=True)
class Ref:
    """How a request names a container: an id (or name) and, for Kubernetes, a namespace."""

    id: str
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class LogLine:
    stream: str  # "stdout" or "stderr"
    message: str
    timestamp: float | None = None


# The action of the Event a stream yields once it is subscribed: whatever happened before may have been
# missed (the stream was away), so the consumer lists again (state_changes resyncs on it).
CONNECTED = "connected"


@dataclass(frozen=True, slots=True)
class Event:
    """A container state change reported by the engine, or ``CONNECTED``; it tells the consumer when to
    look again (state_changes lists and compares), not what the state is."""

    container_id: str
    action: str


# A bridge network of the host: its subnet and its gateway (the host's own address on it), if it has one.
Subnet = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ipaddress.IPv4Address | ipaddress.IPv6Address | None]


class Runtime(abc.ABC):
    """A container engine. Methods raise domain errors, never choose an HTTP answer themselves:
    errors.RuntimeUnavailable when the engine cannot be reached, errors.ContainerNotFound for unknown
    containers, errors.NotSupported for what the runtime cannot do and errors.EngineError otherwise
    (handlers map them with errors.engine_errors)."""

    name: ClassVar[str]
    # The lifecycle actions (nekzusd.actions.ACTIONS) this runtime can do; any other is a 501 before anything runs.
    actions: ClassVar[frozenset[str]]

    async def open(self) -> None:  # noqa: B027 -- an optional hook, a no-op unless a runtime needs it
        """Prepare clients; must not fail when the engine is down (the daemon starts anyway)."""

    async def close(self) -> None:  # noqa: B027 -- an optional hook, a no-op unless a runtime needs it
        """Release clients and background resources."""

    @abc.abstractmethod
    async def ping(self) -> dict[str, Any]:
        """Reachability and version, e.g. {"version": "20.10.24", "apiVersion": "1.41"}."""

    @abc.abstractmethod
    def validate_ref(self, ref: Ref) -> Ref:
        """Check the id (and namespace) against the engine's own syntax before any engine call."""

    async def bridge_networks(self) -> list[Subnet]:
        """The subnets (and gateways) of the host's own bridge networks, whose addresses are containers
        (``containernets``); none for a runtime without them."""
        return []

    def list_scope(self, namespace: str) -> str:
        """What ``list_containers`` narrows to for a client's ``namespace``: "" (everything it sees) for a
        runtime without namespaces, which ignores the name. A cache of listings keys on this, not on the
        client's text, so that made-up names cannot each cost a listing."""
        return ""

    @abc.abstractmethod
    async def list_containers(self, namespace: str | None = None) -> list[Container]:
        """Every container (all states) of the runtime, or of one namespace."""

    @abc.abstractmethod
    async def get(self, ref: Ref) -> Container:
        """One container's list row, for state checks."""

    @abc.abstractmethod
    async def inspect(self, ref: Ref) -> dict[str, Any]:
        """Detailed information (Docker: the raw engine document, secrets masked)."""

    @abc.abstractmethod
    async def start(self, ref: Ref) -> None: ...

    @abc.abstractmethod
    async def stop(self, ref: Ref, timeout: int) -> None: ...

    @abc.abstractmethod
    async def restart(self, ref: Ref, timeout: int) -> None: ...

    async def pause(self, ref: Ref) -> None:
        """Freeze the container's processes; only runtimes that list "pause" in ``actions`` are asked."""
        raise NotImplementedError

    async def unpause(self, ref: Ref) -> None:
        raise NotImplementedError

    async def stats(self, ref: Ref) -> dict[str, Any]:
        """Resource usage in the API's stats shape."""
        raise NotSupported(self.name, "Resource statistics")

    def logs(self, ref: Ref, *, tail: int, follow: bool, timestamps: bool, since: float | None = None,
             until: float | None = None, container: str = "",
             opened: Callable[[], None] | None = None) -> AsyncGenerator[LogLine, None]:
        """Log lines, oldest first; ends when the container stops (follow) or the tail is done. ``since`` and
        ``until`` (Unix seconds, inclusive) keep the lines logged in that window; a follow stream ends at
        ``until`` at the latest (the engine would wait for a later line). ``container`` names one container
        of a Kubernetes pod (a runtime whose containers hold none refuses it). ``opened`` is called once the
        engine's stream is open, before any line: a follow misses nothing written from then on."""
        raise NotSupported(self.name, "Reading logs")

    def events(self) -> AsyncGenerator[Event, None]:
        """Container state changes until cancelled, first ``CONNECTED`` once subscribed; raises
        RuntimeUnavailable when the engine goes away."""
        raise NotSupported(self.name, "Watching events")

    async def export_source(self, ref: Ref) -> Any:
        """What the Compose export needs about one container (compose.ServiceSource)."""
        raise NotSupported(self.name, "Compose export")

    async def secret_values(self, ref: Ref) -> tuple[str, ...]:
        """The secret values a container holds (environment, secret-named labels and options), to scrub
        them from an operation's error, which may quote the command. Runtimes without such data: none."""
        return ()

    def is_self(self, container: Container) -> bool:
        """True for the container nekzusd itself runs in (bulk operations never touch it)."""
        return False

    async def check_operation(self, container: Container, action: str) -> None:  # noqa: B027 -- optional hook
        """Runtime-specific refusals before an operation is accepted (raise ApiError/EngineError), e.g. a
        Kubernetes pod without a workload to scale. Runs after the generic state check."""
