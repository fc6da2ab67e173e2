"""Live container stats over the WebSocket (``container.stats.*``, docs/api.md).

A connection watches containers, each at the interval it asked for (1-60 s): a ticker task per connection
reads each watched container when it is due and queues its stats object as ``container.stats``. Nothing is
read per watcher from the engine: ``Runtime.stats`` answers Docker/Podman containers from the shared
sampler cache (``nekzusd.stats``: one engine stream per container whoever watches it), and a reading is
shared for ``SHARED_FOR`` s by every connection watching the same container (a pod's stats are an API call
each, so ten dashboards at 1 s still make one call a second per pod).

Bounded everywhere:
- watches are capped per connection and in all, with the log streams' share rules (``subscriptions.Caps``);
- at most one read per watched container per connection is in flight; a slow one skips ticks, never queues;
- messages go through ``hub.Client.send_latest``: a client that reads slowly gets the newest stats of each
  container when it gets to them, and its queue holds at most one stats message per watched container;
- the tasks (ticker, reads, the "all" follower) belong to the connection and end with it: on unsubscribe,
  disconnect, a session ended by its token, or shutdown.

"All running" (``containerIds`` absent): every running container linked to an app, in every enabled runtime,
and containers that start later join within ``LIST_REFRESH`` s (their stats simply begin to arrive); a
container that stops gets ``container.stats.ended`` and joins again if it starts again. A container the
client unsubscribed from, or that did not fit under a cap, is not added back while it keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web

from . import ws
from .apps import Apps
from .concurrency import gather_all
from .config import LiveStatsConfig, RatePool
from .errors import ApiError, ContainerNotRunning, EngineError, NotSupported, as_api_error
from .hub import Client
from .keys import LIVE_STATS, RUNTIMES
from .runtimes import Container, Ref, Runtime, Runtimes
from .stats import SAMPLE_TIMEOUT
from .ratelimit import Pool
from .subscriptions import LOCAL, Caps, Holder, holder_of

log = logging.getLogger(__name__)

INTERVAL_DEFAULT = 2
INTERVAL_MIN = 1
INTERVAL_MAX = 60
SHARED_FOR = 0.9  # seconds one reading (or its failure) answers every connection watching that container
LIST_REFRESH = 5.0  # seconds between looks for containers that started, under "all running"
RESOLVE_AGE = 1.0  # a subscribe matches ids against a container listing at most this old (shared)
READ_TIMEOUT = SAMPLE_TIMEOUT + 5.0  # a first Docker sample may take a sampler's whole wait
LOOKUPS_AT_ONCE = 4  # engine lookups of one subscribe for ids the listing does not name as such
# ... and at most this many per subscribe: without it, one message of 256 unknown names was 256 engine
# calls (logs: one per message). The others are TOO_MANY_LOOKUPS; a client sends them again.
LOOKUPS_PER_SUBSCRIBE = 16
# ... and a remote client, per address and per token subject, this many a second in all its connections
# together (burst LOOKUPS_PER_SUBSCRIBE): without it, each of 64 connections of one address could cost 16
# per message, ten messages a second; ten connections already made the owner's inspects 8 times slower.
# Local clients are bounded per subscribe only.
LOOKUPS_PER_SECOND = 16
STATS_FAILED = ("CONTAINER_STATS_FAILED", "Failed to get container stats")
ENDS = {"CONTAINER_NOT_RUNNING": "container_stopped", "CONTAINER_NOT_FOUND": "container_removed"}

WatchKey = tuple[str, str, str]  # runtime name, namespace, the container's own id (Container.id)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------------------------- sharing
@dataclass
class _Entry(Generic[V]):
    at: float = 0.0  # monotonic time the value was got
    value: V | None = None
    task: asyncio.Task[None] | None = None  # the call in flight


class Shared(Generic[K, V]):
    """One call per key shared by every caller: a value younger than ``max_age`` is reused, a call in
    flight is awaited rather than repeated. ``call`` must return failures as values (never raise)."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry[V]] = {}

    def fresh(self, key: K, max_age: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry.task is not None or time.monotonic() - entry.at > max_age:
            return None
        return entry.value

    async def get(self, key: K, call: Callable[[], Awaitable[V]], max_age: float) -> tuple[float, V]:
        """``(when it was got, value)``."""
        entry = self._entries.get(key)
        if entry is None or (entry.task is None and time.monotonic() - entry.at > max_age):
            entry = self._entries[key] = _Entry()
            entry.task = asyncio.create_task(self._run(entry, call), name="livestats-read")
        if entry.task is not None:
            await asyncio.shield(entry.task)  # a caller that goes away leaves the call to the others
        assert entry.value is not None  # noqa: S101 -- _run always sets it (failures are values)
        return entry.at, entry.value

    @staticmethod
    async def _run(entry: _Entry[V], call: Callable[[], Awaitable[V]]) -> None:
        try:
            entry.value = await call()
            entry.at = time.monotonic()
        finally:
            entry.task = None

    def forget(self, key: K) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.task is None:
            del self._entries[key]

    def prune(self, max_age: float) -> None:
        """Drop values older than ``max_age`` (the keys nobody reads any more)."""
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if e.task is None and now - e.at > max_age]:
            del self._entries[key]

    @property
    def in_flight(self) -> int:
        return sum(1 for e in self._entries.values() if e.task is not None)

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()


@dataclass(frozen=True)
class Reading:
    """One container's stats as a ready ``container.stats`` message, or why there are none."""

    text: str | None = None
    error: ApiError | None = None


# --------------------------------------------------------------------------------------------- parsing
def parse_interval(data: dict[str, Any]) -> float:
    value = data.get("interval", INTERVAL_DEFAULT)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not INTERVAL_MIN <= value <= INTERVAL_MAX):
        raise ApiError(400, "INVALID_INTERVAL",
                       f"interval must be a number of seconds from {INTERVAL_MIN} to {INTERVAL_MAX}",
                       {"interval": str(value)[:40]})
    return value


def parse_ids(data: dict[str, Any], limit: int) -> list[str] | None:
    """The ids asked for, without repeats, in order; None when absent (every running linked container)."""
    ids = data.get("containerIds")
    if ids is None:
        return None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "INVALID_MESSAGE", "containerIds must be a non-empty list of strings "
                                               "(or absent: every running linked container)")
    unique = list(dict.fromkeys(ids))
    if len(unique) > limit:
        raise ApiError(429, "TOO_MANY_SUBSCRIPTIONS", f"At most {limit} containers' stats per connection",
                       {"limit": limit, "asked": len(unique)})
    return unique


def _string_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name) or ""
    if not isinstance(value, str):
        raise ApiError(400, "INVALID_MESSAGE", f"{name} must be a string")
    return value[:256]


# --------------------------------------------------------------------------------------------- watches
@dataclass
class Watch:
    """One container a connection watches."""

    runtime: Runtime
    container: Container
    interval: float
    due: float  # loop time of the next reading
    requested: str = ""  # how the client named it ("" when it joined through "all")
    failing: str | None = None  # the error code last reported, until a reading succeeds
    key: WatchKey = field(init=False)
    slot: str = field(init=False)  # its send_latest key

    def __post_init__(self) -> None:
        self.key = (self.runtime.name, self.container.namespace, self.container.id)
        self.slot = "stats:" + "/".join(self.key)

    @property
    def ref(self) -> Ref:
        return Ref(self.container.id, self.container.namespace)

    def describe(self) -> dict[str, Any]:
        c = self.container
        return {"containerId": c.id, "name": c.name, "runtime": self.runtime.name, "namespace": c.namespace}


def _message(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "data": {**data, "timestamp": _now()}}


def send_error(client: Client, error: ApiError, watch: Watch | None = None, container_id: str | None = None,
               ) -> None:
    """``container.stats.error``: about one container (``watch``, or an id as written), or the request."""
    data: dict[str, Any] = watch.describe() if watch is not None else {}
    data.pop("name", None)
    if container_id is not None and watch is None:
        data["containerId"] = container_id[:200]
    data |= {"error": error.code, "message": error.message}
    if error.details:
        data["details"] = error.details
    client.send(_message("container.stats.error", data))


class Connection:
    """One WebSocket connection's watches, its ticker task, and under "all" its follower task."""

    def __init__(self, live: LiveStats, client: Client, holder: Holder) -> None:
        self.live = live
        self.client = client
        self.holder = holder
        self.watches: dict[WatchKey, Watch] = {}
        self.all_interval: float | None = None  # following every running linked container, at this interval
        self.skipped: set[WatchKey] = set()  # under "all": unsubscribed or over a cap; not added back while running
        self._ended: dict[WatchKey, float] = {}  # monotonic time each container's ended went out (under "all")
        self._reads: dict[WatchKey, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()  # reads of removed watches, until they have ended
        self._changed = asyncio.Event()
        self._ticker = asyncio.create_task(self._tick(), name=f"livestats-{client.address}")
        self._follower: asyncio.Task[None] | None = None

    @property
    def tasks(self) -> int:
        return (not self._ticker.done()) + len(self._reads) + len(self._cancelled) + (
            self._follower is not None and not self._follower.done())

    # ---------------------------------------------------------------------------- adding and removing
    def add(self, targets: list[tuple[Runtime, Container, str]], interval: float) -> list[Watch]:
        """Watch ``targets`` (runtime, container, how the client named it) at ``interval``; those already
        watched take the new interval. All or none: over a cap, ApiError and nothing changes."""
        new = {(r.name, c.namespace, c.id) for r, c, _ in targets} - self.watches.keys()
        if new:
            self.live.caps.check(self.holder, connection_holds=len(self.watches),
                                 per_connection=self.live.per_connection, more=len(new))
        now = asyncio.get_running_loop().time()
        added = []
        for runtime, container, requested in targets:
            watch = Watch(runtime, container, interval, now, requested)
            old = self.watches.get(watch.key)
            if old is not None:
                old.interval, old.due = interval, now
                old.requested = requested or old.requested
                added.append(old)
                continue
            self.watches[watch.key] = watch
            self.skipped.discard(watch.key)
            self.live.take(self.holder, watch.key)
            added.append(watch)
        self._changed.set()
        return added

    def remove(self, watch: Watch) -> None:
        if self.watches.get(watch.key) is watch:
            del self.watches[watch.key]
            self.live.release(self.holder, watch.key)
            read = self._reads.pop(watch.key, None)
            if read is not None:
                read.cancel()
                self._cancelled.add(read)
                read.add_done_callback(self._cancelled.discard)

    def follow_all(self, interval: float) -> None:
        self.all_interval = interval
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow(), name=f"livestats-all-{self.client.address}")

    async def stop_following(self) -> None:
        self.all_interval = None
        self.skipped.clear()
        self._ended.clear()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None

    async def close(self) -> None:
        """Every task ends and every watch is given back."""
        await self.stop_following()
        self._ticker.cancel()
        reads = [*self._reads.values(), *self._cancelled]
        for task in reads:
            task.cancel()
        await asyncio.gather(self._ticker, *reads, return_exceptions=True)
        for watch in list(self.watches.values()):
            self.remove(watch)

    # ---------------------------------------------------------------------------------------- reading
    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wake: float | None = None
            for watch in list(self.watches.values()):
                if watch.due <= now:
                    watch.due += watch.interval
                    if watch.due <= now:  # behind (a long read): the next one from now
                        watch.due = now + watch.interval
                    self._read(watch)
                wake = watch.due if wake is None else min(wake, watch.due)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake):
                    await self._changed.wait()

    def _read(self, watch: Watch) -> None:
        """Deliver the shared reading when there is a fresh one, else read it in a task of the watch's own
        (at most one in flight: a read that takes longer than the interval makes the watch skip ticks)."""
        reading = self.live.readings.fresh(watch.key, SHARED_FOR)
        if reading is not None:
            self._deliver(watch, reading)
        elif watch.key not in self._reads:
            self._reads[watch.key] = asyncio.create_task(self._read_later(watch), name="livestats-read")

    async def _read_later(self, watch: Watch) -> None:
        try:
            _, reading = await self.live.readings.get(watch.key, lambda: self.live.read(watch), SHARED_FOR)
        finally:
            if self._reads.get(watch.key) is asyncio.current_task():
                del self._reads[watch.key]
        self._deliver(watch, reading)

    def _deliver(self, watch: Watch, reading: Reading) -> None:
        if self.watches.get(watch.key) is not watch:
            return  # unsubscribed meanwhile
        if reading.text is not None:
            watch.failing = None
            before = self.client.replaced
            if self.client.send_latest(watch.slot, reading.text):
                self.live.sent += 1
                self.live.replaced += self.client.replaced - before
            return
        error = reading.error or ApiError(500, *STATS_FAILED)
        reason = ENDS.get(error.code)
        if reason is not None:
            self.remove(watch)
            if self.all_interval is not None:
                self._ended[watch.key] = time.monotonic()
            self.client.send(_message("container.stats.ended", {**watch.describe(), "reason": reason}))
            self.live.ended += 1
        elif watch.failing != error.code:  # said once; the watch stays and is read again at its interval
            watch.failing = error.code
            send_error(self.client, error, watch)

    # ------------------------------------------------------------------------------------- "all" mode
    async def _follow(self) -> None:
        while self.all_interval is not None:
            await asyncio.sleep(LIST_REFRESH)
            try:
                at, found = await self.live.running_linked(LIST_REFRESH / 2)
            except ApiError:
                continue  # no runtime answers now: the watches say so themselves; look again later
            self.join(at, found)

    def join(self, at: float, found: list[tuple[Runtime, Container]]) -> None:
        """Add the running linked containers found (listed at ``at``) that are not watched yet."""
        if self.all_interval is None:
            return
        running = {(r.name, c.namespace, c.id) for r, c in found}
        self.skipped &= running
        self._ended = {k: t for k, t in self._ended.items() if t >= at}
        for runtime, container in found:
            key = (runtime.name, container.namespace, container.id)
            if key in self.watches or key in self.skipped or key in self._ended:
                continue  # ended after that listing was made: the listing does not know yet
            try:
                self.add([(runtime, container, "")], self.all_interval)
            except ApiError as exc:
                self.skipped.add(key)
                send_error(self.client, exc, Watch(runtime, container, 0, 0))


# --------------------------------------------------------------------------------------------- service
class LiveStats:
    """Every connection's watches, the shared readings and listings, and counters the metrics read."""

    def __init__(self, runtimes: Runtimes, apps: Apps, config: LiveStatsConfig) -> None:
        self.runtimes = runtimes
        self.apps = apps
        self.per_connection = config.max_per_connection
        self.caps = Caps(config.max_total, "containers' stats", "containers' stats")
        self.readings: Shared[WatchKey, Reading] = Shared()
        self.listings: Shared[tuple[str, str], list[Container] | ApiError] = Shared()
        # engine lookups of remote clients, one bucket per holder part (("address", key), ("subject", name))
        self.lookups = Pool("stats-lookups", RatePool(per_minute=LOOKUPS_PER_SECOND * 60, burst=LOOKUPS_PER_SUBSCRIBE))
        self.watchers: Counter[WatchKey] = Counter()  # connections watching each container
        self.sent = 0  # container.stats messages queued
        self.replaced = 0  # ... of which replaced by a newer one before the client took them
        self.ended = 0
        self._connections: dict[Client, Connection] = {}

    @property
    def active(self) -> int:
        """Containers watched, summed over connections."""
        return self.caps.active

    @property
    def tasks(self) -> int:
        """Tasks alive for live stats (tickers, reads, followers, shared calls in flight)."""
        return (sum(c.tasks for c in self._connections.values()) + self.readings.in_flight
                + self.listings.in_flight)

    def of(self, client: Client) -> Connection | None:
        return self._connections.get(client)

    def connection(self, client: Client, holder: Holder) -> Connection:
        conn = self._connections.get(client)
        if conn is None:
            if client.closed or client.ending:
                raise ApiError(410, "CLIENT_GONE", "The connection closed")
            conn = self._connections[client] = Connection(self, client, holder)
            client.on_close.append(lambda: self.end_client(client))
        return conn

    def take(self, holder: Holder, key: WatchKey) -> None:
        self.caps.take(holder)
        self.watchers[key] += 1

    def release(self, holder: Holder, key: WatchKey) -> None:
        self.caps.release(holder)
        self.watchers[key] -= 1
        if self.watchers[key] <= 0:
            del self.watchers[key]
            self.readings.forget(key)

    async def read(self, watch: Watch) -> Reading:
        """One container's stats through its runtime (shared by every watcher: see ``readings``)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                stats = await watch.runtime.stats(watch.ref)
            return Reading(text=orjson.dumps({"type": "container.stats", "data": stats}).decode())
        except (ApiError, EngineError, NotSupported) as exc:
            return Reading(error=as_api_error(exc, *STATS_FAILED))
        except TimeoutError:
            return Reading(error=ApiError(503, "RUNTIME_UNAVAILABLE",
                                          f"No stats within {READ_TIMEOUT:g} s", {"runtime": watch.runtime.name}))
        except Exception:  # a bug: said once per reading, the watch stays
            log.exception("live stats of %s failed", watch.container.id)
            return Reading(error=ApiError(500, *STATS_FAILED))

    async def listing(self, runtime: Runtime, namespace: str, max_age: float) -> tuple[float, list[Container]]:
        """The runtime's containers (of ``namespace``, or all it sees), one listing shared by callers. Keyed
        by what the runtime lists (``Runtime.list_scope``), not by the client's text: Docker ignores the
        namespace, and a made-up name per subscribe was a listing per message, each kept ``LIST_REFRESH``."""
        namespace = runtime.list_scope(namespace)

        async def call() -> list[Container] | ApiError:
            try:
                return await runtime.list_containers(namespace or None)
            except (ApiError, EngineError, NotSupported) as exc:
                return as_api_error(exc, "CONTAINER_LIST_FAILED", "Failed to list containers")

        self.listings.prune(LIST_REFRESH)  # keys are namespaces clients named: keep only recent ones
        at, value = await self.listings.get((runtime.name, namespace), call, max_age)
        if isinstance(value, ApiError):
            raise value
        return at, value

    async def running_linked(self, max_age: float) -> tuple[float, list[tuple[Runtime, Container]]]:
        """Every running container linked to an app in every enabled runtime (never nekzusd's own), and
        when the oldest listing was made. Runtimes that do not answer are left out; none: the error."""
        runtimes = self.runtimes.all()

        async def one(runtime: Runtime) -> tuple[float, list[Container]] | ApiError:
            try:
                return await self.listing(runtime, "", max_age)
            except ApiError as exc:
                return exc

        results = await gather_all(one(r) for r in runtimes)
        found: list[tuple[Runtime, Container]] = []
        at = time.monotonic()
        answered = [(r, res) for r, res in zip(runtimes, results, strict=True) if not isinstance(res, ApiError)]
        if not answered:
            error = next((res for res in results if isinstance(res, ApiError)), None)
            raise error or ApiError(503, "RUNTIME_UNAVAILABLE", "No container runtime answered")
        for runtime, (listed_at, containers) in answered:
            at = min(at, listed_at)
            found += [(runtime, c) for c in self.apps.linked(containers) if c.running and not runtime.is_self(c)]
        found.sort(key=lambda rc: (rc[1].namespace, rc[1].name, rc[0].name))
        return at, found

    def may_look_up(self, holder: Holder) -> bool:
        """Spend one engine lookup of a remote client's address and subject (local clients: always)."""
        return all(self.lookups.take(part).allowed for part in holder)

    async def resolve(self, runtime: Runtime, namespace: str, ids: list[str], holder: Holder = LOCAL,
                      ) -> tuple[list[tuple[Runtime, Container, str]], list[tuple[str, ApiError]]]:
        """The running containers ``ids`` name, and an error for each id that names none. Ids that are a
        listed container's id or name cost nothing more; others (a full id, a prefix) are looked up
        through the runtime, a few at a time, at most ``LOOKUPS_PER_SUBSCRIBE`` of them, and for a remote
        ``holder`` within its ``LOOKUPS_PER_SECOND``."""
        _, listed = await self.listing(runtime, namespace, RESOLVE_AGE)
        by_name = {c.name: c for c in listed} | {c.id: c for c in listed}

        lookups = 0

        async def one(container_id: str) -> Container | ApiError:
            nonlocal lookups
            try:
                ref = runtime.validate_ref(Ref(container_id, namespace))
                container = by_name.get(ref.id)
                if container is None:
                    lookups += 1
                    if lookups > LOOKUPS_PER_SUBSCRIBE:
                        return ApiError(429, "TOO_MANY_LOOKUPS",
                                        f"At most {LOOKUPS_PER_SUBSCRIBE} ids of one subscribe may be other than a "
                                        "container's short id or name; send this one again in another subscribe",
                                        {"limit": LOOKUPS_PER_SUBSCRIBE})
                    if not self.may_look_up(holder):
                        return ApiError(429, "TOO_MANY_LOOKUPS",
                                        f"At most {LOOKUPS_PER_SECOND} ids a second, in all of a client's "
                                        "connections, may be other than a container's short id or name; send "
                                        "this one again in a second", {"limit": LOOKUPS_PER_SECOND, "retryAfter": 1})
                    async with asyncio.timeout(READ_TIMEOUT):
                        container = await runtime.get(ref)
                if container.state not in ("running", "paused"):
                    return ContainerNotRunning(container.id, state=container.state)
                return container
            except (ApiError, EngineError, NotSupported) as exc:
                return as_api_error(exc, *STATS_FAILED)
            except TimeoutError:
                return ApiError(503, "RUNTIME_UNAVAILABLE", "The runtime did not answer", {"runtime": runtime.name})

        results = await gather_all((one(i) for i in ids), limit=LOOKUPS_AT_ONCE)
        targets = [(runtime, r, i) for i, r in zip(ids, results, strict=True) if isinstance(r, Container)]
        errors = [(i, r) for i, r in zip(ids, results, strict=True) if isinstance(r, ApiError)]
        return targets, errors

    async def end_client(self, client: Client) -> None:
        conn = self._connections.pop(client, None)
        if conn is not None:
            await conn.close()
        self.readings.prune(SHARED_FOR)
        self.listings.prune(LIST_REFRESH)

    async def close(self) -> None:
        """At shutdown, after the hub said goodbye: nothing may still read from a runtime."""
        await asyncio.gather(*(self.end_client(client) for client in list(self._connections)))
        await self.readings.close()
        await self.listings.close()


# --------------------------------------------------------------------------------------------- messages
async def handle_subscribe(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    live = request.app[LIVE_STATS]
    holder = holder_of(request, client.subject)
    try:
        interval = parse_interval(data)
        ids = parse_ids(data, live.per_connection)
        errors: list[tuple[str, ApiError]] = []
        if ids is None:
            _, found = await live.running_linked(RESOLVE_AGE)
            targets = [(runtime, container, "") for runtime, container in found]
        else:
            namespace = _string_field(data, "namespace")
            runtime = request.app[RUNTIMES].pick(_string_field(data, "runtime")
                                                 or ("kubernetes" if namespace else None))
            targets, errors = await live.resolve(runtime, namespace, ids, holder)
        for container_id, error in errors:
            send_error(client, error, container_id=container_id)
        if not targets and ids is not None:
            return
        conn = live.connection(client, holder)
        watches = conn.add(targets, interval)
        if ids is None:
            conn.follow_all(interval)
    except ApiError as exc:
        return send_error(client, exc)
    client.send(_message("container.stats.subscribed", {
        "containers": [{**w.describe(), **({"requested": w.requested} if w.requested else {})} for w in watches],
        "interval": interval, "all": ids is None}))


async def handle_unsubscribe(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    """End the named watches of this connection (matched by id, name or the id as subscribed), or all
    of them, "all running" included, when no ids are given."""
    live = request.app[LIVE_STATS]
    conn = live.of(client)
    try:
        ids = parse_ids(data, live.per_connection)
        namespace = _string_field(data, "namespace")
        runtime_name = _string_field(data, "runtime")
    except ApiError as exc:
        return send_error(client, exc)
    watches = list(conn.watches.values()) if conn is not None else []
    if ids is None:
        if conn is None or (not watches and conn.all_interval is None):
            return send_error(client, ApiError(409, "NOT_SUBSCRIBED", "No stats subscription on this connection"))
        await conn.stop_following()
        chosen = watches
    else:
        chosen, missing = [], []
        for container_id in ids:
            matching = [w for w in watches if container_id in (w.container.id, w.container.name, w.requested)
                        and (not namespace or w.container.namespace == namespace)
                        and (not runtime_name or w.runtime.name == runtime_name)]
            chosen += matching
            if not matching:
                missing.append(container_id)
        for container_id in missing:
            send_error(client, ApiError(409, "NOT_SUBSCRIBED",
                                        f"No stats subscription for {container_id[:200]} on this connection"),
                       container_id=container_id)
        if not chosen:
            return
    assert conn is not None  # noqa: S101 -- chosen is empty without a connection
    for watch in chosen:
        conn.remove(watch)
        if conn.all_interval is not None:
            conn.skipped.add(watch.key)
    unique = {w.key: w for w in chosen}.values()
    client.send(_message("container.stats.unsubscribed", {
        "containers": [w.describe() for w in unique], "all": conn.all_interval is not None}))


MESSAGE_TYPES: dict[str, ws.MessageHandler] = {
    "container.stats.subscribe": handle_subscribe,
    "container.stats.unsubscribe": handle_unsubscribe,
}
