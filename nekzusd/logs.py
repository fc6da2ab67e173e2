"""Container log streaming over the WebSocket (``container.logs.*``, DECISIONS §7 and §11).

A client subscribes per container; each subscription is one task reading the runtime's log lines and
queueing pre-encoded messages on the client (``hub.Client``), which drops and counts what a slow client
cannot take. Every subscription that sent ``started`` ends with exactly one ``ended``.

``LogParser`` turns the bytes of Docker's log stream (multiplexed, or raw for TTY containers) into lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import time
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, AnyStr, Callable

from aiohttp import web

from . import ws
from .errors import ApiError, EngineError
from .hub import Client
from .keys import LOG_STREAMS, RUNTIMES
from .runtimes import LogLine, Ref, Runtime

log = logging.getLogger(__name__)

READ_SIZE = 32 * 1024  # bytes asked of the engine per read
MAX_FRAME = 1 << 20  # a multiplexed frame announcing more is skipped (memory abuse)
MAX_LINE = 2 << 20  # a longer line goes out in pieces of this size, so that an endless line stays bounded
TAIL_DEFAULT = 100
TAIL_MAX = 1000
BATCH_WINDOW = 0.005  # seconds during which lines are grouped in batch mode
BATCH_MAX_LINES = 1000
# Each subscription holds an engine stream open: bounded per connection and for the whole daemon.
MAX_SUBSCRIPTIONS_PER_CLIENT = 32
MAX_SUBSCRIPTIONS = 1024
WAIT_FOR_CLIENT = 1.0  # how long a stream waits for a client that is behind before dropping its lines

_HEADER = struct.Struct(">BxxxL")
_STREAM_NAMES = {0: "stdout", 1: "stdout", 2: "stderr"}  # 0 is stdin, which logs never carry
_encode = json.encoder.encode_basestring  # type: ignore[attr-defined]  # C version: a JSON string literal


class LogParser:
    """Bytes of a Docker log stream in, complete ``(stream, line)`` pairs out.

    Multiplexed streams are 8-byte headers (stream, size) each followed by a payload; a line may span
    frames and a frame may hold several lines, so stdout and stderr each keep their unfinished line.
    Lines end at ``\\n`` (a ``\\r`` before it is removed); bytes that are not UTF-8 become U+FFFD.

    ``stamped``: the engine was asked for timestamps, so every log entry starts with ``<stamp> ``. dockerd
    stores a long line (> 16 KiB) as several entries, each stamped; the joined line keeps only the first
    stamp. Multiplexed: a frame that continues a line drops its stamp. Raw (TTY) text shows no entry
    boundaries, so there a joined line drops the repeats of its own stamp (dockerd gives all the pieces of
    a line the first piece's). Every line, and every piece of a line cut at MAX_LINE, starts with the stamp.
    """

    def __init__(self, multiplexed: bool, stamped: bool = False) -> None:
        self.multiplexed = multiplexed
        self.stamped = stamped
        self.skipped_frames = 0
        self._head = b""  # an incomplete frame header
        self._left = 0  # payload bytes of the current frame not seen yet
        self._stream: str | None = None  # the current frame's stream; None while skipping an oversized frame
        self._unstamp = False  # the current frame continues a line: its stamp is dropped first
        self._repeats = stamped and not multiplexed  # joined raw lines may repeat their stamp
        self._partial = {"stdout": bytearray(), "stderr": bytearray()}

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self.multiplexed:
            self._payload("stdout", data, out)
            return out
        if self._head:
            data, self._head = self._head + data, b""
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                if self._unstamp:  # up to and with the first space (the stamp may span reads)
                    space = data.find(b" ", pos, pos + take)
                    self._unstamp = space < 0
                    take = take if space < 0 else space + 1 - pos
                elif self._stream is not None:
                    self._payload(self._stream, data[pos:pos + take], out)
                pos += take
                self._left -= take
                continue
            if end - pos < _HEADER.size:
                self._head = data[pos:]
                break
            kind, size = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            self._left = size
            if size > MAX_FRAME:
                self._stream = None
                self._unstamp = False
                self.skipped_frames += 1
            else:
                self._stream = _STREAM_NAMES.get(kind, "stdout")
                self._unstamp = self.stamped and bool(self._partial[self._stream])
        return out

    def flush(self) -> list[tuple[str, str]]:
        """The unfinished lines at the end of the stream."""
        out: list[tuple[str, str]] = []
        for stream, partial in self._partial.items():
            if partial:
                self._line(stream, bytes(partial), out)
                partial.clear()
        return out

    def _payload(self, stream: str, piece: bytes, out: list[tuple[str, str]]) -> None:
        partial = self._partial[stream]
        cut = piece.rfind(b"\n")
        if cut < 0:
            partial += piece
            if len(partial) > MAX_LINE:
                self._bound(stream, partial, out)
            return
        if partial:
            partial += piece[:cut]
            block = bytes(partial)
            partial.clear()
        else:
            block = piece[:cut]
        if len(block) > MAX_LINE:
            for raw in block.split(b"\n"):
                self._line(stream, raw, out)
        else:
            text = block.decode("utf-8", "replace")
            lines = text.split("\n")
            if "\r" in text:
                lines = [line.removesuffix("\r") for line in lines]
            if self._repeats:
                lines = [_one_stamp(line, " ") for line in lines]
            out.extend((stream, line) for line in lines)
        if cut + 1 < len(piece):
            partial += piece[cut + 1:]

    def _bound(self, stream: str, partial: bytearray, out: list[tuple[str, str]]) -> None:
        """Hand out an unfinished line's text in MAX_LINE pieces, so that an endless line stays bounded."""
        if self._repeats:
            partial[:] = _one_stamp(bytes(partial), b" ")
        stamp = partial[:partial.find(b" ") + 1] if self.stamped else b""
        while len(partial) > MAX_LINE + len(stamp):
            out.append((stream, _text(partial[:MAX_LINE + len(stamp)])))
            partial[:MAX_LINE + len(stamp)] = stamp

    def _line(self, stream: str, raw: bytes, out: list[tuple[str, str]]) -> None:
        """One whole line of any length: out as one line, or as MAX_LINE pieces each with the stamp."""
        text = _text(raw)
        stamp = ""
        if self.stamped:
            if self._repeats:
                text = _one_stamp(text, " ")
            stamp = text[:text.find(" ") + 1]
        if len(text) <= MAX_LINE + len(stamp):
            out.append((stream, text))
            return
        for start in range(len(stamp), len(text), MAX_LINE):
            out.append((stream, stamp + text[start:start + MAX_LINE]))


def _text(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "replace").removesuffix("\r")


def _one_stamp(line: AnyStr, space: AnyStr) -> AnyStr:
    """A line with the repeats of its leading ``<stamp> `` removed."""
    stamp = line[:line.find(space) + 1]
    if stamp and line.find(stamp, len(stamp)) >= 0:
        return stamp + line[len(stamp):].replace(stamp, space[:0])
    return line


@lru_cache(maxsize=64)
def _second_of(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp + "+00:00").timestamp()
    except ValueError:
        return None


def line_time(message: str) -> float | None:
    """The time of a line that starts with the engine's RFC 3339 UTC timestamp (``timestamps: true``),
    to the second; None when it does not."""
    return _second_of(message[:19]) if len(message) > 20 and message[19] in ".Z " else None


_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def stamp_key(stamp: str) -> tuple[int, int] | None:
    """An engine's RFC 3339 timestamp (any fraction, ``Z`` or an offset) as (Unix seconds, nanoseconds), so
    that stamps of any width compare in time order; None when it is not one."""
    match = _STAMP.fullmatch(stamp)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    seconds = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    return int(seconds), int((fraction or "").ljust(9, "0"))


def _stamp_of(line: str) -> str:
    return line[:line.find(" ")]


def stamped_lines(pairs: list[tuple[str, str]], timestamps: bool) -> list[LogLine]:
    """Lines of a stamped stream as LogLines: the stamp kept in the text when the client asked for it."""
    if timestamps:
        return [LogLine(stream, line, line_time(line)) for stream, line in pairs]
    return [LogLine(stream, line[line.find(" ") + 1:]) for stream, line in pairs]


class LogCursor:
    """How far a stream got in a container's log, told by the engine's timestamps: the stamp of the last
    line handed out and how many lines in a row carried it (lines can share a stamp: Podman's are whole
    seconds).

    dockerd can end a follow stream before the container's last line is stored, so after the stream a
    catch-up read from ``since`` gives what it missed; ``fresh_filter`` skips what was handed out already.
    That count places the stream exactly only when the whole run of its stamp was seen: when a line with
    another stamp came before it, or the stream began at the log's start (``from_start``). Otherwise the
    catch-up gives only lines with a later stamp: never a line twice.
    """

    def __init__(self, from_start: bool = False) -> None:
        self.stamp: str | None = None
        self.same = 0
        self.whole_run = from_start

    def passed(self, pairs: list[tuple[str, str]]) -> None:
        """These stamped lines (in log order) were handed out."""
        if not pairs:
            return
        last = _stamp_of(pairs[-1][1])
        run = 0
        for _, line in reversed(pairs):
            if _stamp_of(line) != last:
                self.whole_run = True
                break
            run += 1
        else:
            if last == self.stamp:
                run += self.same
            elif self.stamp is not None:
                self.whole_run = True
        self.stamp, self.same = last, run

    @property
    def since(self) -> str | None:
        """The engine's ``since`` for a catch-up read (Unix seconds with nanoseconds); None: from the start."""
        key = stamp_key(self.stamp) if self.stamp else None
        return None if key is None else f"{key[0]}.{key[1]:09d}"

    def fresh_filter(self) -> Callable[[tuple[str, str]], bool]:
        """For the stamped lines of a catch-up read, in log order: True from the first not handed out on."""
        key = stamp_key(self.stamp) if self.stamp else None
        skip = self.same if self.whole_run else None  # None: every line with the cursor's stamp
        found = key is None

        def fresh(pair: tuple[str, str]) -> bool:
            nonlocal skip, found
            if not found:
                line_key = stamp_key(_stamp_of(pair[1]))
                if line_key is None or line_key < key:
                    return False
                if line_key == key and (skip is None or skip):
                    skip = None if skip is None else skip - 1
                    return False
                found = True
            return True
        return fresh


@dataclass(frozen=True)
class Options:
    tail: int = TAIL_DEFAULT
    follow: bool = True
    timestamps: bool = False
    batch: bool = False


def parse_options(data: dict[str, Any]) -> Options:
    """The subscribe message's options, with the defaults of the reference; tail above 1000 is cut."""
    tail = data.get("tail", TAIL_DEFAULT)
    if isinstance(tail, float) and tail.is_integer():
        tail = int(tail)
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
        raise ApiError(400, "INVALID_TAIL", f"tail must be a number of lines from 0 to {TAIL_MAX}",
                       {"tail": str(tail)[:40]})
    flags = {}
    for name in ("follow", "timestamps", "batch"):
        value = data.get(name, getattr(Options, name))
        if not isinstance(value, bool):
            raise ApiError(400, "INVALID_MESSAGE", f"{name} must be true or false", {name: str(value)[:40]})
        flags[name] = value
    return Options(tail=min(tail, TAIL_MAX), **flags)


def _string_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name) or ""
    if not isinstance(value, str):
        raise ApiError(400, "INVALID_MESSAGE", f"{name} must be a string")
    return value


class LineEncoder:
    """Log messages as JSON text, built from pieces fixed per subscription: one ``json`` call per line."""

    def __init__(self, container_id: str) -> None:
        cid = _encode(container_id)
        self._heads = {stream: f'{{"type":"container.logs","data":{{"containerId":{cid},"stream":"{stream}",'
                               f'"message":' for stream in ("stdout", "stderr")}
        self._batch_head = f'{{"type":"container.logs.batch","data":{{"containerId":{cid},"lines":['

    def line(self, line: LogLine, now: int) -> str:
        stamp = now if line.timestamp is None else int(line.timestamp)
        return f'{self._heads[line.stream]}{_encode(line.message)},"timestamp":{stamp}}}}}'

    def batch(self, lines: list[LogLine], now: int) -> str:
        items = ",".join(
            f'{{"stream":"{line.stream}","message":{_encode(line.message)},'
            f'"timestamp":{now if line.timestamp is None else int(line.timestamp)}}}'
            for line in lines)
        return f"{self._batch_head}{items}]}}}}"


def _event(type_: str, container_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "data": {"containerId": container_id, **fields, "timestamp": int(time.time())}}


def send_error(client: Client, container_id: str, code: str, message: str) -> None:
    client.send(_event("container.logs.error", container_id, error=code, message=message))


SubscriptionKey = tuple[str, str, str]  # runtime name, namespace, the container's own id (Container.id)


class Subscription:
    """One client's stream of one container's logs: a task from ``started`` to its one ``ended``.
    Its messages carry the container id as the client wrote it (a name, a short or a full id): that is
    what the client matches them on."""

    def __init__(self, streams: LogStreams, client: Client, key: SubscriptionKey, runtime: Runtime, ref: Ref,
                 options: Options) -> None:
        self.streams = streams
        self.client = client
        self.key = key
        self.container_id = ref.id
        self.runtime = runtime
        self.ref = ref
        self.options = options
        self.ended = False
        self._encoder = LineEncoder(self.container_id)
        self._batch: list[LogLine] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.client.send(_event("container.logs.started", self.container_id))
        self.task = asyncio.create_task(self._run(), name=f"logs-{self.container_id}")

    async def stop(self) -> None:
        """End at the client's wish (unsubscribe, replace, disconnect, shutdown)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self._end("stopped")

    async def _run(self) -> None:
        options = self.options
        try:
            lines = self.runtime.logs(self.ref, tail=options.tail, follow=options.follow,
                                      timestamps=options.timestamps)
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
        except ApiError as exc:
            self._fail(exc.code, exc.message)
        except EngineError as exc:
            self._fail("CONTAINER_LOGS_FAILED", f"Failed to read container logs: {exc}")
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
        self._flush_batch()
        send_error(self.client, self.container_id, code, message)
        self._end("error")

    def _end(self, reason: str) -> None:
        """Send the one ``ended`` (after the lines already read and any drop count) and forget the stream."""
        if self.ended:
            return
        self.ended = True
        self._flush_batch()
        self.client.report_drops(self.container_id)
        self.client.send(_event("container.logs.ended", self.container_id, reason=reason))
        self.streams.forget(self)


class LogStreams:
    """Every live subscription, by client, and counters the metrics read (lines sent / dropped, active)."""

    def __init__(self) -> None:
        self.lines_sent = 0
        self.lines_dropped = 0
        self._by_client: dict[Client, dict[SubscriptionKey, Subscription]] = {}

    @property
    def active(self) -> int:
        return sum(len(subs) for subs in self._by_client.values())

    def of(self, client: Client) -> dict[SubscriptionKey, Subscription]:
        return self._by_client.get(client, {})

    async def subscribe(self, client: Client, key: SubscriptionKey, runtime: Runtime, ref: Ref,
                        options: Options) -> Subscription:
        """Start a stream; one already running for the same container (however it was named) ends first
        (``ended: stopped``)."""
        subs = self._by_client.get(client)
        if subs is None:
            subs = self._by_client[client] = {}
            client.on_close.append(lambda: self.end_client(client))
        old = subs.get(key)
        if old is None:
            if len(subs) >= MAX_SUBSCRIPTIONS_PER_CLIENT:
                raise ApiError(429, "TOO_MANY_SUBSCRIPTIONS",
                               f"At most {MAX_SUBSCRIPTIONS_PER_CLIENT} log subscriptions per connection")
            if self.active >= MAX_SUBSCRIPTIONS:
                raise ApiError(503, "TOO_MANY_SUBSCRIPTIONS",
                               f"The daemon follows {MAX_SUBSCRIPTIONS} log streams already; try again later")
        else:
            await old.stop()
        if client.closed:
            raise ApiError(410, "CLIENT_GONE", "The connection closed")
        sub = subs[key] = Subscription(self, client, key, runtime, ref, options)
        sub.start()
        return sub

    def forget(self, sub: Subscription) -> None:
        subs = self._by_client.get(sub.client)
        if subs is not None and subs.get(sub.key) is sub:
            del subs[sub.key]

    async def end_client(self, client: Client) -> None:
        """Disconnect or shutdown: every stream of the client ends with ``stopped``."""
        await asyncio.gather(*(sub.stop() for sub in list(self.of(client).values())))
        self._by_client.pop(client, None)

    async def close(self) -> None:
        """At shutdown, after the hub said goodbye: nothing may still read from a runtime."""
        await asyncio.gather(*(self.end_client(client) for client in list(self._by_client)))


def _target(request: web.Request, data: dict[str, Any]) -> tuple[Runtime, Ref]:
    container_id = data.get("containerId")
    if not isinstance(container_id, str) or not container_id:
        raise ApiError(400, "INVALID_CONTAINER_ID", "Container ID is required")
    namespace = _string_field(data, "namespace")
    runtime_name = _string_field(data, "runtime") or ("kubernetes" if namespace else None)
    runtime = request.app[RUNTIMES].pick(runtime_name)
    return runtime, runtime.validate_ref(Ref(container_id, namespace))


async def _key(runtime: Runtime, ref: Ref) -> SubscriptionKey:
    """The container's own id, so that a name and an id (short or full) of one container are one stream;
    a container that does not exist gets CONTAINER_NOT_FOUND."""
    return runtime.name, ref.namespace, (await runtime.get(ref)).id


def _reply_id(data: dict[str, Any]) -> str:
    value = data.get("containerId")
    return value[:200] if isinstance(value, str) else ""


async def handle_subscribe(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    try:
        runtime, ref = _target(request, data)
        options = parse_options(data)
        key = await _key(runtime, ref)
        await request.app[LOG_STREAMS].subscribe(client, key, runtime, ref, options)
    except ApiError as exc:
        send_error(client, _reply_id(data), exc.code, exc.message)
    except EngineError as exc:
        send_error(client, _reply_id(data), "CONTAINER_LOGS_FAILED", f"Failed to read container logs: {exc}")


async def handle_unsubscribe(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    """End the named container's stream(s) on this connection (any runtime, unless one is named)."""
    container_id = data.get("containerId")
    if not isinstance(container_id, str) or not container_id:
        return send_error(client, "", "INVALID_CONTAINER_ID", "Container ID is required")
    try:
        namespace = _string_field(data, "namespace")
        runtime_name = _string_field(data, "runtime")
    except ApiError as exc:
        return send_error(client, container_id[:200], exc.code, exc.message)
    subs = request.app[LOG_STREAMS].of(client)
    matching = [sub for (rt, ns, cid), sub in subs.items()
                if container_id in (cid, sub.container_id) and (not namespace or ns == namespace)
                and (not runtime_name or rt == runtime_name)]
    if not matching and subs:
        matching = await _named_otherwise(request, data, subs)
    if not matching:
        return send_error(client, container_id[:200], "NOT_SUBSCRIBED",
                          f"No log subscription for {container_id[:200]} on this connection")
    await asyncio.gather(*(sub.stop() for sub in matching))


async def _named_otherwise(request: web.Request, data: dict[str, Any],
                           subs: dict[SubscriptionKey, Subscription]) -> list[Subscription]:
    """The stream of a container that the subscribe named otherwise (its id, and now its name, or the
    reverse): found through the engine."""
    try:
        sub = subs.get(await _key(*_target(request, data)))
    except (ApiError, EngineError):
        return []
    return [] if sub is None else [sub]


ws.MESSAGE_HANDLERS["container.logs.subscribe"] = handle_subscribe
ws.MESSAGE_HANDLERS["container.logs.unsubscribe"] = handle_unsubscribe
