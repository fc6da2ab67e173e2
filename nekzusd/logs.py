"""Container log streaming over the WebSocket (``container.logs.*``, docs/api.md).

A client subscribes per container; each subscription is one task reading the runtime's log lines and
queueing pre-encoded messages on the client (``hub.Client``), which drops and counts what a slow client
cannot take. Every subscription that sent ``started`` ends with exactly one ``ended``.

Turning engines' bytes into lines is ``runtimes.logparse``'s job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from . import ws
from .errors import ApiError, EngineError, NotSupported, as_api_error
from .hub import Client
from .keys import LOG_STREAMS, RUNTIMES
from .runtimes import LogLine, Ref, Runtime
from .runtimes.logparse import stamp_key
from .subscriptions import LOCAL, Caps, Holder, holder_of

log = logging.getLogger(__name__)

TAIL_DEFAULT = 100
TAIL_MAX = 1000
BATCH_WINDOW = 0.005  # seconds during which lines are grouped in batch mode
BATCH_MAX_LINES = 1000
# Each subscription holds an engine stream open: bounded per connection and for the whole daemon. The
# daemon-wide cap is lower when the open files limit leaves no room for 1,024 (descriptors.Budget).
MAX_SUBSCRIPTIONS_PER_CLIENT = 32
MAX_SUBSCRIPTIONS = 1024
# Remote clients share the daemon-wide cap (per address, per token subject, a reserve for local clients):
# subscriptions.Caps, which live stats count with too.
WAIT_FOR_CLIENT = 1.0  # how long a stream waits for a client that is behind before dropping its lines
LOGS_FAILED = ("CONTAINER_LOGS_FAILED", "Failed to read container logs")  # how an engine failure is answered

_encode = json.encoder.encode_basestring  # C version: a JSON string literal


@dataclass(frozen=True)
class Options:
    """What a reader asked of one log stream; ``since``/``until`` in Unix seconds (inclusive)."""

    tail: int = TAIL_DEFAULT
    follow: bool = True
    timestamps: bool = False
    batch: bool = False
    since: float | None = None
    until: float | None = None
    container: str = ""  # one container of a Kubernetes pod; "": the pod's only one


CONTAINER_NAME_MAX = 63  # a Kubernetes container name is a DNS label
HTTP_DEFAULTS = Options(follow=False)  # GET …/logs reads and ends, like `docker logs`, unless asked to follow
LATEST_TIME = 253402300799  # 9999-12-31T23:59:59Z: a later time is a typo, not a log window
_UNIX_TIME = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_AGO = re.compile(r"([0-9]{1,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_options(values: Mapping[str, Any], *, query: bool = False) -> Options:
    """The options of a WebSocket subscribe message (JSON values, defaults of ``Options``) or of the HTTP
    route's query string (text, defaults of ``HTTP_DEFAULTS``): one set of rules for both readers.

    ``tail``: lines from the end, 0..1000 (more is cut to 1000; anything else ``INVALID_TAIL``). Flags:
    JSON booleans, or in a query true/false (also 1/0, yes/no). ``since``/``until``: Unix seconds, an
    RFC 3339 time, or a duration back from now (``90s``, ``10m``, ``2h``, ``1d``). ``container``: a name of
    at most 63 characters (which container of a pod; the runtime checks it). A wrong flag, time or name is
    ``INVALID_MESSAGE`` in a message and ``INVALID_PARAMETER`` in a query, with the name in ``details``."""
    defaults = HTTP_DEFAULTS if query else Options()

    def invalid(name: str, message: str) -> ApiError:
        value = str(values.get(name))[:40]
        if query:
            return ApiError(400, "INVALID_PARAMETER", message, {"parameter": name, "value": value})
        return ApiError(400, "INVALID_MESSAGE", message, {name: value})

    tail = values.get("tail", defaults.tail)
    if query and isinstance(tail, str) and tail.isascii() and tail.isdigit():
        tail = TAIL_MAX + 1 if len(tail) > 6 else int(tail)  # int() refuses over 4,300 digits
    if isinstance(tail, float) and tail.is_integer():
        tail = int(tail)
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
        raise ApiError(400, "INVALID_TAIL", f"tail must be a number of lines from 0 to {TAIL_MAX}",
                       {"tail": str(tail)[:40]})
    flags = {}
    for name in ("follow", "timestamps") if query else ("follow", "timestamps", "batch"):
        value = values.get(name, getattr(defaults, name))
        if query and isinstance(value, str):
            value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(
                value.lower(), value)
        if not isinstance(value, bool):
            raise invalid(name, f"{name} must be true or false")
        flags[name] = value
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        value = values.get(name)
        times[name] = None if value is None else _time_value(value, time.time(), query)
        if value is not None and times[name] is None:
            raise invalid(name, f"{name} must be Unix seconds, an RFC 3339 time (2024-05-01T12:00:00Z) or "
                                "a duration back from now (90s, 10m, 2h, 1d)")
    since, until = times["since"], times["until"]
    if since is not None and until is not None and until < since:
        raise invalid("until", "until must not be before since")
    container = values.get("container") or ""
    if not isinstance(container, str) or len(container) > CONTAINER_NAME_MAX:
        raise invalid("container", f"container must be a container name of at most {CONTAINER_NAME_MAX} characters")
    return Options(tail=min(tail, TAIL_MAX), since=since, until=until, container=container, **flags)


def _time_value(value: Any, now: float, text_only: bool) -> float | None:
    """A time given as Unix seconds (a JSON number, or digits), RFC 3339 or a duration back from ``now``;
    None when it is none of these or out of range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and not text_only:
        seconds: float | None = float(value)
    elif not isinstance(value, str) or len(value) > 40:
        return None
    elif _UNIX_TIME.fullmatch(value):
        seconds = float(value)
    elif (ago := _AGO.fullmatch(value)) is not None:
        seconds = now - int(ago.group(1)) * _UNIT_SECONDS[ago.group(2)]
    else:
        key = stamp_key(value)
        seconds = None if key is None else key[0] + key[1] / 1e9
    if seconds is None or not 0 <= seconds <= LATEST_TIME:  # NaN fails too
        return None
    return seconds


def line_source(runtime: Runtime, ref: Ref, options: Options,
                opened: Callable[[], None] | None = None) -> AsyncGenerator[LogLine, None]:
    """The one way a reader (a WebSocket subscription, an HTTP stream) gets a container's log lines: the
    runtime's own stream, parsed and joined by ``runtimes.logparse``, with the reader's options. ``opened``
    is called once the engine's stream is open (before any line)."""
    return runtime.logs(ref, tail=options.tail, follow=options.follow, timestamps=options.timestamps,
                        since=options.since, until=options.until, container=options.container, opened=opened)


def _string_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name) or ""
    if not isinstance(value, str):
        raise ApiError(400, "INVALID_MESSAGE", f"{name} must be a string")
    return value


class LineEncoder:
    """Log messages as JSON text, built from pieces fixed per subscription: one ``json`` call per line."""

    def __init__(self, container_id: str, container: str = "") -> None:
        cid = _encode(container_id) + (f',"container":{_encode(container)}' if container else "")
        self._heads = {stream: f'{{"type":"container.logs","data":{{"containerId":{cid},"stream":"{stream}",'
                               f'"message":' for stream in ("stdout", "stderr")}
        self._batch_head = f'{{"type":"container.logs.batch","data":{{"containerId":{cid},"lines":['

    def line(self, line: LogLine, now: int) -> str:
        stamp = now if line.timestamp is None else int(line.timestamp)
        return f'{self._heads[line.stream]}{_encode(line.message)},"timestamp":{stamp}}}}}'

    def batch(self, lines: list[LogLine], now: int) -> str:
        return f"{self._batch_head}{','.join(line_json(line, now) for line in lines)}]}}}}"


def line_json(line: LogLine, now: int) -> str:
    """One line as ``{stream, message, timestamp}`` (the line's own time, else ``now``, in whole seconds):
    an item of a WebSocket batch, and a line of the HTTP route's NDJSON."""
    stamp = now if line.timestamp is None else int(line.timestamp)
    return f'{{"stream":"{line.stream}","message":{_encode(line.message)},"timestamp":{stamp}}}'


def _event(type_: str, container_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "data": {"containerId": container_id, **fields, "timestamp": int(time.time())}}


def send_error(client: Client, container_id: str, code: str, message: str, **fields: Any) -> None:
    client.send(_event("container.logs.error", container_id, **fields, error=code, message=message))


class OwnStream(Protocol):
    """A log stream that is a connection of its own (``httplogs.HttpLogStream``), as the caps see it."""

    holder: Holder

    async def stop(self) -> None:
        """End it now (shutdown): the stream is cut, its reading stops."""


SubscriptionKey = tuple[str, str, str]  # runtime name, namespace, the container's own id (Container.id)


class Subscription:
    """One client's stream of one container's logs: a task from ``started`` to its one ``ended``.
    Its messages carry the container id as the client wrote it (a name, a short or a full id): that is
    what the client matches them on."""

    def __init__(self, streams: LogStreams, client: Client, key: SubscriptionKey, runtime: Runtime, ref: Ref,
                 options: Options, holder: Holder = LOCAL) -> None:
        self.streams = streams
        self.client = client
        self.key = key
        self.holder = holder
        self.container_id = ref.id
        self.runtime = runtime
        self.ref = ref
        self.options = options
        self.ended = False
        # a stream of one container of a pod says which in every message (one connection may follow several)
        self._which = {"container": options.container} if options.container else {}
        self._encoder = LineEncoder(self.container_id, options.container)
        self._batch: list[LogLine] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self._announced = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"logs-{self.container_id}")

    def _announce(self) -> None:
        """``container.logs.started``, once: when the engine's stream is open, so that a client that writes
        after it (``tail: 0``) loses nothing; sooner only if the stream ends or fails before opening (the
        messages then come in the same order: started, then error or ended)."""
        if not self._announced:
            self._announced = True
            self.client.send(_event("container.logs.started", self.container_id, **self._which))

    async def stop(self) -> None:
        """End at the client's wish (unsubscribe, replace, disconnect, shutdown)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self._end("stopped")

    async def _run(self) -> None:
        options = self.options
        try:
            lines = line_source(self.runtime, self.ref, options, self._announce)
            async with aclosing(lines):
                deliver = self._collect if options.batch else self._deliver
                client = self.client
                dropping = False  # the client did not catch up in time: drop without waiting until it has
                async for line in lines:
                    if not client.log_full:
                        dropping = False
                    elif not dropping:
                        dropping = not await client.wait_log_room(WAIT_FOR_CLIENT)
                        if client.closed:
                            return  # its close callback ends this stream
                    deliver(line)
        except asyncio.CancelledError:
            self._end("stopped")  # here, not only in stop(): whoever cancelled may be cancelled itself
            raise
        except (ApiError, EngineError, NotSupported) as exc:
            error = as_api_error(exc, *LOGS_FAILED)
            self._fail(error.code, error.message)
        except Exception:
            log.exception("log stream of %s failed", self.container_id)
            self._fail("CONTAINER_LOGS_FAILED", "Failed to read container logs")
        else:
            self._end("container_stopped")

    def _deliver(self, line: LogLine) -> None:
        client, streams = self.client, self.streams
        if client.log_full:  # not worth encoding
            client.drop(self.container_id)
            streams.lines_dropped += 1
        elif client.send_log(self.container_id, self._encoder.line(line, int(time.time()))):
            streams.lines_sent += 1
        else:
            streams.lines_dropped += 1

    def _collect(self, line: LogLine) -> None:
        self._batch.append(line)
        if len(self._batch) >= BATCH_MAX_LINES:
            self._flush_batch()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(BATCH_WINDOW, self._flush_batch)

    def _flush_batch(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        lines, self._batch = self._batch, []
        if not lines:
            return
        client, streams = self.client, self.streams
        if client.log_full:
            client.drop(self.container_id, len(lines))
            streams.lines_dropped += len(lines)
        elif client.send_log(self.container_id, self._encoder.batch(lines, int(time.time())), len(lines)):
            streams.lines_sent += len(lines)
        else:
            streams.lines_dropped += len(lines)

    def _fail(self, code: str, message: str) -> None:
        self._announce()
        self._flush_batch()
        send_error(self.client, self.container_id, code, message, **self._which)
        self._end("error")

    def _end(self, reason: str) -> None:
        """Send the one ``ended`` (after the lines already read and any drop count) and forget the stream."""
        if self.ended:
            return
        self._announce()
        self.ended = True
        self._flush_batch()
        self.client.report_drops(self.container_id)
        self.client.send(_event("container.logs.ended", self.container_id, **self._which, reason=reason))
        self.streams.forget(self)


class LogStreams:
    """Every live subscription, by client, and counters the metrics read (lines sent / dropped, active).

    ``max_subscriptions`` is the daemon-wide cap; ``local_reserve`` of it only local clients may use, and
    each remote address or token subject holds at most ``remote_share`` (``subscriptions.Caps``)."""

    def __init__(self, max_subscriptions: int = MAX_SUBSCRIPTIONS) -> None:
        self.caps = Caps(max_subscriptions, "log streams", "log subscriptions")
        self.lines_sent = 0
        self.lines_dropped = 0
        self._by_client: dict[Client, dict[SubscriptionKey, Subscription]] = {}
        # Streams that are a connection of their own (HTTP GET …/logs): one per connection by nature.
        self.own: set[OwnStream] = set()

    @property
    def max_subscriptions(self) -> int:
        return self.caps.total

    @property
    def local_reserve(self) -> int:
        return self.caps.local_reserve

    @property
    def remote_share(self) -> int:
        return self.caps.remote_share

    @property
    def active(self) -> int:
        return sum(len(subs) for subs in self._by_client.values()) + len(self.own)

    def of(self, client: Client) -> dict[SubscriptionKey, Subscription]:
        return self._by_client.get(client, {})

    async def subscribe(self, client: Client, key: SubscriptionKey, runtime: Runtime, ref: Ref,
                        options: Options, holder: Holder = LOCAL) -> Subscription:
        """Start a stream; one already running for the same container (however it was named) ends first
        (``ended: stopped``). ``holder``: the remote address and subject it counts against (see
        ``holder_of``)."""
        subs = self._by_client.get(client)
        if subs is None:
            subs = self._by_client[client] = {}
            client.on_close.append(lambda: self.end_client(client))
        old = subs.get(key)
        if old is None:
            self.caps.check(holder, connection_holds=len(subs), per_connection=MAX_SUBSCRIPTIONS_PER_CLIENT)
        else:
            await old.stop()
            self.caps.check_share(holder)  # another connection of the holder may have taken the room meanwhile
        if client.closed:
            raise ApiError(410, "CLIENT_GONE", "The connection closed")
        sub = subs[key] = Subscription(self, client, key, runtime, ref, options, holder)
        self.caps.take(holder)
        sub.start()
        return sub

    def open_own(self, stream: OwnStream) -> None:
        """Count a stream that is a connection of its own against the same caps as subscriptions (the
        daemon-wide cap, the holder's share, the local reserve), or refuse it with TOO_MANY_SUBSCRIPTIONS."""
        self.caps.check(stream.holder, connection_holds=0, per_connection=1)
        self.own.add(stream)
        self.caps.take(stream.holder)

    def close_own(self, stream: OwnStream) -> None:
        if stream in self.own:
            self.own.discard(stream)
            self.caps.release(stream.holder)

    def held(self, part: tuple[str, Hashable]) -> int:
        """Streams held by one holder part: ("address", key), ("subject", name) or ("remote", None)."""
        return self.caps.held(part)

    def forget(self, sub: Subscription) -> None:
        subs = self._by_client.get(sub.client)
        if subs is not None and subs.get(sub.key) is sub:
            del subs[sub.key]
            self.caps.release(sub.holder)

    async def end_client(self, client: Client) -> None:
        """Disconnect or shutdown: every stream of the client ends with ``stopped``."""
        await asyncio.gather(*(sub.stop() for sub in list(self.of(client).values())))
        self._by_client.pop(client, None)

    async def end_own(self) -> None:
        """At shutdown, before aiohttp waits for its handlers: every stream of its own connection ends."""
        await asyncio.gather(*(stream.stop() for stream in list(self.own)))

    async def close(self) -> None:
        """At shutdown, after the hub said goodbye: nothing may still read from a runtime."""
        await asyncio.gather(*(self.end_client(client) for client in list(self._by_client)), self.end_own())


def _target(request: web.Request, data: dict[str, Any]) -> tuple[Runtime, Ref]:
    container_id = data.get("containerId")
    if not isinstance(container_id, str) or not container_id:
        raise ApiError(400, "INVALID_CONTAINER_ID", "Container ID is required")
    namespace = _string_field(data, "namespace")
    runtime_name = _string_field(data, "runtime") or ("kubernetes" if namespace else None)
    runtime = request.app[RUNTIMES].pick(runtime_name)
    return runtime, runtime.validate_ref(Ref(container_id, namespace))


async def stream_key(runtime: Runtime, ref: Ref, container: str = "") -> SubscriptionKey:
    """The container's own id, so that a name and an id (short or full) of one container are one stream;
    a container that does not exist gets CONTAINER_NOT_FOUND. Two containers of one pod are two streams
    (``pod/container``; a container name has no "/")."""
    own_id = (await runtime.get(ref)).id
    return runtime.name, ref.namespace, f"{own_id}/{container}" if container else own_id


def _reply_id(data: dict[str, Any]) -> str:
    value = data.get("containerId")
    return value[:200] if isinstance(value, str) else ""


async def handle_subscribe(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    try:
        runtime, ref = _target(request, data)
        options = parse_options(data)
        key = await stream_key(runtime, ref, options.container)
        await request.app[LOG_STREAMS].subscribe(client, key, runtime, ref, options, holder_of(request, client.subject))
    except (ApiError, EngineError, NotSupported) as exc:
        error = as_api_error(exc, *LOGS_FAILED)
        send_error(client, _reply_id(data), error.code, error.message)


async def handle_unsubscribe(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    """End the named container's stream(s) on this connection (any runtime, unless one is named; every
    container of a pod, unless ``container`` names one)."""
    container_id = data.get("containerId")
    if not isinstance(container_id, str) or not container_id:
        return send_error(client, "", "INVALID_CONTAINER_ID", "Container ID is required")
    try:
        namespace = _string_field(data, "namespace")
        runtime_name = _string_field(data, "runtime")
        container = _string_field(data, "container")
    except ApiError as exc:
        return send_error(client, container_id[:200], exc.code, exc.message)
    subs = request.app[LOG_STREAMS].of(client)
    matching = [sub for (rt, ns, cid), sub in subs.items()
                if container_id in (cid, sub.container_id) and (not namespace or ns == namespace)
                and (not runtime_name or rt == runtime_name)
                and (not container or sub.options.container == container)]
    if not matching and subs:
        matching = await _named_otherwise(request, data, subs, container)
    if not matching:
        return send_error(client, container_id[:200], "NOT_SUBSCRIBED",
                          f"No log subscription for {container_id[:200]} on this connection")
    await asyncio.gather(*(sub.stop() for sub in matching))


async def _named_otherwise(request: web.Request, data: dict[str, Any],
                           subs: dict[SubscriptionKey, Subscription], container: str) -> list[Subscription]:
    """The stream of a container that the subscribe named otherwise (its id, and now its name, or the
    reverse): found through the engine."""
    try:
        sub = subs.get(await stream_key(*_target(request, data), container))
    except (ApiError, EngineError):
        return []
    return [] if sub is None else [sub]


MESSAGE_TYPES: dict[str, ws.MessageHandler] = {
    "container.logs.subscribe": handle_subscribe,
    "container.logs.unsubscribe": handle_unsubscribe,
}
