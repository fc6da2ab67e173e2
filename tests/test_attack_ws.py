"""WebSocket abuse (issue 12, item 5), performed against the real daemon app and the real dockerd.

The attacker connects from 127.0.0.2 while only 127.0.0.1 is local: a remote client, token or not.
Hostile frames (deep nesting, invalid UTF-8, binary, oversized, JSON that is not an envelope) must get a
clean error or a clean close, never a traceback; a flood of messages must not become a flood of engine
calls (counted by a recording proxy in front of the real dockerd); a session ends with its token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import WSMsgType

from nekzusd import auth, ws as ws_module
from nekzusd.auth import Tokens, load_or_create_secret
from tests.harness.app import REMOTE_ADDR, raw_websocket, wait_for
from tests.test_input_limits import RecordingProxy



def tokens_for(config_data: dict[str, Any]) -> Tokens:
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    return Tokens(secret, "nekzus", "nekzus")


async def authenticate(ws, token: str) -> None:
    await ws.send_json({"type": "auth", "data": {"token": token}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "auth_success", reply


async def expect_error(ws, code: str) -> dict[str, Any]:
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "error" and reply["data"]["error"] == code, reply
    assert reply["data"]["message"]
    return reply


async def still_served(ws) -> None:
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}


async def closed_with(ws, code: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Read until the close; returns the JSON messages seen before it and checks the close code."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                seen.append(msg.json())
                continue
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), msg
            break
    assert ws.close_code == code, (ws.close_code, seen[-3:])
    return seen


def no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def test_deeply_nested_frame_before_and_after_auth(remote_client, config_data, caplog):
    """60,000 ``[`` raised RecursionError in the standard json module: a traceback on an upgraded socket."""
    client = await remote_client(config_data)
    token = tokens_for(config_data).create("phone", ["read:*"], 600)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_str("[" * 60_000)  # before authenticating
    await expect_error(ws, "INVALID_MESSAGE")
    await ws.send_str('{"type":"auth","data":{"token":"x","n":' + "{\"a\":" * 5000 + "1" + "}" * 5001 + "}")
    await expect_error(ws, "INVALID_MESSAGE")
    await authenticate(ws, token)  # the connection stayed usable
    for frame in ("[" * 60_000, "{\"a\":" * 1000 + "1" + "}" * 1000, "[" * 1023 + "]" * 1023,
                  '{"type":"ping","data":{"x":' + "[" * 10 + "]" * 10 + "}}"):
        await ws.send_str(frame)
        await expect_error(ws, "INVALID_MESSAGE")
    await still_served(ws)
    await ws.close()
    no_tracebacks(caplog)


@pytest.mark.parametrize("raw", [
    "", " ", "null", "1", '"auth"', "[]", '[{"type":"ping"}]', "true",
    '{"type":5}', '{"type":null,"data":{}}', '{"type":["ping"]}', '{"type":{"a":1}}',
    '{"type":"ping","data":[]}', '{"type":"ping","data":"x"}', '{"type":"ping","data":7}',
    "NaN", '{"type":"ping","data":{"x":NaN}}', '{"type":"ping","data":{"x":' + "9" * 5000 + "}}",
    '{"type":"ping"', "{'type':'ping'}", '{"type":"ping"}garbage', "\ufeff{}",
])
async def test_frames_that_are_not_envelopes_get_invalid_message(remote_client, config_data, caplog, raw):
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    await authenticate(ws, tokens_for(config_data).create("phone", ["read:*"], 600))
    await ws.send_str(raw)
    await expect_error(ws, "INVALID_MESSAGE")
    await still_served(ws)
    await ws.close()
    no_tracebacks(caplog)


async def test_binary_frames_are_refused_and_the_connection_stays(remote_client, config_data, caplog):
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_bytes(b'{"type":"ping"}')  # before auth, too
    await expect_error(ws, "INVALID_MESSAGE")
    await authenticate(ws, tokens_for(config_data).create("phone", ["read:*"], 600))
    await ws.send_bytes(b"\x00\xff" * 100)
    await expect_error(ws, "INVALID_MESSAGE")
    await still_served(ws)
    await ws.close()
    no_tracebacks(caplog)


async def test_invalid_utf8_text_frame_is_closed_1007(remote_client, config_data, caplog):
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_frame(b'{"type":"ping","data":{"x":"\xff\xfe\xc3"}}', WSMsgType.TEXT)
    await closed_with(ws, 1007)
    no_tracebacks(caplog)


async def test_oversized_frame_is_closed_1009(remote_client, config_data, caplog):
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_str('{"type":"auth","data":{"token":"' + "a" * (ws_module.MAX_MESSAGE + 10) + '"}}')
    await closed_with(ws, 1009)
    no_tracebacks(caplog)


@pytest.fixture
async def proxied_remote(engine, remote_client, config_data, tmp_path):
    """A daemon whose engine traffic goes through a RecordingProxy, seen from 127.0.0.2 (remote)."""
    async with RecordingProxy(engine.url, tmp_path / "p.sock") as proxy:
        client = await remote_client(proxy.route(config_data))
        yield client, proxy
        await client.close()


async def test_subscribe_flood_is_bounded_then_closed(proxied_remote, config_data, caplog):
    """1,500 subscribes in a burst from a remote client with a token used to make 1,500 engine look-ups."""
    client, proxy = proxied_remote
    ws = await client.ws_connect("/api/v1/ws")
    await authenticate(ws, tokens_for(config_data).create("phone", ["read:*"], 600))
    before = len(proxy.seen)
    started = time.monotonic()
    for i in range(1500):
        await ws.send_str(f'{{"type":"container.logs.subscribe","data":{{"containerId":"ghost{i}","tail":0}}}}')
    seen = await closed_with(ws, 1008, timeout=20)
    elapsed = time.monotonic() - started
    lookups = [path for path in proxy.container_calls(before) if "/containers/ghost" in path]
    limited = [m for m in seen if m["type"] == "error" and m["data"]["error"] == "RATE_LIMITED"]
    not_found = [m for m in seen if m["type"] == "container.logs.error"]
    allowed = ws_module.RATE_BURST + ws_module.RATE_PER_SECOND * elapsed + 1
    assert len(lookups) <= allowed, (len(lookups), elapsed)
    assert len(lookups) == len(not_found) >= ws_module.RATE_BURST - 1  # the burst was served (auth spent one)
    assert ws_module.STRIKES_TO_CLOSE - 1 <= len(limited) <= ws_module.STRIKES_TO_CLOSE + 2 * elapsed + 1
    assert limited[0]["data"]["details"]["retryAfter"] >= 1
    assert "closing" in limited[-1]["data"]["message"]
    no_tracebacks(caplog)


async def test_local_clients_have_a_message_budget_too(client, caplog):
    """A local dashboard is trusted with the containers, but a runaway loop in it is cut off the same way."""
    ws = await client.ws_connect("/api/v1/ws")
    await authenticate(ws, "")
    for _ in range(300):
        await ws.send_str('{"type":"ping"}')
    seen = await closed_with(ws, 1008)
    pongs = [m for m in seen if m["type"] == "pong"]
    assert ws_module.RATE_BURST - 1 <= len(pongs) <= ws_module.RATE_BURST + 20  # the auth spent one token
    assert seen[-1]["type"] == "error" and seen[-1]["data"]["error"] == "RATE_LIMITED"
    no_tracebacks(caplog)


async def test_a_client_within_the_budget_is_never_limited(remote_client, config_data):
    """The control: a client that paces itself under the rate keeps its connection, however long."""
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    await authenticate(ws, tokens_for(config_data).create("phone", ["read:*"], 600))
    for _ in range(ws_module.RATE_BURST + 20):  # more than a burst, sent as fast as replies come back
        await ws.send_json({"type": "ping"})
        reply = await ws.receive_json(timeout=5)
        if reply["type"] == "error":
            assert reply["data"]["error"] == "RATE_LIMITED"
            await asyncio.sleep(reply["data"]["details"]["retryAfter"])  # the client obeys the hint
    await still_served(ws)
    assert not ws.closed
    await ws.close()


@pytest.mark.parametrize("how", ["message", "header"])
async def test_session_ends_when_its_token_expires(remote_client, config_data, monkeypatch, how):
    monkeypatch.setattr(auth, "LEEWAY", 0)  # a timing constant: the token is accepted until exp exactly
    client = await remote_client(config_data)
    token = tokens_for(config_data).create("phone", ["read:*"], 3)  # exp in whole seconds: 2 to 3 s from now
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    if how == "message":
        ws = await client.ws_connect("/api/v1/ws")
        await authenticate(ws, token)
    else:
        ws = await client.ws_connect("/api/v1/ws", headers={"Authorization": f"Bearer {token}"})
    await still_served(ws)
    seen = await closed_with(ws, 1008, timeout=15)
    assert time.time() >= expires - 0.05  # not before the token's exp
    assert seen[-1] == {"type": "auth_expired",
                        "data": {"error": "TOKEN_EXPIRED", "message": seen[-1]["data"]["message"]}}
    assert "expired" in seen[-1]["data"]["message"]


async def test_expiry_timer_is_cancelled_when_the_client_leaves(remote_client, config_data):
    """A session that ends first leaves no timer behind (the hub holds no client, nothing fires later)."""
    from nekzusd.keys import HUB

    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws")
    await authenticate(ws, tokens_for(config_data).create("phone", ["read:*"], 3600))
    hub = client.server.app[HUB]
    (session,) = hub.clients
    timer = session._expiry
    assert timer is not None and not timer.cancelled()
    await ws.close()
    async with asyncio.timeout(5):
        while hub.clients or not timer.cancelled():
            await asyncio.sleep(0.02)


async def test_compressed_bomb_is_closed_1009(remote_client, config_data, caplog):
    """permessage-deflate: 8 MB of one letter compresses to a few KB; the limit holds on the inflated size."""
    client = await remote_client(config_data)
    ws = await client.ws_connect("/api/v1/ws", compress=15)
    assert ws.compress  # the daemon accepted the extension: the attack is possible at all
    await ws.send_str('{"type":"ping","data":{"x":"' + "a" * (8 << 20) + '"}}')
    await closed_with(ws, 1009)
    no_tracebacks(caplog)


async def test_token_with_an_infinite_expiry_is_refused_cleanly(remote_client, config_data, caplog):
    """Only someone holding the secret could make it, but it must still be a 401, not a 500."""
    import json

    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    body = json.dumps({"sub": "x", "scopes": ["*"], "iss": "nekzus", "aud": "nekzus", "iat": now,
                       "exp": float("inf")})  # json writes Infinity
    signing = f"{b64(json.dumps(header).encode())}.{b64(body.encode())}"
    token = f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"
    client = await remote_client(config_data)
    async with client.get("/api/v1/containers", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "UNAUTHORIZED"
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": token}})
    assert (await ws.receive_json(timeout=5))["type"] == "auth_failed"
    no_tracebacks(caplog)


async def test_token_with_a_deeply_nested_header_is_refused_cleanly(remote_client, config_data, caplog):
    """PyJWT parses a token's header before checking its signature: 45,000 ``[`` in the header (WS auth
    message) and 5,000 (Bearer header, within aiohttp's 8 KiB field limit) must be a plain refusal."""
    import base64

    def token(depth: int) -> str:
        return base64.urlsafe_b64encode(b"[" * depth).rstrip(b"=").decode() + ".e30.c2ln"

    client = await remote_client(config_data)
    async with client.get("/api/v1/containers", headers={"Authorization": f"Bearer {token(5000)}"}) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "UNAUTHORIZED"
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": token(45_000)}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "auth_failed" and reply["data"]["error"] == "UNAUTHORIZED"
    no_tracebacks(caplog)


def _ping_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x89, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_pings_never_read_neither_outlive_the_auth_deadline_nor_log_a_traceback(remote_client, config_data,
                                                                                          caplog):
    """A client with no token sends PING frames and reads nothing (red team): aiohttp's own pong waited for
    ever to be written, so the 10 s auth deadline never came (connections held past 50 s), and the client's
    reset then logged a 37-line traceback. PINGs now spend the message budget and are answered only while
    the client reads."""
    from nekzusd.keys import HUB

    client = await remote_client(config_data)
    hub = client.server.app[HUB]
    # remote, no token: upgraded, then it only sends PING frames and reads nothing
    sock = await asyncio.to_thread(raw_websocket, client.port, REMOTE_ADDR)
    sock.setblocking(False)
    frame, sent = _ping_frame(b"p" * 125), 0
    started = time.monotonic()
    with contextlib.suppress(BlockingIOError, ConnectionError):
        for _ in range(5000):
            sock.send(frame)
            sent += 1
    await wait_for(lambda: _true(not hub.clients), timeout=ws_module.AUTH_TIMEOUT + 10)
    print(f"{sent} pings sent; the connection was let go after {time.monotonic() - started:.1f} s")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, as the red team's client did
    no_tracebacks(caplog)


async def _true(value: bool) -> bool:
    return value
