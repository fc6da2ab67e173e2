"""The WebSocket endpoint /api/v1/ws: authentication handshake, message envelope, dispatch.

Every message both ways is ``{"type": ..., "data": {...}}``. Handlers for message types live with
their feature (logs register theirs in ``MESSAGE_HANDLERS``); this module only routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from .auth import CLIENT, PRINCIPAL, READ, requires
from .errors import ApiError
from .hub import Client, envelope
from .keys import HUB, TOKENS

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
HEARTBEAT = 30.0
MAX_MESSAGE = 64 * 1024

MessageHandler = Callable[[web.Request, Client, dict[str, Any]], Awaitable[None]]
MESSAGE_HANDLERS: dict[str, MessageHandler] = {}


def error(client: Client, code: str, message: str) -> None:
    client.send(envelope("error", {"error": code, "message": message}))


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
    try:
        message = json.loads(text)
    except ValueError:
        return error(client, "INVALID_MESSAGE", "Message is not valid JSON")
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return error(client, "INVALID_MESSAGE", 'Message must be an object {"type": ..., "data": {...}}')
    data = message.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return error(client, "INVALID_MESSAGE", "Field data must be an object")
    type_ = message["type"]
    if type_ == "auth":
        return await _auth(request, client, data)
    if type_ == "ping":
        return await _ping(request, client, data)
    if not client.authenticated:
        return error(client, "UNAUTHORIZED", 'Authenticate first: {"type":"auth","data":{"token":"..."}}')
    handler = MESSAGE_HANDLERS.get(type_)
    if handler is None:
        return error(client, "UNKNOWN_MESSAGE_TYPE", f"Unknown message type: {type_[:64]}")
    try:
        await handler(request, client, data)
    except ApiError as exc:
        error(client, exc.code, exc.message)


@requires(None)  # authentication happens in the handshake, also through the first message
async def websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    client = Client(ws, str(request[CLIENT]), request.transport)
    principal = request[PRINCIPAL]
    if principal is not None:
        client.subject = principal.subject
    hub = request.app[HUB]
    hub.add(client)
    client.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + AUTH_TIMEOUT if not client.authenticated else None
    try:
        while not ws.closed:
            timeout = None
            if not client.authenticated:
                timeout = max(deadline - loop.time(), 0.0)
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await _refuse(client, "AUTH_TIMEOUT", f"No auth message within {AUTH_TIMEOUT:g} s")
                break
            if msg.type == WSMsgType.TEXT:
                await _dispatch(request, client, msg.data)
            elif msg.type == WSMsgType.BINARY:
                error(client, "INVALID_MESSAGE", "Binary messages are not supported")
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                break
    finally:
        await hub.release(client)
    return ws
