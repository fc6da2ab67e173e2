"""Connection exhaustion without a login, against a real ``nekzusd serve`` process: slow request heads,
idle keep-alive, many connections from one address, and a descriptor table too small for the attack.

Remote clients come from 127.0.0.2-9; 127.0.0.1 is the owner (exempt from the per-client cap by default).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nekzusd import config as config_mod
from nekzusd.app import create_app
from nekzusd.descriptors import Budget
from nekzusd.keys import LOG_STREAMS, RUNTIMES
from tests.harness.app import (authenticate, base_config, remote_config, remote_connector, remote_session,
                               run_container, unique)
from tests.harness.netattack import LimitedDaemon, connect, read_until_closed, still_open

HEAD_TIMEOUT = 1.5


def attack_config(engine, state: Path, **server: Any) -> dict[str, Any]:
    data = remote_config(base_config(engine, state))
    data["server"].update({"head_timeout": HEAD_TIMEOUT, **server})
    return data


@pytest.fixture
async def start(engine, tmp_path: Path):
    daemons: list[LimitedDaemon] = []

    async def make(nofile: int | None = None, **server: Any) -> LimitedDaemon:
        d = LimitedDaemon(tmp_path / f"d{len(daemons)}", {}, nofile=nofile)
        d.write_config(attack_config(engine, d.dir / "state", **server))
        daemons.append(d)
        await d.start()
        return d

    yield make
    for d in daemons:
        await d.close()


async def owner_get(daemon: LimitedDaemon, path: str = "/api/v1/containers", timeout: float = 10) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(daemon.base_url + path) as resp:
            await resp.read()
            return resp.status


async def test_slow_heads_are_cut_and_idle_keepalive_closes(start) -> None:
    daemon = await start(keepalive_timeout=2)
    half = connect("127.0.0.2", daemon.port, b"GET /api/v1/containers HT")
    silent = connect("127.0.0.3", daemon.port)
    dribble = connect("127.0.0.4", daemon.port)
    loop = asyncio.get_running_loop()

    async def one_byte_a_while() -> None:  # slowloris: the head grows forever, one byte at a time
        for byte in b"GET /api/v1/containers HTTP/1.1\r\nX-a: b\r\n":
            try:
                await loop.sock_sendall(dribble, bytes([byte]))
            except OSError:
                return
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(one_byte_a_while())
    try:
        results = await asyncio.gather(*(read_until_closed(s, HEAD_TIMEOUT + 5) for s in (half, silent, dribble)))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        for s in (half, silent, dribble):
            s.close()
    for seconds, got in results:
        assert got == b""  # closed without an answer
        assert HEAD_TIMEOUT - 0.3 <= seconds <= HEAD_TIMEOUT + 3, results

    # A complete request is answered; the kept-alive connection then closes after keepalive_timeout.
    sock = connect("127.0.0.2", daemon.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        seconds, got = await read_until_closed(sock, 10)
    finally:
        sock.close()
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert 1.5 <= seconds <= 5.5, seconds
    assert "no complete request head" in daemon.stderr()


async def test_a_slow_second_head_on_a_kept_alive_connection_is_cut_too(start) -> None:
    daemon = await start(keepalive_timeout=30)
    sock = connect("127.0.0.2", daemon.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    loop = asyncio.get_running_loop()
    try:
        got = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in got or not got.endswith(b"}"):
                got += await loop.sock_recv(sock, 65536)
        assert got.startswith(b"HTTP/1.1 200"), got
        await loop.sock_sendall(sock, b"GET /healthz HT")  # the next head, never finished
        seconds, rest = await read_until_closed(sock, 10)
    finally:
        sock.close()
    assert rest == b"" and HEAD_TIMEOUT - 0.3 <= seconds <= HEAD_TIMEOUT + 3, seconds


def _post_app(app_id: str) -> tuple[bytes, bytes]:
    body = json.dumps({"id": app_id, "name": "Slow"}).encode()
    head = (f"POST /api/v1/apps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head, body


async def test_a_stalled_body_is_cut_and_a_slow_steady_one_is_not(start) -> None:
    daemon = await start()
    loop = asyncio.get_running_loop()
    # The owner (local, no token) starts an upload, sends 5 bytes of its body, then nothing.
    head, body = _post_app("stalled")
    sock = connect("127.0.0.1", daemon.port, head + body[:5])
    try:
        seconds, got = await read_until_closed(sock, 10)
    finally:
        sock.close()
    assert got == b"" and HEAD_TIMEOUT - 0.3 <= seconds <= HEAD_TIMEOUT + 3, (seconds, got)
    # One byte every HEAD_TIMEOUT / 5 seconds: three times longer than the timeout in all, never a stall.
    head, body = _post_app("steady")
    sock = connect("127.0.0.1", daemon.port, head)
    try:
        started = time.monotonic()
        for byte in body:
            await asyncio.sleep(HEAD_TIMEOUT / 5)
            await loop.sock_sendall(sock, bytes([byte]))
        assert time.monotonic() - started > 2 * HEAD_TIMEOUT
        _, got = await read_until_closed(sock, 10)
    finally:
        sock.close()
    assert got.startswith(b"HTTP/1.1 201"), got[:300]
    assert "its request body stalled" in daemon.stderr()


async def test_websocket_and_slow_answers_are_not_cut_by_the_head_timeout(start) -> None:
    daemon = await start()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(daemon.base_url + "/api/v1/ws") as ws:
            await authenticate(ws)
            with pytest.raises(asyncio.TimeoutError):  # nothing to say for twice the head timeout
                await ws.receive(timeout=HEAD_TIMEOUT * 2)
            await ws.send_json({"type": "ping", "data": {}})
            assert (await ws.receive_json(timeout=5))["type"] == "pong"


async def test_per_client_cap_refuses_the_excess_and_spares_others(start) -> None:
    daemon = await start(max_connections_per_client=4, head_timeout=30)
    held = [connect("127.0.0.2", daemon.port, b"GET / HT") for _ in range(4)]
    owner = [connect("127.0.0.1", daemon.port, b"GET / HT") for _ in range(10)]  # exempt: not capped
    try:
        for _ in range(3):
            extra = connect("127.0.0.2", daemon.port, b"GET /api/v1/containers HTTP/1.1\r\n")
            try:
                seconds, got = await read_until_closed(extra, 5)
            finally:
                extra.close()
            assert seconds < 2
            if got:  # the refusal, unless the reset of the unread request overtook it
                head, _, body = got.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 429"), got
                assert json.loads(body)["error"] == "TOO_MANY_CONNECTIONS"
        for sock in held + owner:
            assert await still_open(sock, 0.05)
        # Another address and the owner are served meanwhile.
        async with remote_session("127.0.0.3") as http:
            async with http.get(daemon.base_url + "/healthz") as resp:
                assert resp.status == 200
        assert await owner_get(daemon, "/healthz") == 200
    finally:
        for sock in held + owner:
            sock.close()
    # Once its connections are gone, the address is served again.
    async with asyncio.timeout(10):
        while True:
            async with remote_session() as http:
                try:
                    async with http.get(daemon.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.1)
    assert "refused a connection from 127.0.0.2" in daemon.stderr()


def test_budget_shrinks_with_the_limit_and_keeps_documented_caps_when_it_can() -> None:
    roomy = Budget.for_limit(65536, 20)
    assert (roomy.log_streams, roomy.engine_pool) == (1024, 100)
    small = Budget.for_limit(256, 20)
    assert small.log_streams < 1024 and small.engine_pool < 100
    # every share fits in the limit, with the reserve left over
    assert small.connections + small.log_streams + small.engine_pool + 20 < 256


NOFILE = 256
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]


async def _flood(port: int, per_address: int) -> list[socket.socket]:
    socks = []
    for _ in range(per_address):
        for addr in ADDRESSES:
            try:
                socks.append(connect(addr, port, b"GET /api/v1/containers HT"))
            except OSError:  # refused or reset at once: the point
                pass
    return socks


async def test_many_slow_clients_with_a_small_descriptor_table(start) -> None:
    """8 addresses x 60 half requests (480) against a daemon limited to 256 descriptors: the capped
    connections' share is refused cleanly, the owner is served during the attack, the log stays small,
    and the slow ones are cut after the head timeout."""
    daemon = await start(nofile=NOFILE, head_timeout=3)
    assert f"open files limit {NOFILE}:" in daemon.stderr()
    socks = await _flood(daemon.port, 60)
    try:
        assert await owner_get(daemon) == 200  # during the attack
        outcomes = await asyncio.gather(*(read_until_closed(s, 15) for s in socks))
    finally:
        for s in socks:
            s.close()
    refused_at_once = sum(1 for seconds, _ in outcomes if seconds < 1)
    cut_later = len(outcomes) - refused_at_once
    assert refused_at_once > 100 and cut_later > 50, (refused_at_once, cut_later)
    assert await owner_get(daemon) == 200
    lines = daemon.stderr_lines()
    assert len(lines) < 60 and len(daemon.stderr()) < 12_000, lines[-20:]
    assert not any("Traceback" in line for line in lines)


async def test_descriptor_table_full_logs_a_line_per_few_seconds_and_recovers(start) -> None:
    """Exempt peers are not capped, so the owner's own flood can still fill the table: accepting pauses,
    one line says so (not a traceback per accept), and service resumes once the slow heads are cut."""
    daemon = await start(nofile=NOFILE, head_timeout=3)
    socks: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(400):
            try:
                socks.append(connect("127.0.0.1", daemon.port, b"GET / HT"))
            except OSError:
                pass
        # Past the table, connections wait in the kernel's backlog; they are taken once descriptors free up.
        async with asyncio.timeout(20):
            while "cannot accept connections" not in daemon.stderr():
                await asyncio.sleep(0.1)
        assert await owner_get(daemon, "/healthz", timeout=20) == 200
        elapsed = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    lines = [line for line in daemon.stderr_lines() if "cannot accept" in line]
    assert 1 <= len(lines) <= elapsed / 5 + 2, lines
    assert len(daemon.stderr()) < 12_000
    assert "Traceback" not in daemon.stderr()


async def test_log_stream_cap_follows_the_descriptors_and_fails_cleanly(start, engine) -> None:
    """With 256 descriptors the daemon-wide log-stream cap is lower than 1,024: the subscriptions past it
    get TOO_MANY_SUBSCRIPTIONS, none fails as an engine error, and the engine still answers meanwhile."""
    cid = await run_container(engine, unique("fdlogs"))
    daemon = await start(nofile=NOFILE)
    match = re.search(r"open files limit 256: .* (\d+) log streams", daemon.stderr())
    assert match, daemon.stderr()
    cap = int(match.group(1))
    assert 4 <= cap < 1024
    outcomes: list[str] = []
    async with aiohttp.ClientSession() as http:
        sockets = []
        try:
            for _ in range(cap + 5):  # one subscription per connection, to the same container
                ws = await http.ws_connect(daemon.base_url + "/api/v1/ws")
                sockets.append(ws)
                await authenticate(ws)
                await ws.send_json({"type": "container.logs.subscribe",
                                    "data": {"containerId": cid, "tail": 0}})
                async with asyncio.timeout(15):
                    while True:
                        message = await ws.receive_json()
                        if message["type"] == "container.logs.started":
                            outcomes.append("started")
                            break
                        if message["type"] == "container.logs.error":
                            outcomes.append(message["data"]["error"])
                            break
            assert await owner_get(daemon) == 200
        finally:
            for ws in sockets:
                await ws.close()
    assert outcomes == ["started"] * cap + ["TOO_MANY_SUBSCRIPTIONS"] * 5, outcomes


async def test_tls_listener_cuts_silent_handshakes_and_slow_heads_and_caps_per_client(start) -> None:
    """The default listener speaks TLS: a client that never finishes the handshake, or finishes it and then
    sends half a head, is cut after the head timeout; the per-client cap counts it from accept()."""
    daemon = await start(tls={"mode": "auto"}, head_timeout=2, max_connections_per_client=2)
    assert daemon.base_url.startswith("https://")
    insecure = remote_connector(ssl=False)
    async with aiohttp.ClientSession(connector=insecure) as http:
        async with http.get(daemon.base_url + "/healthz") as resp:
            assert resp.status == 200
    no_hello = connect("127.0.0.3", daemon.port)
    held = connect("127.0.0.3", daemon.port)
    opened = time.monotonic()
    extra = connect("127.0.0.3", daemon.port)  # third from the address: closed at once, not a byte sent
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port, ssl=context,
                                                  local_addr=("127.0.0.4", 0))
    try:
        seconds, got = await read_until_closed(extra, 5)
        assert got == b"" and seconds < 1.5
        writer.write(b"GET /api/v1/containers HT")
        started = time.monotonic()
        async with asyncio.timeout(8):
            try:
                assert await reader.read() == b""
            except (ConnectionResetError, ssl.SSLError):  # an abort, as the daemon does, may read as a reset
                pass
        tls_seconds = time.monotonic() - started
        waited = time.monotonic() - opened
        results = await asyncio.gather(*(read_until_closed(s, 8) for s in (no_hello, held)))
    finally:
        writer.close()
        for s in (no_hello, held, extra):
            s.close()
    assert tls_seconds <= 2 + 3, tls_seconds
    for seconds, got in results:  # closed 2 s after they connected, the handshake never begun
        assert got == b"" and 1.5 <= waited + seconds <= 2 + 3, (waited, results)
    assert "Traceback" not in daemon.stderr()


async def test_the_soft_open_files_limit_is_raised_to_the_hard_one(engine, tmp_path: Path) -> None:
    d = LimitedDaemon(tmp_path / "d", attack_config(engine, tmp_path / "state"), nofile=(256, 1024))
    try:
        await d.start()
        assert "open files limit 1024:" in d.stderr(), d.stderr()
        with open(f"/proc/{d.proc.pid}/limits") as limits:  # type: ignore[union-attr]
            line = next(row for row in limits if row.startswith("Max open files"))
        assert line.split()[3:5] == ["1024", "1024"], line
    finally:
        await d.close()


async def test_the_engine_pool_is_sized_by_the_budget(aiohttp_client, engine, tmp_path: Path) -> None:
    budget = Budget.for_limit(256, 20)
    app = create_app(config_mod.parse(base_config(engine, tmp_path / "state"), env={}), budget)
    client = await aiohttp_client(app)
    runtime = app[RUNTIMES].by_name["docker"]
    assert runtime.client.connector.limit == budget.engine_pool < 100
    assert app[LOG_STREAMS].max_subscriptions == budget.log_streams
    async with client.get("/api/v1/containers") as resp:
        assert resp.status == 200
