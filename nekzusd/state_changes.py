"""Container state pushed to WebSocket clients: ``container.state_changed``, from each engine's own events.

This is the one owner of every runtime's event stream (Docker/Podman events, the Kubernetes pod watch):
app health (``apps.HealthTracker``) is told from here too, so each engine has a single subscription.

Events only say *when* to look. The message comes from a listing compared with what clients were last
told, for three reasons:
- it is right whatever the engine's event vocabulary (Docker: kill, die, stop; Podman: die, cleanup;
  Kubernetes: a pod document) and whatever the cause (an operation of ours, ``docker stop`` by hand, a
  crash, a health check, a rescheduled pod);
- it coalesces: a burst of events (a restart-all of 50 containers) costs a listing every ``GAP`` at
  most, and each container gets at most one message per ``WINDOW``: a change that comes sooner waits for
  the end of the window and goes out as the latest state then ("last state wins"), with, as
  ``previousState``, the state clients were last told;
- it confirms: an engine can list a change later than it announces it (dockerd's ``die`` comes before its
  list shows the exit, by seconds on a loaded host, and a crash sends nothing after it), so a container
  whose event no listing has shown a change for yet is looked at again, later and later (``CONFIRM``);
- it resyncs: after the stream broke (engine restarted, watch expired) the runtime's ``CONNECTED`` event
  triggers the same comparison, so a change made while the stream was away is reported, not lost.

The first listing of a runtime is the baseline and announces nothing. A container that appears later is
announced with ``previousState: null``; one that is gone with ``state: "removed"``. A change undone
within one window (a quick restart) is not announced: the state clients know is still right. Clients
that were away learn the current state by listing (``GET /api/v1/containers``); no history is kept.

Messages go through ``Hub.broadcast`` to every authenticated client (read scope suffices, as for the
other notifications): they are never dropped one by one (a client would then believe a stale state), and
a client that stops reading fills its bounded queue and is closed as stuck, as for any other broadcast;
it lists when it comes back. Only what a list row shows already goes out (id, name, namespace, state, status, health).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, EngineError, NotSupported, RuntimeUnavailable
from .hub import Hub
from .runtimes.base import Container, Runtime

log = logging.getLogger(__name__)

MESSAGE = "container.state_changed"
WINDOW = 0.25  # seconds: at most one message per container per window (later changes wait, last one wins)
GAP = 0.05  # seconds between two listings of a runtime (at most 20 a second, during bursts of events only)
LIST_TIMEOUT = 30.0  # a listing that takes longer is abandoned (the next event asks again)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # seconds between attempts to reopen a broken stream
STABLE = 30.0  # a stream that lived this long resets the backoff
CONFIRM = (0.25, 0.5, 1.0, 2.0, 4.0)  # seconds before each further look while an event's change is not listed
REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Told:
    """What clients were last told of one container."""

    name: str
    state: str
    health: str | None


def message(container: Container, previous: str | None) -> dict[str, Any]:
    return {"containerId": container.id, "name": container.name, "runtime": container.runtime,
            "namespace": container.namespace, "state": container.state, "previousState": previous,
            "status": container.status, "health": container.health, "timestamp": int(time.time())}


Key = tuple[str, str]  # (namespace, id)


def changes(known: dict[Key, Told], rows: list[Container], runtime: str, held: Collection[Key] = frozenset(),
            ) -> tuple[dict[Key, Told], list[tuple[Key, dict[str, Any]]], bool]:
    """The new table of what clients know, the messages that bring them there, and whether a change of
    a container in ``held`` (announced too recently) was kept back: its entry stays as clients know it,
    so the next listing compares again and its latest state goes out then (pure)."""
    now: dict[Key, Told] = {}
    out: list[tuple[Key, dict[str, Any]]] = []
    waiting = False
    for c in rows:
        key = (c.namespace, c.id)
        told = Told(c.name, c.state, c.health)
        before = known.get(key)
        if before is None or (before.state, before.health) != (told.state, told.health):
            if key in held and before is not None:
                now[key], waiting = before, True
                continue
            out.append((key, message(c, before.state if before else None)))
        now[key] = told
    for key in known.keys() - now.keys():
        gone = known[key]
        if key in held:
            now[key], waiting = gone, True
            continue
        out.append((key, message(Container(id=key[1], name=gone.name, image="", state=REMOVED, status="Removed",
                                           created=0, runtime=runtime, namespace=key[0]), gone.state)))
    return now, out, waiting


class RuntimeWatch:
    """One runtime: a reader task (the event stream, reopened with backoff) that marks the runtime
    dirty, and a flusher task that lists and compares (``_flush_loop`` says when)."""

    def __init__(self, runtime: Runtime, hub: Hub, on_flush: Callable[[], None]) -> None:
        self.runtime = runtime
        self.hub = hub
        self.on_flush = on_flush
        self.known: dict[tuple[str, str], Told] | None = None  # None until the baseline listing
        self.sent = 0
        self._sent_at: dict[Key, float] = {}  # loop time of each container's last message, within WINDOW
        self._retry: asyncio.TimerHandle | None = None  # a listing when a held change may go out
        self._unconfirmed: set[str] = set()  # ids of containers with an event no listing has shown yet
        self._confirm: asyncio.TimerHandle | None = None  # the next further look for them
        self._confirms = 0  # further looks so far (the next waits CONFIRM[_confirms])
        self._dirty = asyncio.Event()
        self._dirty.set()  # the baseline
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        name = self.runtime.name
        self._tasks = [asyncio.create_task(self._read(), name=f"events-{name}"),
                       asyncio.create_task(self._flush_loop(), name=f"state-{name}")]

    async def stop(self) -> None:
        for timer in (self._retry, self._confirm):
            if timer is not None:
                timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_FIRST
        while True:
            opened = loop.time()
            try:
                async for event in self.runtime.events():
                    if event.container_id:
                        self._unconfirmed.add(event.container_id)
                    self._dirty.set()  # CONNECTED included: the resync after a reopened stream
            except NotSupported:
                return
            except (RuntimeUnavailable, EngineError, ApiError) as exc:  # engine away: reopen with backoff
                log.debug("event stream of %s broke: %s", self.runtime.name, exc)
            except Exception:  # a bug, not an outage: say so, but keep watching
                log.exception("event stream of %s failed", self.runtime.name)
            if loop.time() - opened >= STABLE:
                delay = BACKOFF_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _flush_loop(self) -> None:
        """Leading edge: the first event after a quiet spell is looked at at once (low delay); events
        that come meanwhile are looked at together ``GAP`` later. When none came, one confirming look
        ``GAP`` later all the same, because an engine's list can lag its own event (dockerd logs ``die``
        before its list shows the exit, and a crash sends nothing after ``die``)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._flush_logged()
            await asyncio.sleep(GAP)
            if not self._dirty.is_set():
                await self._flush_logged()
                await asyncio.sleep(GAP)
            self._look_again()

    def _look_again(self) -> None:
        """Schedule the next further look while some event's change is still not listed; after the last
        of ``CONFIRM``, such events are taken as changing nothing that a list shows (a ``kill`` before its
        ``die``, a ``restart`` after its ``start``)."""
        if not self._unconfirmed:
            self._confirms = 0
        elif self._confirm is None:
            if self._confirms == len(CONFIRM):
                self._unconfirmed.clear()
                self._confirms = 0
                return
            loop = asyncio.get_running_loop()
            self._confirm = loop.call_later(CONFIRM[self._confirms], self._confirm_now)
            self._confirms += 1

    def _confirm_now(self) -> None:
        self._confirm = None
        self._dirty.set()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # a bug must not end state tracking for good
            log.exception("state listing of %s failed", self.runtime.name)

    async def flush(self) -> None:
        try:
            async with asyncio.timeout(LIST_TIMEOUT):
                rows = await self.runtime.list_containers()
        except (ApiError, EngineError, TimeoutError) as exc:  # engine away: the reopened stream asks again
            log.debug("state listing of %s failed: %s", self.runtime.name, exc)
            return
        if self.known is None:
            self.known, _, _ = changes({}, rows, self.runtime.name)
            self.on_flush()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._sent_at = {k: t for k, t in self._sent_at.items() if now - t < WINDOW}
        self.known, out, waiting = changes(self.known, rows, self.runtime.name, self._sent_at.keys())
        self._unconfirmed -= {key[1] for key, _ in out}
        for key, data in out:
            self.hub.broadcast(MESSAGE, data)
            self._sent_at[key] = now
        self.sent += len(out)
        if waiting and self._retry is None:
            self._retry = loop.call_at(min(self._sent_at.values()) + WINDOW, self._retry_now)
        if out:
            self.on_flush()

    def _retry_now(self) -> None:
        self._retry = None
        self._dirty.set()


class StateChanges:
    """Every runtime's ``RuntimeWatch``; ``on_flush`` (app health) is called after a listing that
    changed something, and after each baseline."""

    def __init__(self, runtimes: list[Runtime], hub: Hub, on_flush: Callable[[], None]) -> None:
        self.watches = [RuntimeWatch(r, hub, on_flush) for r in runtimes]

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.watches))
