"""Approved apps, which containers they link, and their health.

An app is approved in the config file or through the API (kept in the store). A container is linked to
an app by its ``nekzus.app.id`` label or by its name being listed under the app's ``containers``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .config import AppConfig
from .errors import ApiError, EngineError, RuntimeUnavailable
from .hub import Hub
from .runtimes.base import Container, Runtime
from .store import Store

log = logging.getLogger(__name__)

APP_LABEL = "nekzus.app.id"
ENABLE_LABEL = "nekzus.enable"


@dataclass(frozen=True)
class App:
    id: str
    name: str
    containers: tuple[str, ...] = ()
    source: str = "api"  # "config" or "api"

    def lists(self, container: Container) -> bool:
        """Named under ``containers:`` (a Kubernetes pod also by its workload, as pod names change)."""
        return container.name in self.containers or bool(container.workload) and container.workload in self.containers

    def links(self, container: Container) -> bool:
        return container.labels.get(APP_LABEL) == self.id or self.lists(container)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "containers": list(self.containers), "source": self.source}


class Apps:
    def __init__(self, config_apps: Iterable[AppConfig], store: Store) -> None:
        self._store = store
        self._config: dict[str, App] = {}
        self._stored: dict[str, App] = {}
        self.set_config_apps(config_apps)

    def set_config_apps(self, config_apps: Iterable[AppConfig]) -> None:
        """Replace the apps that come from the config file (start-up and SIGHUP)."""
        self._config = {a.id: App(a.id, a.name or a.id, tuple(a.containers), "config") for a in config_apps}

    async def load(self) -> None:
        self._stored = {row["id"]: App(row["id"], row["name"], tuple(row["containers"]), "api")
                        for row in await self._store.apps()}

    def all(self) -> list[App]:
        merged = {**self._stored, **self._config}  # the config file wins on an id clash
        return sorted(merged.values(), key=lambda a: a.id)

    def get(self, app_id: str) -> App | None:
        return self._config.get(app_id) or self._stored.get(app_id)

    def app_of(self, container: Container) -> App | None:
        label = container.labels.get(APP_LABEL)
        if label is not None:
            app = self.get(label)
            if app is not None:
                return app
        return next((a for a in self.all() if a.lists(container)), None)

    def linked(self, containers: Iterable[Container]) -> list[Container]:
        return [c for c in containers if self.app_of(c) is not None]

    def unlinked_candidates(self, containers: Iterable[Container]) -> list[Container]:
        """Discovery: containers that ask to be managed (nekzus.enable=true) but no app links yet."""
        return [c for c in containers
                if c.labels.get(ENABLE_LABEL, "").lower() == "true" and self.app_of(c) is None]

    async def add(self, app_id: str, name: str, containers: list[str]) -> App:
        if self.get(app_id) is not None:
            raise ApiError(409, "APP_EXISTS", f"App already approved: {app_id}", {"id": app_id})
        if not await self._store.add_app(app_id, name, containers, time.time()):
            raise ApiError(409, "APP_EXISTS", f"App already approved: {app_id}", {"id": app_id})
        app = App(app_id, name, tuple(containers), "api")
        self._stored[app_id] = app
        return app

    async def remove(self, app_id: str) -> None:
        if app_id in self._config:
            raise ApiError(409, "APP_FROM_CONFIG",
                           f"App {app_id} comes from the config file; remove it there", {"id": app_id})
        app = self._stored.pop(app_id, None)  # before the await: a concurrent delete then sees it gone
        if app is None:
            raise ApiError(404, "APP_NOT_FOUND", f"App not found: {app_id}", {"id": app_id})
        try:
            await self._store.delete_app(app_id)
        except BaseException:
            self._stored.setdefault(app_id, app)
            raise


def app_health(containers: list[Container]) -> tuple[str, str]:
    """(status, message) of an app from its linked containers."""
    if not containers:
        return "unknown", "No linked containers"
    stopped = [c for c in containers if not c.running]
    if stopped:
        return "unhealthy", "Container stopped"
    if any(c.health == "unhealthy" for c in containers):
        return "unhealthy", "Container unhealthy"
    return "healthy", "All containers running"


class HealthTracker:
    """Keeps each app's health and announces changes as ``health_change`` to every WebSocket client.

    Changes are noticed right after nekzusd's own operations and from each engine's event stream, so a
    `docker stop` run by hand is reported too.
    """

    DEBOUNCE = 0.05

    def __init__(self, apps: Apps, runtimes: list[Runtime], hub: Hub) -> None:
        self.apps = apps
        self.runtimes = runtimes
        self.hub = hub
        self.status: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None
        self._dirty = False
        self._watchers: list[asyncio.Task[None]] = []

    async def refresh(self, *, announce: bool = True) -> None:
        async with self._lock:
            containers: list[Container] = []
            for runtime in self.runtimes:
                try:
                    containers += await runtime.list()
                except (ApiError, EngineError) as exc:  # an engine being down changes nothing known
                    log.debug("health refresh: %s unavailable: %s", runtime.name, exc)
                    return
            by_app: dict[str, list[Container]] = {a.id: [] for a in self.apps.all()}
            for c in containers:
                app = self.apps.app_of(c)
                if app is not None:
                    by_app[app.id].append(c)
            for app in self.apps.all():
                status, message = app_health(by_app[app.id])
                before = self.status.get(app.id)
                self.status[app.id] = status
                if announce and before in ("healthy", "unhealthy") and status in ("healthy", "unhealthy") \
                        and status != before:
                    self.hub.broadcast("health_change", {
                        "appId": app.id, "appName": app.name, "status": status, "message": message,
                        "timestamp": int(time.time())})

    def poke(self) -> None:
        """Schedule a refresh soon, folding bursts of events (kill, die, stop) into one. A poke that
        arrives while a refresh runs makes it run once more: its change may postdate the listing."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._debounced())

    async def _debounced(self) -> None:
        while self._dirty:
            await asyncio.sleep(self.DEBOUNCE)
            self._dirty = False
            await self.refresh()

    def start(self) -> None:
        self._watchers = [asyncio.create_task(self._watch(r), name=f"events-{r.name}") for r in self.runtimes]

    async def _watch(self, runtime: Runtime) -> None:
        delay = 0.5
        while True:
            try:
                await self.refresh()
                async for _event in runtime.events():
                    delay = 0.5
                    self.poke()
            except NotImplementedError:
                return
            except (RuntimeUnavailable, EngineError) as exc:  # engine down: retry with backoff
                log.debug("event stream of %s broke: %s", runtime.name, exc)
            except Exception:  # a bug, not an outage: say so, but keep tracking
                log.exception("event stream of %s failed", runtime.name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        tasks = [*self._watchers, *([self._pending] if self._pending else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
