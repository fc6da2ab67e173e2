"""Container logs over HTTP (``GET /api/v1/containers/{id}/logs`` and ``/{namespace}/{pod}/logs``), for
scripts and ``curl``: ``text/plain``, one line per log line, or NDJSON ``{stream, message, timestamp}``
when ``Accept`` asks for ``application/x-ndjson``.

The options and their checks, the target, the line source (``runtimes.logparse`` through the runtime) and
the caps are the WebSocket subscriptions' (``logs``): a stream here counts against the same daemon-wide
cap, per-address and per-subject shares and local reserve. What differs is the flow. A text stream has
no way to say that lines are missing, so nothing is dropped: a reader that is behind makes the engine
wait (at most ``BUFFER_CHARS`` are read ahead of it), and one that takes nothing for ``hub.SEND_TIMEOUT``
is cut, like a stuck WebSocket client. A response that ends normally (the terminating chunk) means the
log ended: the tail is done, the container stopped, or ``until`` came. Anything else (the engine went
away, the daemon shuts down, the reader stalled, the token expired or was revoked) cuts the connection
without it, so that ``curl`` and HTTP libraries report an incomplete transfer instead of a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web

from .auth import PRINCIPAL, bearer_token
from .errors import ApiError, EngineError, NotSupported, as_api_error, engine_errors
from .hub import SEND_TIMEOUT, drop
from .keys import LOG_STREAMS
from .logs import LOGS_FAILED, LogStreams, line_json, line_source, parse_options, stream_key
from .subscriptions import Holder, holder_of
from .runtimes import LogLine
from .views.common import target

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
NDJSON = "application/x-ndjson"
_NDJSON_NAMES = ("application/x-ndjson", "application/ndjson")
_TEXT_NAMES = ("text/plain", "text/*", "*/*")
BUFFER_CHARS = 256 << 10  # read ahead of the reader at most (plus one line, itself at most logparse.MAX_LINE)
FIRST_WAIT = 1.0  # the answer waits this long for the first lines, so that an early failure is a JSON error
IDLE_CHECK = 1.0  # a quiet stream looks this often whether its reader left or its token ran out
STOP_WAIT = 2.0  # shutdown waits this long for a stream to finish after cutting it


def wants_ndjson(accept: str) -> bool:
    """Whether ``Accept`` prefers NDJSON: ``application/x-ndjson`` (or ``application/ndjson``) listed with a
    quality above zero and not below that of every text form. Anything else, no header included, is text."""
    best = {"ndjson": 0.0, "text": 0.0}
    for item in accept.split(",")[:64]:
        kind, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        kind = kind.lower()
        group = "ndjson" if kind in _NDJSON_NAMES else "text" if kind in _TEXT_NAMES else None
        if group is not None and 0 < quality <= 1:
            best[group] = max(best[group], quality)
    return best["ndjson"] > 0 and best["ndjson"] >= best["text"]


def _text_line(line: LogLine) -> str:
    return line.message + "\n"


def _ndjson_line(line: LogLine) -> str:
    return line_json(line, int(time.time())) + "\n"


class HttpLogStream:
    """One GET …/logs: a pump task reads the line source into a bounded buffer; the handler writes what is
    buffered, one chunk per write, and decides how the response ends."""

    def __init__(self, streams: LogStreams, holder: Holder, ndjson: bool, token: str | None = None,
                 expires_at: float | None = None) -> None:
        self.streams = streams
        self.holder = holder
        self.token = token  # the token it stands on (remote readers), checked again on revocation
        self.expires_at = expires_at  # wall-clock seconds the token stops being accepted
        self.lines = 0  # lines written to the response
        self.read = 0  # lines read from the source (written, or in the buffer)
        self._encode: Callable[[LogLine], str] = _ndjson_line if ndjson else _text_line
        self._pieces: list[str] = []
        self._chars = 0
        self._room = asyncio.Event()  # set while the buffer takes more
        self._room.set()
        self._ready = asyncio.Event()  # set when there is something to write, or the source ended
        self._done = False
        self._error: BaseException | None = None
        self._cut = False
        self._request: web.Request | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()

    async def serve(self, request: web.Request, source: AsyncGenerator[LogLine, None],
                    content_type: str) -> web.StreamResponse:
        """Answer the request from ``source``; the stream is counted (``LogStreams.open_own``) until this
        returns. Before the first byte is sent an error is a JSON answer; after, the connection is cut."""
        self._request = request
        self.streams.open_own(self)
        try:
            self._pump_task = asyncio.create_task(self._pump(source), name="http-logs")
            try:
                async with asyncio.timeout(FIRST_WAIT):
                    await self._ready.wait()
            except TimeoutError:
                pass  # a quiet follow: the headers go now
            if self._error is not None and not self._pieces:
                if isinstance(self._error, ApiError | EngineError | NotSupported):
                    raise as_api_error(self._error, *LOGS_FAILED)
                raise ApiError(500, *LOGS_FAILED)
            response = web.StreamResponse(headers={
                "Content-Type": content_type, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "X-Accel-Buffering": "no"})  # a reverse proxy must not hold a followed stream back
            try:
                await response.prepare(request)
            except ConnectionError:
                return response  # the reader left already; aiohttp notes it
            if not await self._write_all(request, response):
                self.cut()
            return response
        finally:
            try:
                await self._stop_pump()
            finally:  # also when the handler is cancelled meanwhile (aiohttp's handler_cancellation)
                self.streams.close_own(self)
                self.streams.lines_sent += self.lines
                self._finished.set()

    def cut(self) -> None:
        """End the stream without its terminating chunk (shutdown, revocation, a stalled reader)."""
        self._cut = True
        self._ready.set()
        if self._pump_task is not None:
            self._pump_task.cancel()
        transport = self._request.transport if self._request is not None else None
        if transport is not None:
            drop(transport)

    async def stop(self) -> None:
        """At shutdown: cut, then wait (bounded) until the handler let go of the stream."""
        self.cut()
        try:
            async with asyncio.timeout(STOP_WAIT):
                await self._finished.wait()
        except TimeoutError:
            pass

    async def _pump(self, source: AsyncGenerator[LogLine, None]) -> None:
        encode, pieces = self._encode, self._pieces
        try:
            async with aclosing(source):
                async for line in source:
                    text = encode(line)
                    pieces.append(text)
                    self._chars += len(text)
                    self.read += 1
                    self._ready.set()
                    if self._chars >= BUFFER_CHARS:
                        self._room.clear()
                        await self._room.wait()
        except asyncio.CancelledError:
            raise
        except (ApiError, EngineError, NotSupported) as exc:
            self._error = exc
        except Exception as exc:
            log.exception("HTTP log stream failed")
            self._error = exc
        finally:
            self._done = True
            self._ready.set()

    async def _stop_pump(self) -> None:
        """Cancel the pump and wait for it; cancelled itself meanwhile, the pump still ends on its own."""
        task = self._pump_task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _write_all(self, request: web.Request, response: web.StreamResponse) -> bool:
        """Write until the source ends: True when the log ended (the response then ends normally), False
        when the stream must be cut (an error, the reader stalled or left, the token ran out, ``cut``)."""
        while not self._cut:
            if self.expires_at is not None and time.time() >= self.expires_at:
                return False
            if self._pieces:
                text = "".join(self._pieces)
                self._pieces.clear()
                self._chars = 0
                self._room.set()
                lines = self.read - self.lines
                try:
                    async with asyncio.timeout(SEND_TIMEOUT):
                        await response.write(text.encode())
                    self.lines += lines
                except TimeoutError:
                    log.warning("cutting a stalled HTTP log reader: nothing accepted for %g s", SEND_TIMEOUT)
                    return False
                except ConnectionError:
                    return False  # the reader left
                continue
            if self._done:
                return self._error is None
            self._ready.clear()
            try:
                async with asyncio.timeout(IDLE_CHECK):
                    await self._ready.wait()
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    return False  # the reader left a quiet stream
        return False


def recheck(streams: LogStreams, verify: Callable[[str], Any], refused: type[Exception]) -> int:
    """After the token files changed: cut every HTTP log stream whose token no longer verifies (the
    WebSocket sessions are ended the same way by ``hub.Hub.recheck``). Returns how many were cut."""
    cut = 0
    for stream in list(streams.own):
        if isinstance(stream, HttpLogStream) and stream.token is not None:
            try:
                verify(stream.token)
            except refused:
                stream.cut()
                cut += 1
    return cut


async def serve(request: web.Request) -> web.StreamResponse:
    """GET …/logs: the options (400), the runtime and container (400, 404), the caps (429, 503), then the
    stream (docs/api.md, "Logs over HTTP")."""
    options = parse_options(request.query, query=True)
    runtime, ref = target(request)
    with engine_errors(*LOGS_FAILED):
        await stream_key(runtime, ref)  # CONTAINER_NOT_FOUND before anything is counted
    principal = request.get(PRINCIPAL)
    local = principal is None or principal.local
    ndjson = wants_ndjson(request.headers.get("Accept", ""))
    stream = HttpLogStream(request.app[LOG_STREAMS],
                           holder_of(request, principal.subject if principal is not None else None),
                           ndjson, token=None if local else bearer_token(request),
                           expires_at=None if principal is None else principal.expires_at)
    return await stream.serve(request, line_source(runtime, ref, options), NDJSON if ndjson else TEXT)
