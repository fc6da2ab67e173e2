"""The listening sockets, and the guards between a stranger's TCP connection and aiohttp.

aiohttp alone keeps a connection that never completes its request head for its keep-alive timeout (an
hour by default), serves any number of connections per address, and a full descriptor table makes asyncio
log a traceback per failed ``accept()``. Here, before any request is parsed:

- ``Listener`` accepts connections itself (``loop.connect_accepted_socket`` then hands them to aiohttp), so a
  connection is counted from ``accept()``, TLS handshake included, and refused at once when its address
  already holds ``max_connections_per_client`` connections or when the connections' share of descriptors
  (``descriptors.Budget``) is used up. Peers in ``connection_cap_exempt`` and ``auth.trusted_proxies`` are
  not capped: the host itself and a reverse proxy carry many clients on one address.
- ``_Guard`` wraps aiohttp's protocol and closes a connection whose request head is not complete within
  ``head_timeout`` seconds (slowloris, also one byte a second), or whose request body stops arriving for
  as long; idle keep-alive connections close after aiohttp's ``keepalive_timeout``.
- When descriptors run out anyway, accepting pauses briefly and says so in one line per few seconds.
- ``"[::]"`` listens dual-stack (``IPV6_V6ONLY`` off), and an IPv4-mapped peer (``::ffff:10.0.0.5``) is
  counted as the IPv4 address it carries (an IPv6 peer by its /64).
- ``ServerLog`` and ``install_loop_exception_handler``: aiohttp's report of a malformed request and
  asyncio's reports become throttled one-liners (``logthrottle``), so that a stranger cannot flood the log.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .config import IPNetwork
from .logthrottle import Throttle, printable, suppressed_note
from .realip import IPAddress, peer_address

log = logging.getLogger(__name__)


ACCEPT_RETRY = 0.5  # seconds accepting pauses after the descriptor table was full
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\nRetry-After: 5\r\n\r\n").encode() + body


ClientKey = ipaddress.IPv4Address | ipaddress.IPv6Network | None


def client_key(addr: IPAddress | None) -> ClientKey:
    """Whom the per-client cap counts: an IPv4 address, or an IPv6 /64 (one host can own a whole /64,
    as the rate limits assume too)."""
    if isinstance(addr, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((addr, 64), strict=False)
    return addr


class ConnectionLimits:
    """Open connections per client (``client_key``), and in all for the capped peers."""

    def __init__(self, per_client: int, total: int, exempt: Iterable[IPNetwork]) -> None:
        self.per_client = per_client
        self.total = total
        self._exempt = tuple(exempt)
        self._open: dict[ClientKey, int] = {}
        self.capped_open = 0  # connections from capped peers
        self.refused = 0

    def exempt(self, addr: IPAddress | None) -> bool:
        return addr is not None and any(addr.version == n.version and addr in n for n in self._exempt)

    def admit(self, addr: IPAddress | None) -> str | None:
        """Count a new connection, or say why it is refused ("per_client" or "total")."""
        key = client_key(addr)
        if not self.exempt(addr):
            if self._open.get(key, 0) >= self.per_client:
                self.refused += 1
                return "per_client"
            if self.capped_open >= self.total:
                self.refused += 1
                return "total"
            self.capped_open += 1
        self._open[key] = self._open.get(key, 0) + 1
        return None

    def release(self, addr: IPAddress | None) -> None:
        key = client_key(addr)
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        if not self.exempt(addr):
            self.capped_open -= 1


class _Slot:
    """One admitted connection's place in the limits; released once, whichever way the connection ends."""

    __slots__ = ("_limits", "addr")

    def __init__(self, limits: ConnectionLimits, addr: IPAddress | None) -> None:
        self._limits: ConnectionLimits | None = limits
        self.addr = addr

    def release(self) -> None:
        if self._limits is not None:
            self._limits.release(self.addr)
            self._limits = None


class _Guard(asyncio.Protocol):
    """aiohttp's protocol (``web_protocol.RequestHandler``), with deadlines on the request head and body.

    Head: the deadline runs from the connection (after TLS) and, on a keep-alive connection, from the
    first byte of a new request while aiohttp waits for one; it ends when aiohttp has parsed a request (or
    answered a malformed one). Body: once the head is in, a request whose body is still incomplete is cut
    when the client sends nothing for as long (a stall, not a slow upload: every byte restarts the wait;
    nor when aiohttp itself paused reading because the handler is behind). Requests without a body,
    answers that take long and upgraded WebSockets are never timed here. It reads aiohttp's handler's
    ``_request_count``, ``_waiter``, ``_upgraded`` and ``_current_request``;
    tests/test_attack_connections.py fails if they change meaning."""

    def __init__(self, handler: Any, slot: _Slot, head_timeout: float, listener: Listener) -> None:
        self._handler = handler
        self._slot = slot
        self._head_timeout = head_timeout
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._count = 0

    def _requests(self) -> int:
        return getattr(self._handler, "_request_count", 0)

    def _idle(self) -> bool:
        waiter = getattr(self._handler, "_waiter", None)
        return waiter is not None and not waiter.done() and not getattr(self._handler, "_upgraded", False)

    def _arm(self) -> None:
        self._count = self._requests()
        self._timer = self._loop.call_later(self._head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._requests() == self._count and self._transport is not None:
            self._listener.timed_out(self._slot.addr, f"no complete request head within {self._head_timeout:g}s")
            self._transport.abort()  # frees the descriptor now; a TLS close_notify would wait on the peer

    def _watch_body(self, delay: float) -> None:
        if self._body_timer is None:
            self._body_timer = self._loop.call_later(delay, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        handler = self._handler
        if self._transport is None or getattr(handler, "_upgraded", False):
            return
        request = getattr(handler, "_current_request", None)
        if request is None:
            if not self._idle():  # parsed, its handler not started yet
                self._watch_body(self._head_timeout)
            return
        if request.content.is_eof():
            return  # the body is complete (or there is none): nothing left to wait for from the client
        quiet = self._loop.time() - self._last_data
        if not self._transport.is_reading():  # aiohttp paused reading: the handler is behind, not the client
            self._watch_body(self._head_timeout)
        elif quiet < self._head_timeout:
            self._watch_body(self._head_timeout - quiet)
        else:
            self._listener.timed_out(self._slot.addr, f"its request body stalled for {self._head_timeout:g}s")
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport, from connect_accepted_socket
        self._arm()
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        if self._timer is None and data and self._idle():
            self._arm()
        self._handler.data_received(data)
        if self._timer is not None and self._requests() != self._count:
            self._disarm()
            self._watch_body(self._head_timeout)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._slot.release()
        self._transport = None
        self._handler.connection_lost(exc)


def open_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening sockets for ``host:port``. The IPv6 wildcard ``::`` is dual-stack; a name with
    several addresses (``localhost``) gets one socket per address."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, Any]] = set()
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                dual = ipaddress.ip_address(str(addr[0]).split("%", 1)[0]).is_unspecified and len(infos) == 1
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
            if port == 0 and socks[:-1]:  # one port for all, the one the system chose for the first
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener:
    """Accepts on the sockets and gives admitted connections to aiohttp's server (``runner.server``)."""

    def __init__(self, socks: list[socket.socket], make_handler: Callable[[], Any], limits: ConnectionLimits,
                 *, head_timeout: float, ssl_context: ssl.SSLContext | None = None, backlog: int = 128) -> None:
        self.sockets = socks
        self._make_handler = make_handler
        self.limits = limits
        self._head_timeout = head_timeout
        self._ssl = ssl_context
        self._backlog = backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: dict[int, asyncio.TimerHandle] = {}
        self._throttle = Throttle(log, burst=1, interval=5.0, global_burst=5, global_interval=5.0)
        self._refusals = {
            "per_client": _refusal(429, "Too Many Requests", "TOO_MANY_CONNECTIONS",
                                   f"At most {limits.per_client} connections per client address (IPv6: per /64)"),
            "total": _refusal(503, "Service Unavailable", "TOO_MANY_CONNECTIONS",
                              "The daemon holds all the connections it can; try again later"),
        }

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self.sockets]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def close(self) -> None:
        """Stop accepting and drop the connections still in their TLS handshake. Connections aiohttp
        already serves are aiohttp's to close (``runner.cleanup()``)."""
        assert self._loop is not None
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def timed_out(self, addr: IPAddress | None, why: str) -> None:
        self._throttle.log(("timeout", addr), logging.INFO, "closed a connection from %s: %s", addr, why)

    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(self._backlog):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._throttle.log(("accept", exc.errno), logging.WARNING,
                                   "cannot accept connections: %s", exc.strerror or exc)
                if exc.errno in _OUT_OF_RESOURCES:
                    # Linux keeps reporting the socket readable: wait for descriptors to come back
                    fd = sock.fileno()
                    self._loop.remove_reader(fd)
                    self._retry[fd] = self._loop.call_later(ACCEPT_RETRY, self._resume, sock)
                return
            self._admit(conn, peer_address(peer[0]))

    def _resume(self, sock: socket.socket) -> None:
        assert self._loop is not None
        self._retry.pop(sock.fileno(), None)
        self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _admit(self, conn: socket.socket, addr: IPAddress | None) -> None:
        reason = self.limits.admit(addr)
        if reason is not None:
            self._throttle.log(("refused", addr), logging.WARNING,
                               "refused a connection from %s: %s", addr,
                               f"it holds {self.limits.per_client} already" if reason == "per_client"
                               else f"{self.limits.total} connections are open")
            try:
                if self._ssl is None:  # a TLS client would read these bytes as a broken handshake
                    conn.send(self._refusals[reason], socket.MSG_DONTWAIT)
            except OSError:
                pass
            conn.close()
            return
        conn.setblocking(False)
        task = asyncio.ensure_future(self._connect(conn, _Slot(self.limits, addr)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, slot: _Slot) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(
                lambda: _Guard(self._make_handler(), slot, self._head_timeout, self), conn, ssl=self._ssl,
                ssl_handshake_timeout=self._head_timeout if self._ssl else None)
        except BaseException as exc:
            # a failed or cut handshake, or shutdown: asyncio closed the transport and the guard never saw
            # the connection, so its place is given back here
            slot.release()
            conn.close()
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, (OSError, asyncio.TimeoutError)):  # ssl.SSLError is an OSError
                log.debug("connection from %s ended before it started: %r", slot.addr, exc)
            else:
                self._throttle.log(("connect", type(exc).__name__), logging.WARNING,
                                   "connection from %s failed to start: %r", slot.addr, exc)


class ServerLog:
    """Stands in for aiohttp's server logger (``RequestHandler(logger=...)``).

    aiohttp logs every malformed request (bad request line, invalid header, a line too long) with an
    8-line traceback. Malformed requests are the client's fault, not the daemon's: one line, the cause
    made printable and bounded, throttled per client. A real exception in a handler keeps its traceback,
    throttled per kind."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._throttle = Throttle(logger)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            client = peer_address(str(args[0])) if args and args[0] else None
            # aiohttp's message spans lines (cause, the offending bytes, a caret): one line of it
            cause = printable(" ".join(line.strip() for line in str(exc_info.message).splitlines()
                                       if line.strip() and line.strip() != "^"))
            self._throttle.log(("bad", client), logging.INFO, "bad request from %s: %s %s: %s", client,
                               exc_info.code, type(exc_info).__name__, cause)
            return
        held = self._throttle.allow(("error", type(exc_info).__name__))
        if held is not None:
            self._logger.error(msg + suppressed_note(held), *args, exc_info=exc_info)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self._logger.debug(msg, *args)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._throttle.log(("warning", msg), logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._throttle.log(("error", msg), logging.ERROR, msg, *args)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._logger.info(msg, *args)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the logging API's name
        return self._logger.isEnabledFor(level)


def install_loop_exception_handler(loop: asyncio.AbstractEventLoop) -> None:
    """Errors asyncio reports through ``loop.call_exception_handler`` (a failed ``accept()`` on a socket it
    serves, a transport's fatal error, a task nobody awaited) at most a few times per kind and few seconds,
    with a count of those held back. An OSError is the world's doing: one line. Anything else is a bug of
    ours and keeps the default report with its traceback."""
    logger = logging.getLogger("asyncio")
    throttle = Throttle(logger, burst=2, interval=5.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = context.get("message") or "unhandled exception in the event loop"
        exc = context.get("exception")
        held = throttle.allow((message, type(exc).__name__))
        if held is None:
            return
        if isinstance(exc, OSError):
            logger.warning("%s: %s%s", message, exc, suppressed_note(held))
        else:
            loop.default_exception_handler({**context, "message": message + suppressed_note(held)})

    loop.set_exception_handler(handler)


def runner_kwargs(keepalive_timeout: float) -> dict[str, Any]:
    """aiohttp's per-connection settings: keep-alive bound and the server log above."""
    return {"keepalive_timeout": keepalive_timeout, "logger": ServerLog(logging.getLogger("aiohttp.server"))}

