"""systemd integration without a dependency: sd_notify over the unix datagram socket in $NOTIFY_SOCKET,
and the watchdog ping.

The ping is sent by a task on the event loop, never by a thread: if the loop gets stuck, the pings stop
and systemd restarts the service (``WatchdogSec=``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message (e.g. "READY=1"); False when not run by systemd or the send failed.

    Never blocks: a full receive queue drops the message, as systemd's own sd_notify does."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when no watchdog is asked for
    (or it is meant for another process, per $WATCHDOG_PID)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000 / 2


class Watchdog:
    """An owned task that pings systemd's watchdog from the event loop."""

    def __init__(self, interval: float, env: Mapping[str, str] | None = None) -> None:
        self.interval = interval
        self._env = env
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="systemd-watchdog")

    async def _run(self) -> None:
        while True:
            notify("WATCHDOG=1", self._env)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
