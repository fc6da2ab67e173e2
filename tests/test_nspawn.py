"""nekzusd under a real systemd, installed the two ways its users install it, on a minimal Debian.

One container (tests/harness/nspawn.py: a cached mmdebstrap minbase root, booted with systemd-nspawn) and one
private dockerd whose socket directory is bound into it. First `make install` exactly as the README says
for an offline machine (a wheelhouse made by `make wheelhouse`), with libnss-systemd out of nsswitch.conf
(the transient user then has no name and no home); then the .deb made by `make deb`, with libnss-systemd
in. Each time, under systemd: start reaches `active` through READY=1, /readyz answers 200 through the
docker group, reload re-reads the apps (there is no /bin/kill in the root), the main process has no
capabilities and no root uid, the state is private, the engine going away and coming back is survived,
the watchdog restarts a SIGSTOPped daemon, stop is clean within TimeoutStopSec; then removal leaves no unit.

The engine's socket is bound as a directory (/run/nekzusd-engine) and reached through the symlink
/run/docker.sock, the default config's path: a bind mount of the socket file itself would keep pointing
at the old socket once the engine is restarted and makes a new one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.harness import nspawn
from tests.harness.engines import EngineUnavailable, start_dockerd
from tests.harness.machine import copy_checkout
from tests.harness.nspawn import Machine, wait_for

# One worker runs the module: its tests share the booted machine (module fixture) and follow each other.
pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.xdist_group("nspawn")]

REPO = Path(__file__).resolve().parent.parent
DOCKER_GID = 4242  # the container's docker group; the test engine's socket is given this group
ENGINE_DIR = "/run/nekzusd-engine"
WATCHDOG = 6  # seconds; the unit's 30 s, shortened by a drop-in so that the test waits less
TIMEOUT_STOP = 15  # the unit's TimeoutStopSec
TIMINGS: dict[str, float] = {}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must boot the systemd test: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _give_socket_to_docker_group(engine) -> None:
    os.chown(engine.socket_path, 0, DOCKER_GID)
    os.chmod(engine.socket_path, 0o660)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        nspawn.check_host()
    except nspawn.NspawnUnavailable as exc:
        _unavailable(str(exc))
    started = time.monotonic()
    root, cold = nspawn.cached_root()
    TIMINGS["root (cold build)" if cold else "root (cached)"] = time.monotonic() - started
    started = time.monotonic()
    wheels, cold = nspawn.cached_wheelhouse(REPO, sys.executable)
    TIMINGS["wheelhouse (cold)" if cold else "wheelhouse (cached)"] = time.monotonic() - started

    base = Path(tempfile.mkdtemp(prefix="nkn-"))  # short: unix socket paths are limited
    base.chmod(0o711)  # the service's transient user must traverse it to reach the socket
    try:
        engine = start_dockerd(base)
    except EngineUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(str(exc))
    _give_socket_to_docker_group(engine)

    work = tmp_path_factory.mktemp("nspawn")
    started = time.monotonic()
    run_root = work / "root"
    nspawn.run_cp(root, run_root)
    TIMINGS["copy the root"] = time.monotonic() - started
    machine = Machine(run_root, work / "nspawn.log", {str(base): ENGINE_DIR})
    try:
        TIMINGS["boot"] = machine.boot()
        machine.run(f"groupadd -g {DOCKER_GID} docker && ln -s {ENGINE_DIR}/docker.sock /run/docker.sock")
        port = _free_port()
        dropin = machine.path("/etc/systemd/system/nekzusd.service.d/test.conf")
        dropin.parent.mkdir(parents=True)
        dropin.write_text(f"# The test's port on the shared network, and a short watchdog.\n[Service]\n"
                          f"Environment=NEKZUSD_LISTEN=127.0.0.1:{port}\nWatchdogSec={WATCHDOG}s\n")
        yield {"machine": machine, "engine": engine, "port": port, "wheels": wheels, "work": work}
    finally:
        machine.poweroff()
        engine.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        print("\nnspawn timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def _get(port: int, path: str) -> tuple[int, object]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the daemon's own self-signed certificate (tls.mode auto)
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return 0, None


def _status_field(machine: Machine, pid: int, field: str) -> str:
    out = machine.run(f"cat /proc/{pid}/status").stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(field + ":"))


def _main_pid(machine: Machine) -> int:
    return int(machine.show("nekzusd", "MainPID")["MainPID"])


def check_service(lab: dict, flow: str, nss: bool) -> None:
    """Every check of the issue against the running service (started by the caller)."""
    machine: Machine = lab["machine"]
    port: int = lab["port"]
    engine = lab["engine"]
    timed = lambda name, since: TIMINGS.__setitem__(f"{flow}: {name}", time.monotonic() - since)  # noqa: E731

    # Active through READY=1: Type=notify leaves "activating" only on READY=1, and STATUS= came with it.
    show = machine.show("nekzusd", "ActiveState", "SubState", "StatusText", "NRestarts", "MainPID", "Type")
    assert (show["Type"], show["ActiveState"], show["SubState"]) == ("notify", "active", "running"), show
    assert show["StatusText"].startswith("listening on https://127.0.0.1:"), show
    assert show["NRestarts"] == "0", show
    pid = int(show["MainPID"])

    # The transient user: NSS knows it only with libnss-systemd; the daemon started either way.
    uid = int(_status_field(machine, pid, "Uid").split()[0])
    known = machine.run(f"getent passwd {uid}", check=False).returncode == 0
    assert known is nss, f"getent passwd {uid}: {'known' if known else 'unknown'}, expected nss={nss}"

    # No root, no capabilities, no way to gain any; the docker group as a supplementary group.
    uids = _status_field(machine, pid, "Uid").split()
    assert "0" not in uids and uids[0] == uids[1] == uids[2] == uids[3], uids
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(_status_field(machine, pid, cap), 16) == 0, cap
    assert _status_field(machine, pid, "NoNewPrivs") == "1"
    assert str(DOCKER_GID) in _status_field(machine, pid, "Groups").split()

    # Through the docker group to the engine.
    status, body = wait_for("/readyz 200", lambda: (s := _get(port, "/readyz"))[0] == 200 and s, 60)
    assert status == 200, body

    # State private: 0700 directory (under /var/lib/private, 0700 root), every file 0600 and the user's.
    listing = machine.run("stat -c '%a|%u|%F|%n' /var/lib/private /var/lib/private/nekzusd && "
                          "find /var/lib/private/nekzusd -mindepth 1 -exec stat -c '%a|%u|%F|%n' {} +").stdout
    lines = [line.split("|") for line in listing.splitlines()]
    assert lines[0][0] == "700" and lines[1][:2] == ["700", str(uid)], listing
    files = [line for line in lines[2:] if line[2].startswith("regular")]  # "regular (empty) file"
    names = {line[3].rsplit("/", 1)[1] for line in files}
    assert {"tls.key", "jwt.secret", "nekzusd.db"} <= names, listing
    for line in lines[2:]:
        assert line[:2] == (["600", str(uid)] if line in files else ["700", str(uid)]), line
    assert machine.run("readlink /var/lib/nekzusd").stdout.strip() == "private/nekzusd"

    # Reload re-reads the apps, with no /bin/kill on the system, and keeps the process.
    assert not any(machine.path(p).exists() for p in ("/bin/kill", "/usr/bin/kill", "/sbin/kill", "/usr/sbin/kill"))
    config = machine.path("/etc/nekzusd/nekzusd.yaml")
    app_id = "reload-" + flow.replace(" ", "-")
    config.write_text(config.read_text() + f"  - {{id: {app_id}, name: Reloaded}}\n")
    since = time.monotonic()
    machine.run("systemctl reload nekzusd")
    try:
        wait_for("the reloaded app", lambda: any(a.get("id") == app_id
                                               for a in _get(port, "/api/v1/apps")[1] or []), 30)
    except AssertionError as exc:
        journal = machine.run("journalctl -q --no-pager | grep -v nekzusd.access | tail -n 25").stdout
        raise AssertionError(f"{exc}; apps: {_get(port, '/api/v1/apps')}; journal:\n{journal}") from None
    timed("reload until the app is listed", since)
    assert _main_pid(machine) == pid

    # The engine goes away and comes back: not ready meanwhile, ready again after, never restarted.
    since = time.monotonic()
    engine.kill()
    wait_for("/readyz 503 without the engine", lambda: _get(port, "/readyz")[0] == 503, 60)
    engine.restart()
    _give_socket_to_docker_group(engine)
    wait_for("/readyz 200 with the engine back", lambda: _get(port, "/readyz")[0] == 200, 60)
    timed("engine kill, restart, ready again", since)
    show = machine.show("nekzusd", "ActiveState", "NRestarts", "MainPID")
    assert show == {"ActiveState": "active", "NRestarts": "0", "MainPID": str(pid)}, show

    # The watchdog restarts a stuck (SIGSTOPped) daemon.
    assert machine.show("nekzusd", "WatchdogUSec")["WatchdogUSec"] == f"{WATCHDOG}s"
    since = time.monotonic()
    machine.run(f"python3 -c 'import os, signal; os.kill({pid}, signal.SIGSTOP)'")
    restarted = wait_for("the watchdog's restart", lambda: (
        (s := machine.show("nekzusd", "ActiveState", "NRestarts", "MainPID"))["NRestarts"] == "1"
        and s["ActiveState"] == "active" and s), WATCHDOG * 4 + TIMEOUT_STOP + 30)
    timed("SIGSTOP until restarted and active", since)
    assert restarted["MainPID"] not in ("0", str(pid)), restarted
    journal = machine.run("journalctl -q -u nekzusd --no-pager").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]
    wait_for("/readyz 200 after the restart", lambda: _get(port, "/readyz")[0] == 200, 60)

    # Stop is clean: SIGTERM is enough, well within TimeoutStopSec.
    since = time.monotonic()
    machine.run("systemctl stop nekzusd", timeout=TIMEOUT_STOP + 30)
    took = time.monotonic() - since
    TIMINGS[f"{flow}: stop"] = took
    show = machine.show("nekzusd", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert show["ActiveState"] == "inactive" and show["Result"] == "success", show
    assert took < TIMEOUT_STOP, took


def test_make_install_offline_without_libnss_systemd(lab) -> None:
    machine: Machine = lab["machine"]
    machine.nss_systemd(False)
    src = machine.path("/root/nekzusd")
    copy_checkout(REPO, src)
    shutil.copytree(lab["wheels"], src / "wheels")
    # What pip needs to build nekzusd from the checkout in isolation, with no index.
    assert {"setuptools", "wheel"} <= {w.name.split("-")[0] for w in (src / "wheels").glob("*.whl")}
    # The README's offline install, word for word.
    since = time.monotonic()
    machine.run('cd /root/nekzusd && make install PIP_INSTALL_ARGS="--no-index --find-links=wheels/"', timeout=900)
    TIMINGS["make install"] = time.monotonic() - since
    since = time.monotonic()
    machine.run("systemctl enable --now nekzusd", timeout=120)
    TIMINGS["make install: enable --now"] = time.monotonic() - since

    check_service(lab, "make install", nss=False)

    machine.run("cd /root/nekzusd && make uninstall", timeout=120)
    assert machine.show("nekzusd", "LoadState")["LoadState"] == "not-found"
    for gone in ("/etc/systemd/system/nekzusd.service", "/etc/systemd/system/multi-user.target.wants/nekzusd.service",
                 "/opt/nekzusd"):
        assert not machine.path(gone).exists() and not machine.path(gone).is_symlink(), gone
    assert machine.path("/etc/nekzusd/nekzusd.yaml").is_file(), "uninstall keeps the config"
    assert machine.path("/var/lib/private/nekzusd/tls.key").is_file(), "uninstall keeps the state"


def test_deb_with_libnss_systemd_install_remove_purge(lab) -> None:
    machine: Machine = lab["machine"]
    machine.nss_systemd(True)
    # A machine that never had nekzusd: nothing left from the make install test.
    machine.run("rm -rf /etc/nekzusd /var/lib/private/nekzusd /var/lib/nekzusd")
    out = lab["work"] / "deb"
    since = time.monotonic()
    nspawn.make(REPO, "deb", f"DEBDIR={out}", f'PIP_INSTALL_ARGS=--no-index --find-links={lab["wheels"]}')
    TIMINGS["make deb"] = time.monotonic() - since
    (deb,) = out.glob("nekzusd_*.deb")
    assert deb.name.endswith(f"_{nspawn.host_arch()}.deb"), deb.name
    fields = nspawn.deb_fields(deb, "Depends", "Recommends", "Architecture")
    assert fields["Depends"].startswith("python3 (>= 3.") and "docker" not in fields["Depends"], fields
    assert fields["Recommends"] == "docker.io | docker-ce | podman-docker", fields
    shutil.copy(deb, machine.path(f"/root/{deb.name}"))

    # No docker group yet (Docker not installed, or a Kubernetes-only host): the package makes one.
    machine.run("groupdel docker")
    since = time.monotonic()
    machine.run(f"apt-get install -y -q /root/{deb.name}", timeout=600)
    TIMINGS["deb: apt install (postinst starts it)"] = time.monotonic() - since
    assert machine.run("systemctl is-enabled nekzusd", check=False).stdout.strip() == "enabled"
    assert machine.run("systemctl is-active nekzusd", check=False).stdout.strip() == "active"
    made = machine.run("getent group docker").stdout.split(":")
    assert made[0] == "docker" and int(made[2]) < 1000, made  # a system group
    # Our engine's socket belongs to DOCKER_GID: give the group that number, as Docker's package would have.
    machine.run(f"groupmod -g {DOCKER_GID} docker && systemctl restart nekzusd")
    assert machine.path("/lib/systemd/system/nekzusd.service").is_file()
    conffiles = machine.run("dpkg-query -W -f='${Conffiles}' nekzusd").stdout
    assert "/etc/nekzusd/nekzusd.yaml" in conffiles

    check_service(lab, "deb", nss=True)

    # Remove: the program and the unit go, the config and the state stay.
    machine.run("systemctl start nekzusd")
    machine.run("apt-get remove -y -q nekzusd", timeout=300)
    assert machine.show("nekzusd", "LoadState", "ActiveState") == {"LoadState": "not-found",
                                                                   "ActiveState": "inactive"}
    for gone in ("/lib/systemd/system/nekzusd.service", "/opt/nekzusd",
                 "/etc/systemd/system/multi-user.target.wants/nekzusd.service"):
        assert not machine.path(gone).exists() and not machine.path(gone).is_symlink(), gone
    assert "reload-deb" in machine.path("/etc/nekzusd/nekzusd.yaml").read_text(), "remove keeps the config"
    assert machine.path("/var/lib/private/nekzusd/tls.key").is_file(), "remove keeps the state"

    # Purge: config and state go too.
    machine.run("dpkg --purge nekzusd", timeout=300)
    for gone in ("/etc/nekzusd", "/var/lib/nekzusd", "/var/lib/private/nekzusd"):
        assert not machine.path(gone).exists() and not machine.path(gone).is_symlink(), gone
    assert machine.run("dpkg -s nekzusd", check=False).returncode != 0
