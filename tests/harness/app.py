"""Helpers for tests of the daemon app: its config, names, WebSocket messages, waiting, containers, and
clients that the daemon sees as remote.

Remote clients: the daemon under test listens on 127.0.0.1; a client bound to 127.0.0.2-127.0.0.9 is a
different address on the same loopback, so the daemon treats it as a stranger on the network as long as
the config's ``auth.local_networks`` leaves those addresses out. :func:`remote_config` makes such a
config, :func:`remote_connector` binds a client there, and the ``remote_client`` fixture
(tests/harness/fixtures.py) does both for a test client of the app.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from aiohttp import ClientWebSocketResponse
    from aiohttp.test_utils import TestClient

    from tests.harness.engines import Engine

#: The address remote clients come from (any of 127.0.0.2-127.0.0.9 works the same).
REMOTE_ADDR = "127.0.0.2"
#: ``auth.local_networks`` that leaves 127.0.0.2-127.0.0.9 out: only the test's own 127.0.0.1 is local.
LOCAL_ONLY = ["127.0.0.1/32"]


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def base_config(engine: Engine, state_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Config data of a daemon on 127.0.0.1 (any port, no TLS) with ``engine`` as its Docker runtime."""
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "server": {"listen": "127.0.0.1:0", "tls": {"mode": "off"}},
        "runtimes": {"docker": {"host": engine.url}},
        "apps": [{"id": "grafana", "name": "Grafana"}],
    }
    data.update(overrides)
    return data


def remote_config(data: dict[str, Any], **auth: Any) -> dict[str, Any]:
    """``data`` (changed in place and returned) with ``auth.local_networks`` = 127.0.0.1/32 unless ``auth``
    names its own, plus the other ``auth`` keys given (``trusted_proxies=...``, ``rate_limits=...``)."""
    data["auth"] = {"local_networks": list(LOCAL_ONLY), **auth}
    return data


def remote_connector(source: str = REMOTE_ADDR, **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector whose connections come from ``source`` (one of 127.0.0.2-127.0.0.9); ``kwargs`` go to
    aiohttp's TCPConnector (``ssl=False``...)."""
    return aiohttp.TCPConnector(local_addr=(source, 0), **kwargs)


def remote_session(source: str = REMOTE_ADDR, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session from ``source``, for a daemon reached by URL (``client.make_url(...)`` or a
    subprocess's ``base_url``)."""
    return aiohttp.ClientSession(connector=remote_connector(source), **kwargs)


def check_remote(data: dict[str, Any], source: str = REMOTE_ADDR) -> None:
    """Fail early when the config would take ``source`` for a local address (the test would then prove
    nothing about remote clients)."""
    address = ipaddress.ip_address(source)
    nets = (data.get("auth") or {}).get("local_networks")
    if nets is None:
        raise AssertionError("a remote client needs auth.local_networks set (the default has all of loopback)")
    local = [n for n in nets if address in ipaddress.ip_network(n, strict=False)]
    assert not local, f"{source} is inside local_networks {local}: the client would not be remote"


def bearer(data: dict[str, Any], scopes: list[str], subject: str = "viewer", ttl: int = 300) -> dict[str, str]:
    """An Authorization header with a token signed by the daemon's secret (made when its app started)."""
    from nekzusd.auth import Tokens, load_or_create_secret

    secret = load_or_create_secret(Path(data["state_dir"]) / "jwt.secret")
    return {"Authorization": f"Bearer {Tokens(secret, 'nekzus', 'nekzus').create(subject, scopes, ttl)}"}


async def remote_reader(remote_client: Callable[..., Awaitable[TestClient]],
                        data: dict[str, Any]) -> tuple[TestClient, dict[str, str]]:
    """A client from a non-local address, and the headers of a read-only token for it."""
    client = await remote_client(data)
    return client, bearer(data, ["read:containers"])


def raw_websocket(port: int, source: str | None = None) -> socket.socket:
    """A WebSocket to the daemon on a plain socket with a tiny receive buffer (from ``source`` when given):
    upgraded, then left to the test, which reads nothing or writes frames of its own. Blocking."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if source is not None:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def ws_connect(client: TestClient, **kwargs: Any) -> ClientWebSocketResponse:
    """A WebSocket to /api/v1/ws that has completed the auth handshake as a local client."""
    ws = await client.ws_connect("/api/v1/ws", **kwargs)
    await authenticate(ws)
    return ws


async def authenticate(ws: ClientWebSocketResponse, token: str = "", timeout: float = 15.0) -> dict[str, Any]:
    """Send the auth message and return the ``auth_success`` answer. A local client is authenticated from
    the moment it connects, so a broadcast (a container of the test changing state, an app's health, a
    lifecycle result of an earlier step) may come before that answer: those are skipped. A loaded machine
    once took more than 5 s to answer."""
    await ws.send_json({"type": "auth", "data": {"token": token}})
    async with asyncio.timeout(timeout):
        while (reply := await ws.receive_json())["type"] != "auth_success":
            assert reply["type"] not in ("auth_failed", "error"), reply
    return reply


#: Messages every authenticated client gets whatever it asked for (a container of the test changing state,
#: an app's health following it).
BROADCASTS = frozenset({"container.state_changed", "health_change"})


async def next_reply(ws: ClientWebSocketResponse, timeout: float = 15.0) -> dict[str, Any]:
    """The next message that is not a broadcast: the answer to what the test just sent."""
    async with asyncio.timeout(timeout):
        while (message := await ws.receive_json())["type"] in BROADCASTS:
            pass
    return message


async def next_message(ws: ClientWebSocketResponse, type_: str, timeout: float = 15.0,
                       where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """The next message of a type (and matching ``where``), skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message.get("type") == type_ and (where is None or where(message)):
                return message


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.1) -> None:
    """Poll ``predicate`` until it holds (for states nothing announces); TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(interval)


async def run_container(engine: Engine, name: str, cmd: str = "sleep 100000", **kwargs: Any) -> str:
    """engine.run off the event loop (the daemon under test shares the loop); returns the 12-char id."""
    full_id = await asyncio.to_thread(engine.run, name, cmd, **kwargs)
    return full_id[:12]
