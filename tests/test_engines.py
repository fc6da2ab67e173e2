"""Tests of the engine harness itself (tests/harness/engines.py), against real dockerd and Podman.

The fixtures here are private (``h_*``) on purpose: the kill/restart tests must not disturb
the shared session engine of conftest.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from tests.harness.engines import BUSYBOX, GRACE_PERIOD, Engine, EngineUnavailable, start_dockerd, start_podman
from tests.harness.fixtures import short_dir

# Starts engines of its own (session fixtures): one worker runs the whole module, so they start once.
pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("engines")]


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def h_docker():
    base = short_dir("nkhd")
    try:
        eng = start_dockerd(base)
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    eng.ensure_busybox()
    yield eng
    eng.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def h_podman():
    base = short_dir("nkhp")
    try:
        eng = start_podman(base)
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    eng.ensure_busybox()
    yield eng
    eng.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["docker", pytest.param("podman", marks=pytest.mark.podman)])
def h_engine(request) -> Engine:
    return request.getfixturevalue(f"h_{request.param}")


# ---------------------------------------------------------------------------
# helpers


def demux(raw: bytes) -> str:
    """Docker's multiplexed log stream (8-byte frame headers) -> text."""
    out, i = [], 0
    while i + 8 <= len(raw):
        _, size = struct.unpack(">BxxxL", raw[i : i + 8])
        out.append(raw[i + 8 : i + 8 + size])
        i += 8 + size
    return b"".join(out).decode(errors="replace")


def wait_exit(eng: Engine, cid: str, timeout: float = 30) -> int:
    return eng.api_json("POST", f"/containers/{cid}/wait", timeout=timeout)["StatusCode"]


def logs(eng: Engine, cid: str) -> str:
    status, raw = eng.api("GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
    assert status == 200, raw
    return demux(raw)


def inspect(eng: Engine, cid: str) -> dict:
    return eng.api_json("GET", f"/containers/{cid}/json")


def names(eng: Engine) -> dict[str, dict]:
    return {c["Names"][0].lstrip("/"): c for c in eng.api_json("GET", "/containers/json?all=1")}


# ---------------------------------------------------------------------------
# both engines


def test_ping_and_busybox_image(h_engine):
    engine = h_engine
    assert engine.is_running()
    assert engine.url == f"unix://{engine.socket_path}"
    assert engine.api("GET", "/_ping") == (200, b"OK")
    img = engine.api_json("GET", f"/images/{BUSYBOX}/json")
    assert BUSYBOX in img["RepoTags"]
    engine.ensure_busybox()  # idempotent: already there
    engine.start()  # idempotent: already running


def test_busybox_applets_and_limits(h_engine):
    engine = h_engine
    script = (
        "for a in sh sleep yes seq head dd awk; do command -v $a >/dev/null || echo MISSING $a; done; "
        "yes | head -n 2; seq 3 | awk '{s+=$1} END {print \"sum\", s}'; "
        "dd if=/dev/zero bs=512 count=2 2>/dev/null | wc -c; "
        "echo uid=$(id -u) user=$(id -un); ls -ld /tmp | cut -c1-10; echo nofile=$(ulimit -n); echo $GREETING"
    )
    cid = engine.run("applets", script, env={"GREETING": "hi there"}, labels={"test": "applets"})
    assert wait_exit(engine, cid) == 0
    out = logs(engine, cid)
    assert "MISSING" not in out
    assert out.split() == ["y", "y", "sum", "6", "1024", "uid=0", "user=root", "drwxrwxrwt", "nofile=4096", "hi",
                           "there"]
    info = inspect(engine, cid)
    assert info["Config"]["Labels"]["test"] == "applets"
    assert info["HostConfig"]["NetworkMode"] == "none"


def test_run_then_stop_is_fast(h_engine):
    engine = h_engine
    cid = engine.run("sleeper", "sleep 100000", labels={"test": "stop"})
    assert len(cid) == 64
    state = inspect(engine, cid)["State"]
    assert state["Running"] and state["Status"] == "running"
    listed = engine.api_json("GET", '/containers/json?filters={"label":["test=stop"]}')
    assert [c["Id"] for c in listed] == [cid]

    t0 = time.monotonic()
    status, body = engine.api("POST", f"/containers/{cid}/stop")
    took = time.monotonic() - t0
    assert status == 204, body
    # The trap makes PID 1 leave on SIGTERM: far below the grace period, and no SIGKILL.
    assert took < GRACE_PERIOD / 4, f"stop took {took:.2f}s of a {GRACE_PERIOD}s grace period"
    state = inspect(engine, cid)["State"]
    assert not state["Running"] and state["ExitCode"] == 0


def test_untrapped_command_waits_for_grace_period(h_engine):
    engine = h_engine
    """Control for the test above: a bare `sleep` as PID 1 ignores SIGTERM and is killed."""
    cid = engine.run("untrapped", ["sleep", "100000"])
    t0 = time.monotonic()
    assert engine.api("POST", f"/containers/{cid}/stop?t=1")[0] == 204
    took = time.monotonic() - t0
    assert took >= 1.0
    assert inspect(engine, cid)["State"]["ExitCode"] == 137


def test_tty_and_stdin_survive_wrapper(h_engine):
    engine = h_engine
    cid = engine.run("tty", "echo tty=$(tty >/dev/null && echo yes || echo no)", tty=True)
    assert wait_exit(engine, cid) == 0
    _, raw = engine.api("GET", f"/containers/{cid}/logs?stdout=1")
    assert b"tty=yes" in raw  # raw text, no multiplex headers on TTY containers
    # a command's exit status comes through the wrapper
    cid = engine.run("exit3", "exit 3")
    assert wait_exit(engine, cid) == 3


def test_create_without_start(h_engine):
    engine = h_engine
    cid = engine.run("created-only", "sleep 100000", start=False)
    assert inspect(engine, cid)["State"]["Status"] == "created"


def test_kill_and_restart_keep_containers(h_engine):
    engine = h_engine
    keep = engine.run("survivor", "sleep 100000")
    before = set(names(h_engine))
    assert "survivor" in before

    t0 = time.monotonic()
    engine.kill()
    killed_in = time.monotonic() - t0
    assert not engine.is_running()
    assert not engine.socket_path.exists()
    with pytest.raises(OSError):
        engine.api("GET", "/_ping", timeout=2)

    t0 = time.monotonic()
    engine.restart()
    restarted_in = time.monotonic() - t0
    assert engine.is_running()
    after = names(h_engine)
    assert before <= set(after)
    assert after["survivor"]["Id"] == keep
    # dockerd (no live-restore) stops survivors on restart; podman keeps them running
    expected = "exited" if engine.kind == "docker" else "running"
    assert after["survivor"]["State"] == expected
    assert killed_in < 5 and restarted_in < 30


def test_remove_all(h_engine):
    engine = h_engine
    engine.run("doomed", "sleep 100000")
    engine.remove_all()
    assert engine.api_json("GET", "/containers/json?all=1") == []


# ---------------------------------------------------------------------------
# dockerd only


def test_docker_user_defined_network_with_alias(h_docker):
    eng = h_docker
    status, body = eng.api("POST", "/networks/create", {"Name": "nk-net", "Driver": "bridge"})
    assert status == 201, body
    net = eng.api_json("GET", "/networks/nk-net")
    subnet = net["IPAM"]["Config"][0]["Subnet"]
    assert subnet.startswith("198.1"), subnet  # from the engine's private 198.18.0.0/15 pool
    srv = eng.run(
        "web-srv", "echo hello > /tmp/index.html; httpd -f -p 8080 -h /tmp",
        NetworkMode="nk-net",
        config={"NetworkingConfig": {"EndpointsConfig": {"nk-net": {"Aliases": ["web"]}}}},
    )  # fmt: skip
    assert "web" in inspect(eng, srv)["NetworkSettings"]["Networks"]["nk-net"]["Aliases"]
    # busybox-static's wget segfaults here (static glibc); nc and the embedded DNS work
    cli = eng.run(
        "web-cli",
        "sleep 0.5; nslookup web 127.0.0.11 | grep -c Address; "
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 8080 | tail -n 1",
        NetworkMode="nk-net",
    )
    assert wait_exit(eng, cli) == 0
    out = logs(eng, cli).split()
    assert out[-1] == "hello", out
    # a second network can be attached to a running container
    assert eng.api("POST", "/networks/create", {"Name": "nk-net2", "Driver": "bridge"})[0] == 201
    assert eng.api("POST", "/networks/nk-net2/connect", {"Container": srv})[0] == 200
    assert set(inspect(eng, srv)["NetworkSettings"]["Networks"]) == {"nk-net", "nk-net2"}
    bridges = {f"br-{n['Id'][:12]}" for n in eng.user_networks()}
    assert all(Path("/sys/class/net", b).exists() for b in bridges)
    eng.remove_all()
    eng.remove_networks()
    assert eng.user_networks() == []
    assert not any(Path("/sys/class/net", b).exists() for b in bridges)


def test_docker_stale_leftovers_do_not_break_start(short_tmp):
    """A crashed run leaves dockerd, containerd, a shim and a container running in the same
    base dir, plus pid and socket files: a new Engine there still starts, and stop() leaves
    nothing behind."""
    base = short_tmp
    old = start_dockerd(base)
    old.ensure_busybox()
    old.run("left-over", "sleep 100000")
    old_pids = old._stale_processes()
    assert len(old_pids) >= 4  # dockerd, containerd, shim, sh (+ sleep)
    from tests.harness.engines import _LIVE_ENGINES

    _LIVE_ENGINES.remove(old)  # forget it, as a crashed process would
    old._proc = None

    new = Engine("docker", base)
    new.start()
    try:
        assert new.is_running()
        assert not any(os.path.exists(f"/proc/{p}") and p in new._stale_processes() for p in old_pids)
        assert "left-over" in names(new)
    finally:
        new.stop()
    assert new._stale_processes() == set()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(base) not in mounts


def test_missing_binary_is_a_clear_error(short_tmp, monkeypatch):
    monkeypatch.setenv("PATH", str(short_tmp))
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    with pytest.raises(EngineUnavailable, match="apt-get install"):
        Engine("docker", short_tmp / "x")._check_binaries()


def test_daemon_runs_in_own_process_group(h_docker):
    pid = h_docker.pid
    assert pid and os.getpgid(pid) == pid != os.getpgid(0)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for flag in (b"--iptables=false", b"--bridge=none", b"--shutdown-timeout=1"):
        assert flag in cmdline
    info = h_docker.api_json("GET", "/info")
    assert info["Driver"] in ("overlay2", "vfs")
    assert info["DockerRootDir"] == str(h_docker.base_dir / "data")
