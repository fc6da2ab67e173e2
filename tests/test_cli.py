"""The ``nekzusd`` command as a real subprocess: start-up with sd_notify, signals, request logging,
check-config and token create. ``Daemon`` is shared with test_shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from nekzusd.auth import Tokens
from tests.conftest import base_config, run_container, unique

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    """``nekzusd serve`` in a subprocess, with a notify socket of our own standing in for systemd."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], log_level: str = "info",
                 watchdog_usec: int | None = None) -> None:
        self.dir = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp_path / "nekzusd.yaml"
        self.write_config(config)
        self.log_level = log_level
        self.watchdog_usec = watchdog_usec
        self.notify_path = tmp_path / "notify.sock"
        self.stderr_path = tmp_path / "stderr.log"
        self.messages: list[tuple[float, str]] = []  # (monotonic time, sd_notify message)
        self.proc: asyncio.subprocess.Process | None = None
        self.base_url = ""
        self.port = 0
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._got = asyncio.Event()

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    #: Words before the command (e.g. ``sh -c 'umask 022 && exec "$@"'``); subclasses set it.
    prefix: tuple[str, ...] = ()

    def _preexec(self) -> None:
        """Runs in the child before exec (e.g. a lower open files limit); nothing by default."""

    async def start(self, timeout: float = 20.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self._sock.setblocking(False)
        self._reader = asyncio.create_task(self._read_notifications())
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix, sys.executable, "-m", "nekzusd", "--log-level", self.log_level, "serve",
            "--config", str(self.config_path), cwd=ROOT, env=env, preexec_fn=self._preexec,
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb"))
        ready = await self.wait_message("READY=1", timeout)
        match = re.search(r"listening on (https?)://(\[[0-9a-f:]+\]|[\d.]+):(\d+)", ready)
        assert match, ready
        scheme, host, port = match.groups()
        self.port = int(port)
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host  # a wildcard: reach it on loopback
        self.base_url = f"{scheme}://{host}:{self.port}"

    async def _read_notifications(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 4096)
            self.messages.append((time.monotonic(), data.decode()))
            self._got.set()

    async def wait_message(self, prefix: str, timeout: float = 15.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for _, message in self.messages:
                    if message.startswith(prefix):
                        return message
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"nekzusd exited {self.proc.returncode}: {self.stderr()[-3000:]}")
                self._got.clear()
                try:
                    async with asyncio.timeout(0.2):
                        await self._got.wait()
                except TimeoutError:
                    pass

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> tuple[int, float]:
        """Send ``sig`` and wait for the exit; returns (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
        return rc, time.monotonic() - started

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()


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
    await asyncio.sleep(1.0)
    pings = [t for t, m in daemon.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 5, daemon.messages  # every 0.1 s (half of WATCHDOG_USEC)
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
        await ws.send_json({"type": "auth", "data": {"token": ""}})
        assert (await ws.receive_json(timeout=5))["type"] == "auth_success"

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
    config["auth"] = {"local_networks": ["127.0.0.1/32"]}  # 127.0.0.2 is remote
    daemon = await daemon_factory(config)
    secret = (tmp_path / "state-log" / "jwt.secret").read_bytes().strip()
    token = Tokens(secret, "nekzus", "nekzus").create("phone-of-ann", ["read:*"], 300)
    cid = await run_container(engine, unique("log"), labels={"nekzus.app.id": "grafana"})
    remote = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=remote) as http:
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
