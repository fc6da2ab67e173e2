"""``nekzusd serve`` as a real subprocess, with a notify socket of our own standing in for systemd.

Used by the command-line, shutdown, state-permission, token and connection-attack tests (and their
subclasses: :class:`tests.harness.netattack.LimitedDaemon`)."""

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

import yaml

#: The repository root: the daemon runs from here so the checkout's ``nekzusd`` package is the one imported.
ROOT = Path(__file__).resolve().parent.parent.parent


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

    async def start(self, timeout: float = 60.0) -> None:  # imports alone took 20 s under a load of 30
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
