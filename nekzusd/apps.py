"""Approved apps, which containers they link, and their health.

An app is approved in the config file or through the API (kept in the store). A container is linked to
an app by its ``nekzus.app.id`` label or by its name being listed under the app's ``containers``.

Linking runs for every row of every list, so it must not depend on how many apps there are: ``Apps``
keeps an index (apps by id, and the first app in id order by each listed container name) rebuilt once
per change of the apps, and ``app_of`` is two or three dictionary look-ups. Apps approved through the API
are capped (``max_api_apps``), and each is small (the API checks its fields), so neither memory nor the
index can be grown by a client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .config import AppConfig
from .errors import ApiError, EngineError
from .hub import Hub
from .runtimes.base import Container, Runtime
from .store import Store

log = logging.getLogger(__name__)

APP_LABEL = "nekzus.app.id"
ENABLE_LABEL = "nekzus.enable"
DEFAULT_MAX_API_APPS = 256


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


def too_many_apps(limit: int) -> ApiError:
    return ApiError(409, "TOO_MANY_APPS",
                    f"At most {limit} apps can be approved through the API; delete one first "
                    "(or raise max_api_apps in the config file)", {"limit": limit})


class Apps:
    def __init__(self, config_apps: Iterable[AppConfig], store: Store,
                 max_api_apps: int = DEFAULT_MAX_API_APPS) -> None:
        self._store = store
        self.max_api_apps = max_api_apps
        self._config: dict[str, App] = {}
        self._stored: dict[str, App] = {}
        self._adding: set[str] = set()  # ids being written to the store: they count against the cap
        self._by_id: dict[str, App] = {}
        self._sorted: tuple[App, ...] = ()
        self._by_container: dict[str, App] = {}
        self.set_config_apps(config_apps)

    def set_config_apps(self, config_apps: Iterable[AppConfig]) -> None:
        """Replace the apps that come from the config file (start-up and SIGHUP)."""
        self._config = {a.id: App(a.id, a.name or a.id, tuple(a.containers), "config") for a in config_apps}
        self._reindex()

    async def load(self) -> None:
        self._stored = {row["id"]: App(row["id"], row["name"], tuple(row["containers"]), "api")
                        for row in await self._store.apps()}
        if len(self._stored) > self.max_api_apps:
            log.warning("%d apps approved through the API are stored, more than max_api_apps (%d): all are "
                        "kept, but no more can be approved until some are deleted",
                        len(self._stored), self.max_api_apps)
        self._reindex()

    def _reindex(self) -> None:
        """Rebuild the look-up tables after any change: O(apps + listed names), once per change."""
        self._by_id = {**self._stored, **self._config}  # the config file wins on an id clash
        self._sorted = tuple(sorted(self._by_id.values(), key=lambda a: a.id))
        by_container: dict[str, App] = {}
        for app in self._sorted:  # id order: the first app listing a name links it, as before
            for name in app.containers:
                by_container.setdefault(name, app)
        self._by_container = by_container

    def all(self) -> list[App]:
        return list(self._sorted)

    def get(self, app_id: str) -> App | None:
        return self._by_id.get(app_id)

    def app_of(self, container: Container) -> App | None:
        """The app linking ``container``: its label's app, else the first app (by id) listing its name or,
        for a Kubernetes pod, its workload."""
        label = container.labels.get(APP_LABEL)
        if label is not None:
            app = self._by_id.get(label)
            if app is not None:
                return app
        by_name = self._by_container.get(container.name)
        by_workload = self._by_container.get(container.workload) if container.workload else None
        if by_name is None or by_workload is None:
            return by_name or by_workload
        return by_name if by_name.id <= by_workload.id else by_workload

    def linked(self, containers: Iterable[Container]) -> list[Container]:
        return [c for c in containers if self.app_of(c) is not None]

    def unlinked_candidates(self, containers: Iterable[Container]) -> list[Container]:
        """Discovery: containers that ask to be managed (nekzus.enable=true) but no app links yet."""
        return [c for c in containers
                if c.labels.get(ENABLE_LABEL, "").lower() == "true" and self.app_of(c) is None]

    async def add(self, app_id: str, name: str, containers: list[str]) -> App:
        """Approve an app through the API. The checks and the reservation of the id happen before the
        store is awaited, so concurrent requests can neither exceed the cap nor approve one id twice."""
        if self.get(app_id) is not None or app_id in self._adding:
            raise ApiError(409, "APP_EXISTS", f"App already approved: {app_id}", {"id": app_id})
        if len(self._stored) + len(self._adding) >= self.max_api_apps:
            raise too_many_apps(self.max_api_apps)
        self._adding.add(app_id)
        try:
            if not await self._store.add_app(app_id, name, containers, time.time()):
                raise ApiError(409, "APP_EXISTS", f"App already approved: {app_id}", {"id": app_id})
            app = App(app_id, name, tuple(containers), "api")
            self._stored[app_id] = app
            self._reindex()
        finally:
            self._adding.discard(app_id)
        return app

    async def remove(self, app_id: str) -> None:
        if app_id in self._config:
            raise ApiError(409, "APP_FROM_CONFIG",
                           f"App {app_id} comes from the config file; remove it there", {"id": app_id})
        app = self._stored.pop(app_id, None)  # before the await: a concurrent delete then sees it gone
        if app is None:
            raise ApiError(404, "APP_NOT_FOUND", f"App not found: {app_id}", {"id": app_id})
        self._reindex()
        try:
            await self._store.delete_app(app_id)
        except BaseException:
            self._stored.setdefault(app_id, app)
            self._reindex()
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

    Changes are noticed right after nekzusd's own operations and, through ``state_changes`` (the one
    owner of each engine's event stream), whenever a listing there found a container changed, so a
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

    async def refresh(self, *, announce: bool = True) -> None:
        async with self._lock:
            containers: list[Container] = []
            for runtime in self.runtimes:
                try:
                    containers += await runtime.list_containers()
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

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            await asyncio.gather(self._pending, return_exceptions=True)
