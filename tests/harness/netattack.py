"""Helpers of the connection-level attacks: a daemon subprocess with a chosen open files limit, raw sockets
from remote-looking loopback addresses (127.0.0.2-9), and waiting for the daemon to close them."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from pathlib import Path
from typing import Any

from tests.harness.daemon import Daemon


class LimitedDaemon(Daemon):
    """``nekzusd serve`` whose RLIMIT_NOFILE is ``nofile`` (soft and hard, or a (soft, hard) pair; set in the
    child before exec), and whose listening address may be IPv6 (``http://[::]:PORT``) or TLS."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], nofile: int | tuple[int, int] | None = None,
                 **kw: Any) -> None:
        super().__init__(tmp_path, config, **kw)
        self.nofile = nofile

    def _preexec(self) -> None:
        if self.nofile is not None:
            soft, hard = self.nofile if isinstance(self.nofile, tuple) else (self.nofile, self.nofile)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def stderr_lines(self) -> list[str]:
        return self.stderr().splitlines()


def connect(source: str, port: int, payload: bytes = b"", target: str = "127.0.0.1") -> socket.socket:
    """A TCP connection from ``source`` that has sent ``payload`` (e.g. half a request line)."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((target, port))
        if payload:
            sock.sendall(payload)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def read_until_closed(sock: socket.socket, timeout: float) -> tuple[float, bytes]:
    """Read until the peer closes (EOF or reset); (seconds it took, bytes read). TimeoutError if it stays open."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    got = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            got += chunk
    return time.monotonic() - started, got


async def still_open(sock: socket.socket, for_seconds: float) -> bool:
    """True if the peer neither closes nor sends anything for ``for_seconds``."""
    try:
        await read_until_closed(sock, for_seconds)
    except TimeoutError:
        return True
    return False
