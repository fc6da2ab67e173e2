"""The ``nekzusd`` command as a real subprocess: start-up with sd_notify, signals, request logging,
check-config and token create (``Daemon`` lives in tests/harness/daemon.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from nekzusd.auth import Tokens
from tests.harness.app import (authenticate, base_config, remote_config, remote_session, run_container, unique,
                               wait_for)
from tests.harness.daemon import ROOT, Daemon


@pytest.fixture
async def daemon_factory(engine, tmp_path: Path):
    daemons: list[Daemon] = []

    async def make(config: dict[str, Any] | None = None, **kwargs: Any) -> Daemon:
        d = Daemon(tmp_path / f"d{len(daemons)}", {}, **kwargs)
        d.write_config(config or base_config(engine, d.dir / "state"))
        daemons.append(d)
        await d.start()
        return d

    yield make
    for d in daemons:
        await d.close()


async def test_ready_after_listening_watchdog_pings_and_sigterm_exits_zero(daemon_factory) -> None:
    daemon = await daemon_factory(watchdog_usec=200_000)
    async with aiohttp.ClientSession() as http:
        # READY=1 came only once the listener was up: the very next request is answered.
        async with http.get(f"{daemon.base_url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with http.get(f"{daemon.base_url}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["runtime"]["reachable"] and body["runtime"]["version"]
    async def five_pings() -> bool:
        return sum(m == "WATCHDOG=1" for _, m in daemon.messages) >= 5
    await wait_for(five_pings, timeout=10, interval=0.05)
    pings = [t for t, m in daemon.messages if m == "WATCHDOG=1"]
    assert pings[4] - pings[0] <= 1.0, daemon.messages  # every 0.1 s (half of WATCHDOG_USEC)
    rc, took = await daemon.stop(signal.SIGTERM)
    assert rc == 0, daemon.stderr()
    assert took < 10
    kinds = [m.split("\n")[0] for _, m in daemon.messages]
    assert kinds.index("READY=1") < kinds.index("STOPPING=1")
    assert "Traceback" not in daemon.stderr()


async def test_sigint_also_stops_cleanly(daemon_factory) -> None:
    daemon = await daemon_factory()
    rc, took = await daemon.stop(signal.SIGINT)
    assert rc == 0 and took < 10, daemon.stderr()
    await daemon.wait_message("STOPPING=1", timeout=1)


async def test_sighup_reloads_apps_and_keeps_connections(daemon_factory, engine, tmp_path: Path) -> None:
    config = base_config(engine, tmp_path / "state-hup")
    daemon = await daemon_factory(config)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{daemon.base_url}/api/v1/ws")
        await authenticate(ws)

        config["apps"] = [{"id": "grafana", "name": "Grafana"}, {"id": "media", "name": "Media server"}]
        daemon.write_config(config)
        await daemon.send(signal.SIGHUP)

        async def app_ids() -> list[str]:
            async with http.get(f"{daemon.base_url}/api/v1/apps") as resp:
                return [a["id"] for a in await resp.json()]

        async with asyncio.timeout(10):
            while await app_ids() != ["grafana", "media"]:
                await asyncio.sleep(0.05)
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5))["type"] == "pong"  # same connection, still served

        # A broken file changes nothing and says why.
        daemon.config_path.write_text("apps: [{id: 'bad id!'}]\n")
        await daemon.send(signal.SIGHUP)
        async with asyncio.timeout(10):
            while "keeping the current apps" not in daemon.stderr():
                await asyncio.sleep(0.05)
        assert await app_ids() == ["grafana", "media"]
        assert "apps[0].id" in daemon.stderr()
        assert not ws.closed
        await ws.close()
    rc, _ = await daemon.stop()
    assert rc == 0


async def test_one_log_line_per_request_and_no_secrets(daemon_factory, engine, tmp_path: Path) -> None:
    config = base_config(engine, tmp_path / "state-log")
    remote_config(config)  # 127.0.0.2 is remote
    daemon = await daemon_factory(config)
    secret = (tmp_path / "state-log" / "jwt.secret").read_bytes().strip()
    token = Tokens(secret, "nekzus", "nekzus").create("phone-of-ann", ["read:*"], 300)
    cid = await run_container(engine, unique("log"), labels={"nekzus.app.id": "grafana"})
    async with remote_session() as http:
        async with http.get(f"{daemon.base_url}/api/v1/containers/{cid}?token=querysecret123",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
        async with http.get(f"{daemon.base_url}/api/v1/containers") as resp:
            assert resp.status == 401
    await daemon.stop()
    lines = [line for line in daemon.stderr().splitlines() if "nekzusd.access" in line]
    assert len(lines) == 2, lines
    ok, refused = lines
    assert re.search(rf"method=GET path=/api/v1/containers/{cid} status=200 duration_ms=[\d.]+ "
                     r"client=127\.0\.0\.2 subject=phone-of-ann$", ok), ok
    assert re.search(r"method=GET path=/api/v1/containers status=401 .* subject=-$", refused), refused
    text = daemon.stderr()
    assert token not in text and token.split(".")[2] not in text and "querysecret123" not in text


async def test_log_level_warning_hides_request_lines(daemon_factory) -> None:
    daemon = await daemon_factory(log_level="warning")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{daemon.base_url}/healthz") as resp:
            assert resp.status == 200
    await daemon.stop()
    assert "nekzusd.access" not in daemon.stderr() and "listening on" not in daemon.stderr()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nekzusd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_check_config(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("server: {listen: '127.0.0.1:8443'}\n")
    result = _cli("check-config", "--config", str(good))
    assert result.returncode == 0 and "OK" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {listen: nowhere}\nbulk: {concurrency: 0}\ncolour: blue\n")
    result = _cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    for key in ("server.listen", "bulk.concurrency", "colour: unknown key"):
        assert key in result.stderr, result.stderr


def test_token_create_prints_a_token_the_daemon_accepts(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    result = _cli("token", "create", "--config", str(config), "--subject", "script", "--scope", "write:*",
                  "--ttl", "1h")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    secret = (tmp_path / "state" / "jwt.secret").read_bytes().strip()
    principal = Tokens(secret, "nekzus", "nekzus").verify(token)
    assert principal.subject == "script" and principal.allows("write")
    assert _cli("token", "create", "--config", str(config), "--subject", "x", "--scope", "read:*",
                "--ttl", "soon").returncode == 2


def test_serve_on_a_busy_port_fails_clearly(tmp_path: Path, engine) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = base_config(engine, tmp_path / "state")
        config["server"]["listen"] = f"127.0.0.1:{port}"
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        result = _cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
