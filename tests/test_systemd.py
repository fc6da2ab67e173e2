"""sd_notify and the watchdog against a real unix datagram socket, and the unit file checked by systemd's
own tool (systemd-analyze works offline on a unit file; no running systemd is needed)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
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
    # Reload without /bin/kill (absent from minimal installs): the venv's own interpreter sends SIGHUP.
    assert d["ExecReload"] == ['/opt/nekzusd/bin/python3 -I -c "import os, signal, sys; '
                               'os.kill(int(sys.argv[1]), signal.SIGHUP)" $MAINPID']
    assert d["ExecStart"][0].startswith("/opt/nekzusd/bin/nekzusd serve --config ")
    assert "HOME" not in " ".join(d["Environment"]), "the daemon copes without a home; the unit must not hide it"


def test_unit_limits_resources() -> None:
    d = _unit_directives()
    assert d["LimitNOFILE"] == ["65536"]
    assert d["TasksMax"] == ["256"]
    assert d["MemoryHigh"] == ["256M"] and d["MemoryMax"] == ["512M"]
    text = UNIT.read_text()
    for key in ("LimitNOFILE", "TasksMax", "MemoryHigh"):  # each justified by a comment just above it
        above = text.split(f"\n{key}=", 1)[0].rstrip().splitlines()[-1]
        assert above.startswith("#"), key


def test_exec_reload_sends_sighup_with_python_alone() -> None:
    """The ExecReload line, as systemd would split it, run with this interpreter: the target gets SIGHUP."""
    import shlex
    import signal

    command = _unit_directives()["ExecReload"][0]
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGHUP, lambda *a: sys.exit(42))\n"
                              "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        argv = shlex.split(command.replace("$MAINPID", str(child.pid)))
        assert argv[0] == "/opt/nekzusd/bin/python3"
        subprocess.run([sys.executable, *argv[1:]], check=True, timeout=30)
        assert child.wait(timeout=30) == 42
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()

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
    unit.write_text(UNIT.read_text().replace("/opt/nekzusd/bin/nekzusd", str(stand_in))
                    .replace("/opt/nekzusd/bin/python3", sys.executable))
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


def test_daemon_imports_without_a_home_or_a_passwd_entry() -> None:
    """A DynamicUser= service without libnss-systemd: a uid no passwd database knows and no $HOME. aiodocker
    alone fails at import there; the daemon's modules import (HOME becomes /nonexistent)."""
    if os.geteuid() != 0:
        pytest.skip("running as another uid needs root")
    import pwd
    import sysconfig

    uid = 61234  # in systemd's DynamicUser range; unknown here
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    # This interpreter may live under a private home (pyenv under /root): use the system one on the same
    # minor version, with this checkout and the venv's packages on its path.
    python = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if not os.access(python, os.X_OK):
        pytest.skip(f"{python} not installed")
    paths = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(paths)}

    def as_stranger(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-c", code], env=env, user=uid, group=uid, extra_groups=[], cwd="/",
                              capture_output=True, text=True, timeout=60)

    bare = as_stranger("import aiodocker")
    assert bare.returncode != 0 and "Could not determine home directory" in bare.stderr, bare.stderr[-2000:]
    fixed = as_stranger("import nekzusd.cli, nekzusd.runtimes.docker, os; print(os.environ['HOME'])")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip() == "/nonexistent"
