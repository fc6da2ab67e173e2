"""The WebSocket endpoint /api/v1/ws: authentication handshake, message envelope, dispatch.

Every message both ways is ``{"type": ..., "data": {...}}``. Handlers for message types live with
their feature (``logs.MESSAGE_TYPES``); the app factory registers them with ``setup``; this module only
routes.

What a client sends is hostile until proven otherwise, authenticated or not:
- a message is decoded by orjson, which refuses nesting beyond 1,024 levels with a decode error (the
  standard library raised RecursionError, a traceback, on a frame of 60,000 ``[``), then refused if nested
  deeper than ``MAX_DEPTH`` (no message type needs more, and handlers may ``str()`` parts of ``data``);
  anything undecodable is ``INVALID_MESSAGE``, the connection stays. Frames over ``MAX_MESSAGE`` are closed by
  aiohttp with 1009, invalid UTF-8 in a text frame with 1007;
- every data frame (text or binary, valid or not, before and after authentication) spends a token of the
  connection's bucket (``RATE_BURST``, ``RATE_PER_SECOND``): over it, the message is not handled and the
  client gets ``RATE_LIMITED``; a client that keeps going (``STRIKES_TO_CLOSE`` refusals, forgiven at one
  a second) is closed with 1008. Local clients too: they are trusted with the containers, but a runaway
  dashboard must not turn each of its messages into an engine call;
- a session authenticated by a token ends when the token expires, or is revoked, or the secret changes
  (``hub.Client.end_session``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from .auth import CLIENT, PRINCIPAL, READ, TokenRefused, bearer_token, requires
from .errors import ApiError
from .hub import Client, Hub, envelope
from .keys import HUB, TOKENS

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
HEARTBEAT = 30.0
MAX_MESSAGE = 64 * 1024
MAX_DEPTH = 8  # {"type", "data": {...}}: every message type is two levels deep; room to grow, no more
RATE_BURST = 50  # messages a connection may send at once ...
RATE_PER_SECOND = 10.0  # ... and then on average
STRIKES_TO_CLOSE = 10  # refused messages (one forgiven per second) after which the connection is closed
#: Frames a session handles, each spending the message budget; any other ends it.
_MESSAGES = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG})

MessageHandler = Callable[[web.Request, Client, dict[str, Any]], Awaitable[None]]
MESSAGE_HANDLERS = web.AppKey("ws_message_handlers", dict[str, MessageHandler])


def setup(app: web.Application, *handlers: Mapping[str, MessageHandler]) -> None:
    """Register the message types features handle (besides auth and ping, which are this module's)."""
    table = app.setdefault(MESSAGE_HANDLERS, {})
    for types in handlers:
        for name, handler in types.items():
            if name in table or name in ("auth", "ping"):
                raise ValueError(f"WebSocket message type {name} registered twice")
            table[name] = handler


def error(client: Client, code: str, message: str, **details: Any) -> None:
    data: dict[str, Any] = {"error": code, "message": message}
    if details:
        data["details"] = details
    client.send(envelope("error", data))


class MessageBudget:
    """One connection's token bucket of messages, and the strikes of a client that keeps going over it."""

    OK, REFUSED, CLOSE = "ok", "refused", "close"

    def __init__(self, burst: int = RATE_BURST, per_second: float = RATE_PER_SECOND,
                 strikes_to_close: int = STRIKES_TO_CLOSE, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.per_second = per_second
        self.strikes_to_close = strikes_to_close
        self.refused = 0
        self._clock = clock
        self._tokens = float(burst)
        self._strikes = 0.0
        self._at = clock()

    def take(self) -> str:
        now = self._clock()
        elapsed, self._at = now - self._at, now
        self._tokens = min(self.burst, self._tokens + elapsed * self.per_second)
        self._strikes = max(0.0, self._strikes - elapsed)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return self.OK
        self.refused += 1
        self._strikes += 1.0
        return self.CLOSE if self._strikes >= self.strikes_to_close else self.REFUSED

    @property
    def retry_after(self) -> int:
        """Whole seconds until the next message would be accepted (at least 1)."""
        return max(1, math.ceil((1.0 - self._tokens) / self.per_second))


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether containers nest deeper than ``limit`` (a loop, not recursion: the value may be 1,024 deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def decode(text: str) -> tuple[dict[str, Any] | None, str]:
    """``(message, "")`` for a well-formed envelope, else ``(None, why)``; never raises."""
    try:
        message = orjson.loads(text)
    except (ValueError, RecursionError):  # orjson.JSONDecodeError is a ValueError; depth > 1024 is one too
        return None, "Message is not valid JSON"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None, 'Message must be an object {"type": ..., "data": {...}}'
    if too_deep(message):
        return None, f"Message nests deeper than {MAX_DEPTH} levels"
    data = message.get("data")
    if data is None:
        message["data"] = {}
    elif not isinstance(data, dict):
        return None, "Field data must be an object"
    return message, ""


async def _auth(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    token = data.get("token") or ""
    principal = request[PRINCIPAL]
    if not isinstance(token, str):
        token = ""
    try:
        if token:
            verified = request.app[TOKENS].verify(token)
            if not (principal and principal.local) and not verified.allows(READ):
                raise ApiError(403, "INSUFFICIENT_SCOPE", "Token lacks the read scope")
            client.subject = verified.subject or "token"
            if not (principal and principal.local):  # the session stands on the token: it ends with it
                client.watch_token(token, verified.expires_at)
        elif principal is not None:
            client.subject = principal.subject
        else:
            raise ApiError(401, "UNAUTHORIZED", "A token is required")
    except ApiError as exc:
        if principal is not None and principal.local:
            client.subject = principal.subject  # a local client's bad token is ignored, not refused
        else:
            await _refuse(client, exc.code, exc.message)
            return
    client.send(envelope("auth_success", {"deviceId": client.subject, "message": "authenticated"}))


async def _refuse(client: Client, code: str, message: str) -> None:
    """auth_failed, delivered, then a close with 1008 (policy violation)."""
    client.send(envelope("auth_failed", {"error": code, "message": message}))
    await client.flush_and_stop()
    await client.ws.close(code=1008, message=b"authentication failed")


async def _ping(request: web.Request, client: Client, data: dict[str, Any]) -> None:
    client.send({"type": "pong"})


async def _dispatch(request: web.Request, client: Client, text: str) -> None:
    message, why = decode(text)
    if message is None:
        return error(client, "INVALID_MESSAGE", why)
    data = message["data"]
    type_ = message["type"]
    if type_ == "auth":
        return await _auth(request, client, data)
    if type_ == "ping":
        return await _ping(request, client, data)
    if not client.authenticated:
        return error(client, "UNAUTHORIZED", 'Authenticate first: {"type":"auth","data":{"token":"..."}}')
    handler = request.app[MESSAGE_HANDLERS].get(type_)
    if handler is None:
        return error(client, "UNKNOWN_MESSAGE_TYPE", f"Unknown message type: {type_[:64]}")
    try:
        await handler(request, client, data)
    except ApiError as exc:
        error(client, exc.code, exc.message)


async def _over_budget(client: Client, budget: MessageBudget) -> bool:
    """Spend one message of the budget. True when it is over the budget and must not be handled:
    ``RATE_LIMITED`` was sent, or the session is ending because the client kept going."""
    verdict = budget.take()
    if verdict == MessageBudget.OK:
        return False
    limit = f"at most {budget.burst} messages at once and {budget.per_second:g} a second"
    if verdict == MessageBudget.CLOSE:
        log.info("closing WebSocket client %s: %d messages over the rate limit", client.address, budget.refused)
        client.end_session("error", "RATE_LIMITED", f"Too many messages ({limit}); closing the connection")
    else:
        error(client, "RATE_LIMITED", f"Too many messages ({limit}); this one was not handled",
              retryAfter=budget.retry_after)
    return True


@requires(None)  # authentication happens in the handshake, also through the first message
async def websocket(request: web.Request) -> web.StreamResponse:
    # PINGs are answered here (Client.pong), within the message budget and never waiting on a client that
    # does not read; aiohttp still sends its heartbeat and counts any frame as the answer to it.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE, autoping=False)
    await ws.prepare(request)
    client = Client(ws, str(request[CLIENT]), request.transport)
    principal = request[PRINCIPAL]
    if principal is not None:
        client.subject = principal.subject
        token = bearer_token(request)
        if not principal.local and token:  # a token on the upgrade: the session ends with it
            client.watch_token(token, principal.expires_at)
    hub = request.app[HUB]
    hub.add(client)
    client.start()
    budget = MessageBudget()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + AUTH_TIMEOUT if not client.authenticated else None
    try:
        while not ws.closed:
            timeout = None
            if not client.authenticated and deadline is not None:
                timeout = max(deadline - loop.time(), 0.0)
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await _refuse(client, "AUTH_TIMEOUT", f"No auth message within {AUTH_TIMEOUT:g} s")
                break
            if msg.type not in _MESSAGES:  # CLOSE, CLOSING, CLOSED, ERROR
                break
            if client.ending or await _over_budget(client, budget):
                continue
            if msg.type == WSMsgType.PING:
                await client.pong(msg.data)
                continue
            if msg.type == WSMsgType.PONG:  # the answer to the heartbeat
                continue
            if msg.type == WSMsgType.BINARY:
                error(client, "INVALID_MESSAGE", "Binary messages are not supported; send JSON text")
                continue
            try:
                await _dispatch(request, client, msg.data)
            except Exception:  # a bug, not the client's fault: say so once, close, keep the daemon going
                log.exception("WebSocket message from %s failed", client.address)
                client.end_session("error", "INTERNAL_ERROR", "Internal server error", close_code=1011)
    finally:
        await hub.release(client)
    return ws


def recheck_sessions(hub: Hub, tokens: Any) -> int:
    """After the token files changed: end every session whose token no longer verifies."""
    return hub.recheck(tokens.verify, TokenRefused)
