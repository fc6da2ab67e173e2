"""Connected WebSocket clients: a bounded send queue each, and broadcast of notifications.

A client that reads slowly must not grow the daemon's memory. Each client has one ordered queue:
- log messages may fill it up to ``LOG_QUEUE_SIZE`` messages / ``LOG_QUEUE_BYTES``; then the queue is
  "full" and further log messages are dropped (counted per container) until the writer has drained it
  below half, when ``container.logs.dropped {containerId, count}`` is queued exactly where the gap is;
- notifications and log-stream control messages (``started``, ``ended``, ``error``) are never dropped:
  they may use ``CONTROL_RESERVE`` more slots; a client that lets even those pile up is stuck and closed;
- a client that cannot take a batch of messages within ``SEND_TIMEOUT`` is stuck and closed (aborted, so
  that closing cannot hang on a peer that never reads).
Producers that prefer waiting to dropping (a fast client that is briefly behind) use ``wait_log_room``.
Messages where only the newest matters (live stats) go through ``send_latest``: one slot per key in the
queue, whose text a newer message replaces until the writer takes it, so a slow reader gets fewer of them
and the queue holds at most one per key.

A session authenticated by a token lasts as long as the token: ``watch_token`` sets a timer (owned by the
client, cancelled when it goes) for the token's expiry, and ``end_session`` ends the session with one clear
message and a 1008 close (expiry, revocation, a new secret; see ``Hub.recheck``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

LOG_QUEUE_SIZE = 1024  # log messages a client may have waiting
LOG_QUEUE_BYTES = 4 << 20  # ... and their size (characters) at most, so that big lines stay bounded too
CONTROL_RESERVE = 256  # slots beyond that for messages that must not be dropped
SEND_TIMEOUT = 10.0  # a client that cannot take one batch (below) in this long is stuck
SEND_BATCH = 64  # messages, or SEND_BATCH_BYTES, written under one timeout
SEND_BATCH_BYTES = 256 << 10
CLOSE_TIMEOUT = 2.0  # a polite close that takes longer is cut short (transport aborted)
PONG_BACKLOG = 16 << 10  # bytes unsent to a client beyond which its PINGs go unanswered (asyncio's low-water mark)
PONG_TIMEOUT = 1.0  # ... and a pong that cannot be written in this long is given up
_CORK = getattr(socket, "TCP_CORK", None)  # Linux
CORK_FROM = 4  # queued messages from which corking pays for its two setsockopt calls


class _Latest:
    """A queue slot whose text is the client's newest ``send_latest`` message of ``key``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def envelope(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "data": data}


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class Client:
    """One WebSocket connection, its ordered send queue and its writer task."""

    def __init__(self, ws: web.WebSocketResponse, address: str, transport: asyncio.Transport | None = None,
                 ) -> None:
        self.ws = ws
        self.address = address
        self.subject: str | None = None  # set once authenticated
        self.dropped: Counter[str] = Counter()  # container id -> log lines dropped, not yet reported
        self.on_close: list[Callable[[], Awaitable[None]]] = []  # e.g. end log streams
        self._transport = transport
        self._queue: deque[str | _Latest | None] = deque()
        self._latest: dict[str, str] = {}  # key -> the newest text of its slot still in the queue
        self.replaced = 0  # send_latest messages replaced by a newer one before they were sent
        self._queued_chars = 0
        self._log_full = False  # log messages are dropped until the writer drains below half
        self._room = asyncio.Event()  # set while log messages are accepted
        self._room.set()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.token: str | None = None  # the token the session stands on (remote clients); never logged
        self.ending = False  # end_session was called: no further message is handled
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def authenticated(self) -> bool:
        return self.subject is not None

    @property
    def closed(self) -> bool:
        return self._closed or self.ws.closed

    @property
    def log_full(self) -> bool:
        """True while log messages would be dropped."""
        return self._log_full

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.address}")

    def watch_token(self, token: str, expires_at: float | None) -> None:
        """The session stands on ``token`` from now on; it ends when the token expires (``expires_at``,
        wall-clock seconds, when the daemon stops accepting it)."""
        self.token = token
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(
                delay, self.end_session, "auth_expired", "TOKEN_EXPIRED",
                "Token expired; connect again with a new token")

    def end_session(self, type_: str, code: str, message: str, close_code: int = 1008) -> None:
        """End the session: the client's streams end, then ``{"type": type_, "data": {"error": code,
        "message": message}}`` goes out, then the connection closes with ``close_code``. Runs in a task
        owned by the client (awaited by ``shutdown``)."""
        if self.ending or self.closed:
            return
        self.ending = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._closer = asyncio.create_task(self._end(type_, code, message, close_code),
                                           name=f"ws-end-{self.address}")

    async def _end(self, type_: str, code: str, message: str, close_code: int) -> None:
        await self.run_close_callbacks()
        self.send(envelope(type_, {"error": code, "message": message}))
        await self.flush_and_stop()
        await self.close(close_code, code.encode())

    def send(self, message: dict[str, Any], *, droppable_for: str | None = None) -> bool:
        """Queue a message. With ``droppable_for`` (a container id) it is a log message that may be dropped;
        otherwise it is never dropped, and a queue full even of those means the client is stuck."""
        if droppable_for is not None:
            return self.send_log(droppable_for, _dumps(message))
        return self.send_text(_dumps(message))

    def send_text(self, text: str) -> bool:
        """Queue an already encoded message that must not be dropped."""
        if self.closed:
            return False
        if len(self._queue) - len(self._latest) >= LOG_QUEUE_SIZE + CONTROL_RESERVE:  # latest slots: bounded apart
            self._stuck("send queue full")
            return False
        self._push(text)
        return True

    def send_log(self, container_id: str, text: str, lines: int = 1) -> bool:
        """Queue an encoded log message holding ``lines`` lines, or drop and count it."""
        if self.closed:
            return False
        if self._log_full:
            self.drop(container_id, lines)
            return False
        if self.dropped.get(container_id):
            self._push(self._dropped_message(container_id))
        self._push(text)
        if len(self._queue) >= LOG_QUEUE_SIZE or self._queued_chars >= LOG_QUEUE_BYTES:
            self._log_full = True
            self._room.clear()
        return True

    def send_latest(self, key: str, text: str) -> bool:
        """Queue a message of which only the newest per ``key`` matters: while an earlier one of the same
        key waits in the queue, ``text`` replaces it (in its place), so the queue never holds two. The
        producer bounds the keys (one per watched container)."""
        if self.closed:
            return False
        old = self._latest.get(key)
        self._latest[key] = text
        if old is not None:
            self.replaced += 1
            self._queued_chars += len(text) - len(old)
            return True
        self._queue.append(_Latest(key))
        self._queued_chars += len(text)
        self._wakeup.set()
        return True

    def drop(self, container_id: str, lines: int = 1) -> None:
        """Count log lines that were not sent (reported later as container.logs.dropped)."""
        self.dropped[container_id] += lines

    async def wait_log_room(self, timeout: float) -> bool:
        """Wait until log messages are accepted again; False if that took longer than ``timeout``."""
        if not self._log_full:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._room.wait()
        except TimeoutError:
            return False
        return not self.closed

    def report_drops(self, container_id: str) -> None:
        """Queue the pending drop count of one container now (before its stream's ``ended``)."""
        if self.dropped.get(container_id) and not self.closed:
            self.send_text(self._dropped_message(container_id))

    def _dropped_message(self, container_id: str) -> str:
        count = self.dropped.pop(container_id)
        return _dumps(envelope("container.logs.dropped", {"containerId": container_id, "count": count,
                                                          "timestamp": int(time.time())}))

    def _push(self, text: str) -> None:
        self._queue.append(text)
        self._queued_chars += len(text)
        self._wakeup.set()

    def _popped(self, text: str) -> None:
        self._queued_chars -= len(text)
        if self._log_full and (len(self._queue) <= LOG_QUEUE_SIZE // 2
                               and self._queued_chars <= LOG_QUEUE_BYTES // 2):
            self._log_full = False
            for container_id in list(self.dropped):  # the gap is here: say so before the next lines
                self._push(self._dropped_message(container_id))
            self._room.set()

    async def run_close_callbacks(self) -> None:
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            await callback()

    async def _write_loop(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                async with asyncio.timeout(SEND_TIMEOUT):
                    with self._corked(len(queue) >= CORK_FROM):
                        count = chars = 0
                        while queue and count < SEND_BATCH and chars < SEND_BATCH_BYTES:
                            item = queue.popleft()
                            if item is None:
                                return
                            text = self._latest.pop(item.key) if isinstance(item, _Latest) else item
                            self._popped(text)
                            await self.ws.send_str(text)
                            count += 1
                            chars += len(text)
        except TimeoutError:
            log.warning("closing stuck WebSocket client %s: nothing accepted for %g s", self.address, SEND_TIMEOUT)
            self._abort()
        except (ConnectionError, RuntimeError) as exc:
            log.info("WebSocket client %s gone: %s", self.address, exc or type(exc).__name__)
            self._abort()

    @contextlib.contextmanager
    def _corked(self, batch: bool) -> Iterator[None]:
        """While a batch of frames is written, let the kernel pack them into full TCP segments (TCP_CORK):
        one segment per small log frame costs the daemon, the network and the client more than the frames."""
        sock = self._transport.get_extra_info("socket") if batch and self._transport is not None else None
        if sock is None or not _CORK or sock.family not in (socket.AF_INET, socket.AF_INET6):
            yield
            return
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)

    def _stuck(self, reason: str) -> None:
        log.warning("closing stuck WebSocket client %s: %s", self.address, reason)
        self._abort()

    def _abort(self) -> None:
        """Drop the connection at once: a peer that does not read would make a polite close hang."""
        self._closed = True
        self._queue.clear()
        self._latest.clear()
        self._queued_chars = 0
        self._room.set()  # producers waiting for room see the client closed
        if self._transport is not None:
            drop(self._transport)
        elif self._closer is None and not self.ws.closed:
            self._closer = asyncio.create_task(self.close(1008, b"stuck"))

    async def close(self, code: int, message: bytes = b"") -> None:
        """Close politely within CLOSE_TIMEOUT, else abort."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=message)
        except TimeoutError:
            if self._transport is not None:
                drop(self._transport)
        except (ConnectionError, RuntimeError):
            pass
        self._closed = True

    async def shutdown(self, code: int, message: bytes = b"") -> None:
        """End the client's streams (their last messages queued), let the queue drain (bounded), close."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)
        await self.run_close_callbacks()
        await self.flush_and_stop()
        await self.close(code, message)

    async def pong(self, data: bytes) -> None:
        """Answer a PING frame, unless the client is not reading what it is sent: a client that pings and
        reads nothing made aiohttp's own answer wait to be written for ever, which held the connection past
        the auth deadline and, once the client reset it, logged a traceback."""
        transport = self._transport
        if self._closed or (transport is not None and (transport.is_closing()
                                                       or transport.get_write_buffer_size() > PONG_BACKLOG)):
            return
        try:
            async with asyncio.timeout(PONG_TIMEOUT):
                await self.ws.pong(data)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass  # its pongs are not what the client lacks; the reader sees the connection end

    async def flush_and_stop(self, timeout: float = 2.0) -> None:
        """Let queued messages go out (bounded), then stop the writer."""
        if self._writer is None:
            return
        if not self._writer.done():
            self._queue.append(None)
            self._wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._writer)
        except (TimeoutError, asyncio.CancelledError):
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)


def drop(transport: asyncio.Transport) -> None:
    """Abort a connection at once, unless it is already gone. CPython's socket transport, closed while data
    was still buffered, finishes closing once the buffer drains without marking itself lost, and a later
    ``abort()`` then raises AttributeError (its loop is gone); aborting a closing transport with data
    still buffered (a peer that does not read) is what frees it."""
    if transport.is_closing() and transport.get_write_buffer_size() == 0:
        return
    transport.abort()


class Hub:
    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self._releasing: set[asyncio.Task[None]] = set()

    def add(self, client: Client) -> None:
        self.clients.add(client)

    def remove(self, client: Client) -> None:
        self.clients.discard(client)

    async def release(self, client: Client) -> None:
        """The connection is over: shut the client down in a task of the hub's own, because aiohttp
        cancels the handler when the peer goes away and the cleanup must not stop half-way."""
        self.clients.discard(client)
        task = asyncio.create_task(client.shutdown(1000), name=f"ws-release-{client.address}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    def recheck(self, verify: Callable[[str], Any], refused: type[Exception]) -> int:
        """Verify again the token of every session that stands on one (after a revocation or a new secret);
        end those that no longer pass. Returns how many were ended."""
        ended = 0
        for client in list(self.clients):
            if client.token is None or client.ending:
                continue
            try:
                verify(client.token)
            except refused as exc:
                expired = getattr(exc, "reason", "") == "expired"
                client.end_session("auth_expired" if expired else "auth_revoked",
                                   "TOKEN_EXPIRED" if expired else "TOKEN_REVOKED", str(exc))
                ended += 1
        return ended

    def broadcast(self, type_: str, data: dict[str, Any]) -> int:
        """Send to every authenticated client; returns how many were reached."""
        text = _dumps(envelope(type_, data))
        return sum(client.send_text(text) for client in list(self.clients) if client.authenticated)

    async def close_all(self, code: int = 1001, message: bytes = b"server shutdown") -> None:
        """End every client's streams (their ``ended`` goes out), flush, then close the sockets."""
        clients = list(self.clients)
        await asyncio.gather(*(c.shutdown(code, message) for c in clients), *list(self._releasing),
                             return_exceptions=True)
