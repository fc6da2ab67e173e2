"""sd_notify and the watchdog against a real unix datagram socket, and the unit file checked by systemd's
own tool (systemd-analyze works offline on a unit file; no running systemd is needed)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nekzusd import systemd

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "nekzusd.service"


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()


def test_notify_sends_the_message(notify_socket) -> None:
    path, sock = notify_socket
    assert systemd.notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=hello"


def test_notify_abstract_socket() -> None:
    name = f"nekzusd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_systemd_is_a_quiet_no() -> None:
    assert systemd.notify("READY=1", {}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify.sock"}) is False


def test_watchdog_interval() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


async def test_watchdog_pings_from_the_loop_and_stops_when_the_loop_is_stuck(notify_socket) -> None:
    path, sock = notify_socket
    sock.setblocking(False)
    watchdog = systemd.Watchdog(0.05, {"NOTIFY_SOCKET": path})
    watchdog.start()

    def drain() -> list[bytes]:
        got = []
        while True:
            try:
                got.append(sock.recv(64))
            except BlockingIOError:
                return got

    try:
        await asyncio.sleep(0.5)
        healthy = drain()
        assert len(healthy) >= 4 and set(healthy) == {b"WATCHDOG=1"}
        time.sleep(0.6)  # a stuck loop: blocking on purpose
        stuck = drain()
        assert len(stuck) <= 1, f"pings went on while the loop was blocked: {stuck}"
        await asyncio.sleep(0.3)
        assert drain(), "pings did not resume once the loop ran again"
    finally:
        await watchdog.stop()
    await asyncio.sleep(0.2)
    drain()
    await asyncio.sleep(0.2)
    assert drain() == [], "the watchdog task still runs after stop()"


def _unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def test_unit_asks_for_what_the_issue_requires() -> None:
    d = _unit_directives()
    assert d["Type"] == ["notify"]
    assert d["WatchdogSec"] and d["StateDirectory"] == ["nekzusd"] and d["ConfigurationDirectory"] == ["nekzusd"]
    assert "User" not in d and d["DynamicUser"] == ["yes"] and d["SupplementaryGroups"] == ["docker"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes"}.items():
        assert d[key] == [value], key
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].startswith("/opt/nekzusd/bin/nekzusd serve --config ")


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (make test installs Debian's systemd package)")
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify also checks that ExecStart exists: point it at a real executable for the check."""
    analyze = _analyze()
    stand_in = tmp_path / "nekzusd"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "nekzusd.service"
    unit.write_text(UNIT.read_text().replace("/opt/nekzusd/bin/nekzusd", str(stand_in)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze warns: {result.stderr}"  # unknown keys only warn


def test_readme_records_the_measured_exposure_score() -> None:
    analyze = _analyze()
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for nekzusd.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    score = f"{match.group(1)} {match.group(2)}"
    readme = (ROOT / "README.md").read_text()
    assert f"exposure level {score}" in readme, f"README must record the measured score {score}"
