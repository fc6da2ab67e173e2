"""The configured runtimes, and choosing the ones a request addresses."""

from __future__ import annotations

from ..config import RuntimesConfig
from ..errors import ApiError
from .base import Container, Event, LogLine, Port, Ref, Runtime

KNOWN = ("docker", "kubernetes")


class Runtimes:
    def __init__(self, config: RuntimesConfig, *, engine_pool: int = 100) -> None:
        self.primary = config.primary
        self.read_timeout = config.read_timeout  # each runtime's deadline in a read of several (nekzusd.merged)
        self.by_name: dict[str, Runtime] = {}
        if config.docker.enabled:
            from .docker import DockerRuntime
            self.by_name["docker"] = DockerRuntime(config.docker.host, pool_limit=engine_pool)
        if config.kubernetes.enabled:
            from .kubernetes import KubernetesRuntime  # imported only when enabled: it is heavy
            self.by_name["kubernetes"] = KubernetesRuntime(config.kubernetes)

    def pick(self, name: str | None) -> Runtime:
        """The runtime a request names (``?runtime=``), or the primary one."""
        if name is None:
            name = self.primary
        if name not in KNOWN:
            raise ApiError(400, "INVALID_RUNTIME", f"Invalid runtime {name[:40]!r}: use docker or kubernetes",
                           {"runtime": name[:40]})
        runtime = self.by_name.get(name)
        if runtime is None:
            raise ApiError(500, "NO_RUNTIME", f"No container runtime configured: {name} is not enabled",
                           {"runtime": name})
        return runtime

    def select(self, name: str | None) -> list[Runtime]:
        """The runtimes a list-like request covers: the one ``?runtime=`` names, else every enabled one
        (``runtime`` is a filter there; single-container routes use ``pick``: an id belongs to one runtime)."""
        return self.all() if name is None else [self.pick(name)]

    def all(self) -> list[Runtime]:
        return list(self.by_name.values())

    async def open(self) -> None:
        for runtime in self.by_name.values():
            await runtime.open()

    async def close(self) -> None:
        for runtime in self.by_name.values():
            await runtime.close()


__all__ = ["Runtimes", "Runtime", "Container", "Event", "LogLine", "Port", "Ref"]
