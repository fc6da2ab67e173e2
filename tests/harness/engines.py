"""Real, private container engines for the test suite (no mocks).

Starts a private Docker Engine (``dockerd``) or Podman API service under a directory the
caller owns, builds a busybox image locally (no registry is reachable) and offers a few
synchronous helpers for test setup.  Everything talks over the engine's unix socket.

Usage (plain synchronous calls, fit for session fixtures)::

    eng = start_dockerd(tmp_dir)          # or start_podman(tmp_dir); EngineUnavailable -> skip
    eng.ensure_busybox()                  # imports localhost/busybox:latest (built locally)
    cid = eng.run("web", "sleep 100000", labels={"a": "b"}, RestartPolicy={"Name": "always"})
    status, body = eng.api("GET", f"/containers/{cid}/json")
    eng.kill(); eng.restart(); eng.stop()

Keep ``base_dir`` short (unix socket paths are limited to 107 bytes; checked).

Measured on the development machine (Debian 12, 2 cores, dockerd 20.10.24 overlay2, Podman
4.3.1 + runc, other test sessions loading the CPU), min-max of 3 rounds, 40 for stop:

    ============================================  ============  ============
    step                                          dockerd       podman
    ============================================  ============  ============
    start() until GET /_ping OK (cold data dir)   0.12-0.50 s   0.05-0.07 s
    ensure_busybox(): build rootfs tar (once)     0.013 s (2 MB, 269 applets)
    ensure_busybox(): import                      0.08-0.10 s   0.11-0.20 s
    ensure_busybox(): already present             0.001 s       0.003 s
    run() create + start + trap ready             0.19-0.40 s   0.08-0.22 s
    POST /containers/{id}/stop (trap, exit 0)     0.04-0.11 s   0.05-0.24 s
    same, bare ``sleep`` as PID 1, ?t=1           1.1 s, exit 137 (full grace, SIGKILL)
    POST /containers/{id}/restart                 0.15-0.21 s   0.07-0.12 s
    kill()                                        0.007 s       0.007 s
    restart() after kill() (4 containers)         0.64-0.84 s   0.05 s
    remove_all() (4 containers)                   0.02 s        0.41-0.50 s
    stop() (1 running container)                  1.09 s        0.09-0.19 s
    whole tests/test_engines.py                   11-13 s
    ============================================  ============  ============

dockerd's stop() is 1 s because dockerd waits that long for its containerd to exit after
"Daemon shutdown complete".

Behaviour worth knowing:

* The trap race: ``POST /start`` returns while PID 1 is still ``runc init`` (a Go program that
  catches every signal) or ``sh`` before its ``trap``; a stop then costs the full 10 s grace
  period and ends in SIGKILL (seen in 1-2 of 40 immediate stops under load).  run() therefore
  waits (wait_trap) until /proc/<pid>/status shows ``sh`` with SIGTERM caught: 0 of 80 since.
* After kill() + restart(), dockerd (no live-restore) stops the containers that survived the
  crash (they persist, State "exited", exit 0 thanks to the trap; restart policies apply);
  Podman keeps them running (conmon is independent of the API service).
* Podman 4.3's compat create stores ``StopTimeout`` 0 when the body has none, so a plain
  ``POST /stop`` SIGKILLs at once (exit 137).  run() sets ``StopTimeout`` 10 on Podman.
  A daemon creating containers on Podman through the Docker API meets the same thing.
* User-defined networks work on dockerd with ``--iptables=false --bridge=none``:
  ``POST /networks/create {"Driver": "bridge"}`` creates a Linux bridge ``br-<id12>`` on the
  host with a /24 from ``--default-address-pool``; containers on it get addresses, aliases
  (``NetworkingConfig.EndpointsConfig.<net>.Aliases``) resolve through the embedded DNS at
  127.0.0.11 (no iptables needed), containers reach each other (nc, ping), and a second
  network can be connected to a running container.  There is no default ``bridge`` network
  (``--bridge=none``); a container in ``NetworkMode none`` cannot be connected to a network.
  The pool is a /20 of 198.18.0.0/15 (benchmark range, never routed) that no host route
  overlaps at start, so several private dockerds on one host do not collide.  dockerd leaves
  its bridges (and routes) behind on shutdown: stop() deletes user networks first, and the
  bridges of a killed daemon are deleted from a list (base_dir/bridges.txt).
* busybox-static's ``wget`` segfaults (exit 139) even with a numeric address (static glibc);
  use ``nc`` for HTTP checks inside containers.  ``nslookup``, ``httpd`` and ``ping`` work.
* Cleanup: daemons run in their own session/process group; kill() SIGKILLs the group and the
  daemon's descendants (containerd is in a session of its own).  stop() then SIGKILLs every
  process whose command line names base_dir (containerd, shims, conmon) and their
  descendants (container processes), deletes leftover bridges and unmounts everything below
  base_dir, so ``shutil.rmtree(base_dir)`` works afterwards.  An atexit hook stops engines a
  test forgot; a small watchdog child (this file run with ``--reap``) does the same cleanup
  if the test process dies by SIGKILL.  A new Engine in a base_dir where a crashed run left a
  daemon, shims, containers, pid files and the socket kills those first.
"""

from __future__ import annotations

import atexit
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

__all__ = [
    "BUSYBOX",
    "GRACE_PERIOD",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "start_dockerd",
    "start_podman",
    "shell_cmd",
    "build_busybox_rootfs",
]

BUSYBOX = "localhost/busybox:latest"
#: Docker's and Podman's default stop grace period (seconds) for a container.
GRACE_PERIOD = 10
START_TIMEOUT = 30.0
#: Address pool from which a private dockerd hands out user-defined networks (RFC 2544
#: benchmark range; never routed).  Each engine takes one free /20 of it.
NETWORK_POOL_BASE = "198.18.0.0/15"

_SUN_PATH_MAX = 107


class EngineError(RuntimeError):
    """An engine misbehaved (failed to start, API call failed, ...)."""


class EngineUnavailable(EngineError):
    """The engine cannot run on this machine; ``str(exc)`` is a reason fit for pytest.skip."""


# ---------------------------------------------------------------------------
# small process helpers (Linux /proc)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) for every process we can see."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[pid] = (ppid, cmd)
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def _kill_pids(pids: set[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        if pid in (os.getpid(), 1):
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if _pid_alive(p)}
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _unmount_under(path: Path) -> None:
    """Lazily unmount every mount point at or below ``path`` (deepest first)."""
    prefix = str(path.resolve())
    targets = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt == prefix or mnt.startswith(prefix + "/"):
                    targets.append(mnt)
    except OSError:
        return
    for mnt in sorted(set(targets), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cleanup_base_dir(base_dir: Path, exclude: set[int] = frozenset()) -> None:
    """SIGKILL every process whose command line names base_dir (daemon, containerd, shims,
    conmon) and all their descendants (container processes), delete the host bridges listed
    in base_dir/bridges.txt, unmount whatever is mounted below base_dir."""
    table = _proc_table()
    ours = set(exclude)
    pid = os.getpid()
    while pid > 1 and pid not in ours:  # never this process or its ancestors
        ours.add(pid)
        pid = table.get(pid, (0, ""))[0]
    needle = str(base_dir) + "/"
    roots = {p for p, (_, cmd) in table.items() if needle in cmd and p not in ours}
    victims = _descendants(roots, table) - ours
    if victims:
        _kill_pids(victims)
        _wait_gone(victims, 10)
    try:
        bridges = (base_dir / "bridges.txt").read_text().split()
    except OSError:
        bridges = []
    for br in bridges:
        if os.path.exists(f"/sys/class/net/{br}"):
            subprocess.run(["ip", "link", "delete", br], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _unmount_under(base_dir)


def _reaper_main(owner_pid: int, base_dir: str) -> None:
    """Watchdog child: when the test process dies without cleaning up (SIGKILL, CI timeout),
    kill the engine and everything it started.  A normal stop() kills the watchdog first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == owner_pid:
        time.sleep(0.25)
    base = Path(base_dir)
    try:  # learn the bridges of user-defined networks while dockerd still answers
        status, data = _unix_request(base / "docker.sock", "GET", "/networks", timeout=3)
        names = {f"br-{n['Id'][:12]}" for n in json.loads(data) if n.get("Driver") == "bridge"}
        with open(base / "bridges.txt", "a") as fh:
            fh.writelines(f"{n}\n" for n in names)
    except Exception:
        pass
    _cleanup_base_dir(base)


# ---------------------------------------------------------------------------
# HTTP over a unix socket


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _unix_request(sock_path: Path, method: str, path: str, body=None, headers=None, timeout: float = 30):
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview, str)) and not hasattr(body, "read"):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# busybox root filesystem


_ROOTFS_LOCK = threading.Lock()
_ROOTFS_TAR: Path | None = None
_ROOTFS_TMPDIR: str | None = None

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_GROUP = "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"
#: Applets the test suite relies on; checked when the rootfs is built.
REQUIRED_APPLETS = ("sh", "sleep", "yes", "seq", "head", "dd", "awk", "cat", "echo", "env", "wc")


def _is_static_elf(path: str) -> bool:
    with open(path, "rb") as fh:
        hdr = fh.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # ELF64 only
            return False
        order = "little" if hdr[5] == 1 else "big"
        phoff = int.from_bytes(hdr[32:40], order)
        phentsize = int.from_bytes(hdr[54:56], order)
        phnum = int.from_bytes(hdr[56:58], order)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    for i in range(phnum):
        if int.from_bytes(table[i * phentsize : i * phentsize + 4], order) == 3:  # PT_INTERP
            return False
    return True


def _find_static_busybox() -> str:
    for cand in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox") or ""):
        if cand and os.path.isfile(cand):
            real = os.path.realpath(cand)
            if _is_static_elf(real):
                return real
            raise EngineUnavailable(
                f"{real} is dynamically linked; install the static one: apt-get install -y busybox-static"
            )
    raise EngineUnavailable("busybox not found; install it: apt-get install -y busybox-static")


def build_busybox_rootfs() -> Path:
    """Build (once per process) a tar of a minimal busybox root filesystem; returns its path."""
    global _ROOTFS_TAR, _ROOTFS_TMPDIR
    with _ROOTFS_LOCK:
        if _ROOTFS_TAR is not None and _ROOTFS_TAR.exists():
            return _ROOTFS_TAR
        bb = _find_static_busybox()
        listing = subprocess.run([bb, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
        applets = {os.path.basename(p): p for p in listing}
        missing = [a for a in REQUIRED_APPLETS if a not in applets]
        if missing:
            raise EngineUnavailable(f"{bb} lacks applets {missing}")
        _ROOTFS_TMPDIR = tempfile.mkdtemp(prefix="nekzus-busybox-")
        atexit.register(shutil.rmtree, _ROOTFS_TMPDIR, True)
        out = Path(_ROOTFS_TMPDIR) / "rootfs.tar"

        mtime = 1_700_000_000  # fixed so the image is reproducible

        def info(name: str, kind: bytes, mode: int, **kw) -> tarfile.TarInfo:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, mtime, 0, 0
            for k, v in kw.items():
                setattr(ti, k, v)
            return ti

        with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
            dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "dev", "proc", "sys",
                    "run"}
            dirs |= {os.path.dirname(p) for p in listing if os.path.dirname(p)}
            for d in sorted(dirs):
                tar.addfile(info(d, tarfile.DIRTYPE, 0o755))
            tar.addfile(info("tmp", tarfile.DIRTYPE, 0o1777))
            tar.addfile(info("var/tmp", tarfile.DIRTYPE, 0o1777))
            with open(bb, "rb") as fh:
                data = fh.read()
            tar.addfile(info("bin/busybox", tarfile.REGTYPE, 0o755, size=len(data)), io.BytesIO(data))
            for path in sorted(set(listing)):
                if path == "bin/busybox":
                    continue
                tar.addfile(info(path, tarfile.SYMTYPE, 0o777, linkname="/bin/busybox"))
            for name, text in (("etc/passwd", _PASSWD), ("etc/group", _GROUP)):
                raw = text.encode()
                tar.addfile(info(name, tarfile.REGTYPE, 0o644, size=len(raw)), io.BytesIO(raw))
        _ROOTFS_TAR = out
        return out


def shell_cmd(script: str) -> list[str]:
    """Wrap a shell snippet so PID 1 exits on SIGTERM at once (a shell as PID 1 ignores it).

    The snippet runs in a background subshell with the container's stdin preserved (a
    non-interactive sh would otherwise give background jobs /dev/null); ``sh`` waits for it,
    exits 0 on SIGTERM (the kernel then kills the rest of the PID namespace) and otherwise
    exits with the snippet's status.
    """
    return ["sh", "-c", f"trap 'exit 0' TERM; exec 3<&0; ( {script}\n) 0<&3 3<&- & wait $!"]


# ---------------------------------------------------------------------------
# engines

_LIVE_ENGINES: list[Engine] = []
_ATEXIT_REGISTERED = False


def _atexit_cleanup() -> None:
    for eng in list(_LIVE_ENGINES):
        if eng._owner_pid != os.getpid():
            continue
        try:
            eng.stop()
        except Exception:
            try:
                eng.kill()
            except Exception:
                pass


def _route_ranges() -> list[tuple[int, int]]:
    routes = []
    try:
        with open("/proc/net/route") as fh:
            next(fh)
            for line in fh:
                f = line.split()
                dest = int.from_bytes(bytes.fromhex(f[1]), "little")
                mask = int.from_bytes(bytes.fromhex(f[7]), "little")
                if mask:  # ignore the default route
                    routes.append((dest & mask, (dest & mask) | (~mask & 0xFFFFFFFF)))
    except OSError:
        pass
    return routes


def _pool_reservations() -> Path:
    from tests.harness.machine import LOCK_DIR  # not at the top: the watchdog runs this file as a script

    return LOCK_DIR / "address-pools"


def _choose_address_pool(preferred: str | None = None) -> str:
    """A /20 of 198.18.0.0/15 that no current host route overlaps and no other live engine has reserved.

    Host routes only appear once a network exists, so two dockerds started at the same moment (two pytest
    workers, two checkouts) would see the same free pools: the choice is made under a machine-wide lock
    and written to a reservation file ("pool pid" lines; those of dead processes no longer count)."""
    from tests.harness.machine import machine_lock

    reservations = _pool_reservations()
    with machine_lock("address-pools"):
        try:
            lines = reservations.read_text().split("\n")
        except OSError:
            lines = []
        held: dict[str, int] = {}
        for line in lines:
            pool, _, pid = line.partition(" ")
            if pid.isdigit() and _pid_alive(int(pid)):
                held[pool] = int(pid)
        routes = _route_ranges()
        base = (198 << 24) | (18 << 16)
        first = (os.getpid() + time.monotonic_ns() // 1000) % 32
        candidates = []
        for i in range(32):
            lo = base + (((first + i) % 32) << 12)
            if lo == base:  # leave 198.18.0.0/20 to hand-made setups
                continue
            candidates.append(f"{lo >> 24}.{(lo >> 16) & 255}.{(lo >> 8) & 255}.0/20")
        if preferred is not None:
            candidates.insert(0, preferred)
        for pool in candidates:
            if held.get(pool, os.getpid()) != os.getpid():
                continue
            net_lo = sum(int(part) << (24 - 8 * i) for i, part in enumerate(pool.split("/")[0].split(".")))
            net_hi = net_lo + (1 << 12) - 1
            if pool != preferred and any(r_lo <= net_hi and net_lo <= r_hi for r_lo, r_hi in routes):
                continue
            held[pool] = os.getpid()
            reservations.write_text("".join(f"{p} {pid}\n" for p, pid in sorted(held.items())))
            return pool
    raise EngineError("no free /20 in 198.18.0.0/15 for a private dockerd address pool")


def _release_address_pool(pool: str) -> None:
    from tests.harness.machine import machine_lock

    reservations = _pool_reservations()
    with machine_lock("address-pools"):
        try:
            lines = reservations.read_text().splitlines()
        except OSError:
            return
        reservations.write_text("".join(f"{line}\n" for line in lines if line != f"{pool} {os.getpid()}"))


class Engine:
    """A private Docker Engine or Podman API service rooted at ``base_dir``."""

    def __init__(self, kind: str, base_dir: Path | str):
        if kind not in ("docker", "podman"):
            raise ValueError(f"unknown engine kind {kind!r}")
        self.kind = kind
        self.base_dir = Path(base_dir).resolve()
        self.socket_path = self.base_dir / f"{kind}.sock"
        self.pid_file = self.base_dir / f"{kind}d.pid" if kind == "docker" else self.base_dir / "podman.pid"
        self.log_path = self.base_dir / f"{kind}d.log" if kind == "docker" else self.base_dir / "podman.log"
        self.storage_driver: str | None = None
        self.address_pool: str | None = None
        self._proc: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self._started_once = False
        self._bridges: set[str] = set()
        self._reaper: subprocess.Popen | None = None
        self._lock = threading.RLock()
        if len(str(self.base_dir / "exec" / "containerd" / "containerd.sock.ttrpc")) > _SUN_PATH_MAX:
            raise EngineError(f"base_dir {self.base_dir} is too long for unix socket paths; use a shorter one")

    def __repr__(self) -> str:
        return f"<Engine {self.kind} {self.base_dir} pid={self.pid}>"

    # -- basic properties ---------------------------------------------------
    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            return False
        try:
            status, _ = self.api("GET", "/_ping", timeout=5)
        except OSError:
            return False
        return status == 200

    # -- raw HTTP -----------------------------------------------------------
    def api(self, method: str, path: str, body=None, headers=None, timeout: float = 30) -> tuple[int, bytes]:
        """One raw HTTP request over the engine's socket; ``body`` may be bytes, str or JSON-able."""
        return _unix_request(self.socket_path, method, path, body=body, headers=headers, timeout=timeout)

    def api_json(self, method: str, path: str, body=None, *, expect=(200, 201, 204), timeout: float = 30):
        status, data = self.api(method, path, body=body, timeout=timeout)
        if status not in expect:
            raise EngineError(f"{self.kind}: {method} {path} -> {status}: {data[:500]!r}")
        return json.loads(data) if data.strip() else None

    # -- lifecycle ----------------------------------------------------------
    def _check_binaries(self) -> None:
        needed = ["dockerd", "containerd", "runc"] if self.kind == "docker" else ["podman", "runc", "conmon"]
        missing = [b for b in needed if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
        if missing:
            pkgs = "docker.io runc" if self.kind == "docker" else "podman runc"
            raise EngineUnavailable(f"{self.kind}: missing {', '.join(missing)} (apt-get install -y {pkgs})")
        if os.geteuid() != 0:
            raise EngineUnavailable(f"{self.kind}: the private engine needs root")

    def _stale_processes(self) -> set[int]:
        """Processes running from this base_dir (daemon, containerd, shims, conmon, and whatever
        runs below them), except this process, its ancestors and its own watchdog."""
        table = _proc_table()
        needle = str(self.base_dir) + "/"
        ours = {self._reaper.pid} if self._reaper is not None else set()
        pid = os.getpid()
        while pid > 1 and pid not in ours:
            ours.add(pid)
            pid = table.get(pid, (0, ""))[0]
        roots = {p for p, (_, cmd) in table.items() if needle in cmd and p not in ours}
        return _descendants(roots, table) - ours

    def _sweep(self) -> None:
        """Kill leftovers, delete listed bridges, unmount what is below base_dir."""
        exclude = {self._reaper.pid} if self._reaper is not None else set()
        _cleanup_base_dir(self.base_dir, exclude)

    def _ensure_reaper(self) -> None:
        if self._reaper is not None and self._reaper.poll() is None:
            return
        self._reaper = subprocess.Popen(
            [sys.executable, "-S", os.path.abspath(__file__), "--reap", str(os.getpid()), str(self.base_dir) + "/"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None

    def _binary(self, name: str) -> str:
        return shutil.which(name) or f"/usr/sbin/{name}"

    def _docker_args(self, driver: str) -> list[str]:
        b = self.base_dir
        return [
            self._binary("dockerd"),
            "--config-file", str(b / "daemon.json"),
            "--host", self.url,
            "--data-root", str(b / "data"),
            "--exec-root", str(b / "exec"),
            "--pidfile", str(self.pid_file),
            "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
            "--userland-proxy=false",
            f"--storage-driver={driver}",
            "--shutdown-timeout=1",
            "--default-address-pool", f"base={self.address_pool},size=24",
        ]  # fmt: skip

    def _write_docker_config(self) -> None:
        cfg = {
            "default-ulimits": {
                "nofile": {"Name": "nofile", "Soft": 4096, "Hard": 4096},
                "nproc": {"Name": "nproc", "Soft": 4096, "Hard": 4096},
            },
            "log-level": "info",
        }
        (self.base_dir / "daemon.json").write_text(json.dumps(cfg, indent=2))

    def _podman_args(self, driver: str) -> list[str]:
        b = self.base_dir
        return [
            self._binary("podman"),
            "--root", str(b / "root"),
            "--runroot", str(b / "runroot"),
            "--tmpdir", str(b / "tmp"),
            "--storage-driver", driver,
            "--runtime", "runc",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--network-config-dir", str(b / "networks"),
            "--log-level", "info",
            "system", "service", "--time=0", self.url,
        ]  # fmt: skip

    def _write_podman_config(self) -> dict[str, str]:
        b = self.base_dir
        conf = b / "containers.conf"
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
            'netns = "none"\n'
            'log_driver = "k8s-file"\n'
            "\n[network]\n"
            f'network_config_dir = "{b / "networks"}"\n'
            "\n[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{b / "tmp" / "events.log"}"\n'
            f'tmp_dir = "{b / "tmp"}"\n'
            f'static_dir = "{b / "root" / "libpod"}"\n'
            f'volume_path = "{b / "root" / "volumes"}"\n'
            'lock_type = "file"\n'
        )
        storage = b / "storage.conf"
        storage.write_text(
            f'[storage]\ndriver = "{self.storage_driver}"\ngraphroot = "{b / "root"}"\nrunroot = "{b / "runroot"}"\n'
        )
        (b / "networks").mkdir(exist_ok=True)
        (b / "tmp").mkdir(exist_ok=True)
        return {
            "CONTAINERS_CONF": str(conf),
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_REGISTRIES_CONF": str(b / "registries.conf"),
        }

    def _spawn(self, driver: str) -> subprocess.Popen:
        env = dict(os.environ)
        for var in ("DOCKER_HOST", "CONTAINER_HOST", "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
            env.pop(var, None)
        self.storage_driver = driver
        if self.kind == "docker":
            self._write_docker_config()
            args = self._docker_args(driver)
        else:
            (self.base_dir / "registries.conf").write_text('unqualified-search-registries = []\n')
            env.update(self._write_podman_config())
            args = self._podman_args(driver)
        log = open(self.log_path, "ab")
        try:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {' '.join(args)}\n".encode())
            log.flush()
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.base_dir),
                start_new_session=True,  # own process group: killpg reaches the whole daemon
            )
        finally:
            log.close()

    def _wait_ready(self, proc: subprocess.Popen, timeout: float) -> str | None:
        """None when /_ping answers OK; otherwise a reason."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with status {proc.returncode}"
            if self.socket_path.exists():
                try:
                    status, _ = self.api("GET", "/_ping", timeout=2)
                    if status == 200:
                        return None
                except OSError:
                    pass
            time.sleep(0.02)
        return f"no answer on {self.socket_path} within {timeout:.0f} s"

    def _log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _remove_stale_files(self) -> None:
        """Socket and pid files of a dead daemon.  dockerd refuses to start while its pid file
        names a live process, and takes a *zombie* containerd (killed, not yet reaped by init)
        for a running one, so pid files of dead or zombie processes go."""
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        for pid_file in (self.pid_file, self.base_dir / "exec" / "containerd" / "containerd.pid"):
            try:
                pid = int(pid_file.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                continue
            try:
                pid_file.unlink()
            except FileNotFoundError:
                pass

    def start(self) -> None:
        """Start the daemon and wait until ``GET /_ping`` is OK; no-op if already running."""
        global _ATEXIT_REGISTERED
        with self._lock:
            if self.is_running():
                return
            from tests.harness.machine import refuse_engines_if_asked  # (the watchdog runs this file alone)

            refuse_engines_if_asked(f"a private {self.kind} engine")
            self._check_binaries()
            self.base_dir.mkdir(parents=True, exist_ok=True)
            if self._proc is not None and self._proc.poll() is None:
                self._terminate_daemon()  # alive but not answering
            if not self._started_once:
                # Leftovers of a crashed earlier run in this base_dir: kill them all.
                self._sweep()
            self._remove_stale_files()
            self._ensure_reaper()
            if self.kind == "docker":
                # Reserved again after a stop() (which gives it back); kept across restarts: the data dir's
                # networks were made from it.
                self.address_pool = _choose_address_pool(self.address_pool)
            if self.storage_driver is not None:
                drivers = [self.storage_driver]  # keep the data readable across restarts
            else:
                drivers = ["overlay2", "vfs"] if self.kind == "docker" else ["overlay", "vfs"]
            reasons = []
            for driver in drivers:
                proc = self._spawn(driver)
                reason = self._wait_ready(proc, START_TIMEOUT)
                if reason is None:
                    self._proc = proc
                    self._started_once = True
                    if self not in _LIVE_ENGINES:
                        _LIVE_ENGINES.append(self)
                    if not _ATEXIT_REGISTERED:
                        atexit.register(_atexit_cleanup)
                        _ATEXIT_REGISTERED = True
                    return
                reasons.append(f"{driver}: {reason}")
                self._proc = proc
                self._hard_kill()
                self._proc = None
            raise EngineError(
                f"{self.kind} did not start in {self.base_dir} ({'; '.join(reasons)}); log tail:\n{self._log_tail()}"
            )

    def _terminate_daemon(self, timeout: float = 15) -> None:
        """SIGTERM the daemon, wait, then SIGKILL its whole process group."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._hard_kill()

    def _hard_kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        table = _proc_table()
        group = _descendants({proc.pid}, table) if proc.poll() is None else set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # pgid == pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        # containerd is started with its own session: kill the daemon's descendants too
        _kill_pids(group - {proc.pid})
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        _wait_gone(group, 5)

    def stop(self) -> None:
        """Remove all containers (force) and user-defined networks, SIGTERM the daemon, wait,
        SIGKILL as a fallback; then kill anything still running from this base_dir (shims,
        conmon, container processes), delete leftover bridges and unmount leftovers."""
        with self._lock:
            if self.is_running():
                try:
                    self.remove_all()
                    self.remove_networks()
                except (OSError, EngineError):
                    pass
            self._terminate_daemon()
            self._stop_reaper()
            self._sweep()
            self._delete_bridges()
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
            if self in _LIVE_ENGINES:
                _LIVE_ENGINES.remove(self)
            if self.address_pool is not None:
                _release_address_pool(self.address_pool)

    def kill(self) -> None:
        """SIGKILL the daemon's process group (fault injection).  Containers' own processes
        (shims/conmon) survive, as after a real crash; the socket file is removed."""
        with self._lock:
            if self.is_running():
                self._remember_bridges()
            self._hard_kill()
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass

    def restart(self) -> None:
        """Start again with the same data (after stop()/kill(); if running, SIGTERM it first
        without removing containers)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._terminate_daemon()
            self.start()

    # -- images and containers ------------------------------------------------
    def ensure_busybox(self) -> None:
        """Import ``localhost/busybox:latest`` from a locally built rootfs unless present."""
        status, _ = self.api("GET", f"/images/{BUSYBOX}/json")
        if status == 200:
            return
        tar = build_busybox_rootfs()
        query = urlencode({"fromSrc": "-", "repo": BUSYBOX.rsplit(":", 1)[0], "tag": "latest"})
        status, data = self.api(
            "POST", f"/images/create?{query}", body=tar.read_bytes(),
            headers={"Content-Type": "application/x-tar"}, timeout=120,
        )  # fmt: skip
        if status != 200 or b'"error"' in data:
            raise EngineError(f"{self.kind}: importing busybox failed: {status} {data[-500:]!r}")
        status, _ = self.api("GET", f"/images/{BUSYBOX}/json")
        if status != 200:
            raise EngineError(f"{self.kind}: busybox imported but {BUSYBOX} not found ({data[-300:]!r})")

    def run(
        self,
        name: str | None,
        cmd: list[str] | str = "sleep 100000",
        *,
        labels: dict[str, str] | None = None,
        tty: bool = False,
        env: dict[str, str] | list[str] | None = None,
        start: bool = True,
        config: dict | None = None,
        **host_config,
    ) -> str:
        """Create (and start) a container from BUSYBOX; return its full id.

        A string ``cmd`` is wrapped by :func:`shell_cmd` (SIGTERM trap, fast stop); a list is
        used verbatim.  Network mode is ``none`` unless ``NetworkMode=...`` is given.  Extra
        keyword arguments are Docker HostConfig keys (``RestartPolicy={"Name": "always"}``,
        ``Memory=...``); ``config`` is merged into the top-level create body (``Healthcheck``,
        ``OpenStdin``, ``StopTimeout``, ``NetworkingConfig``...).
        """
        body: dict = {
            "Image": BUSYBOX,
            "Cmd": shell_cmd(cmd) if isinstance(cmd, str) else list(cmd),
            "Labels": dict(labels or {}),
            "Tty": tty,
            "HostConfig": {"NetworkMode": "none", **host_config},
        }
        if env:
            body["Env"] = [f"{k}={v}" for k, v in env.items()] if isinstance(env, dict) else list(env)
        if self.kind == "podman":
            # Podman 4.3's compat create stores StopTimeout 0 when the body has none, so a plain
            # POST /stop would SIGKILL at once (exit 137); give it Docker's default instead.
            body["StopTimeout"] = GRACE_PERIOD
        if config:
            body.update(config)
        path = "/containers/create" + (f"?name={quote(name)}" if name else "")
        created = self.api_json("POST", path, body, expect=(201,))
        cid = created["Id"]
        if start:
            self.api_json("POST", f"/containers/{cid}/start", expect=(204, 304))
            if isinstance(cmd, str):
                self.wait_trap(cid)
        return cid

    def wait_trap(self, cid: str, timeout: float = 10) -> None:
        """Wait until the container's PID 1 has installed its SIGTERM trap.

        Start returns once the process exists, before ``sh`` has run ``trap``: a stop sent in
        that window is ignored by PID 1 and costs the whole grace period (seen under load).
        Checks the name and SigCgt mask in /proc/<pid>/status of the host pid (while it is
        still ``runc init``, a Go program, every signal shows as caught); returns early if the
        container is no longer running."""
        deadline = time.monotonic() + timeout
        # One inspect: PID 1 keeps its host pid when `runc init` execs sh. Then only /proc is read (an
        # inspect per poll cost the engine CPU the whole suite waits for).
        state = (self.api_json("GET", f"/containers/{cid}/json") or {}).get("State") or {}
        pid = state.get("Pid") or 0
        if not state.get("Running") or not pid:
            return
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/status") as fh:
                    status = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
                # until it execs sh, PID 1 is `runc init` (Go: catches every signal)
                if status.get("Name") == "sh" and int(status["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)):
                    return
            except (OSError, KeyError, ValueError):
                return  # gone: the container has exited
            time.sleep(0.005)
        raise EngineError(f"{self.kind}: container {cid[:12]} did not install its SIGTERM trap in {timeout} s")

    def remove_all(self) -> None:
        """Force-remove every container (and its anonymous volumes)."""
        for c in self.api_json("GET", "/containers/json?all=1") or []:
            status, data = self.api("DELETE", f"/containers/{c['Id']}?force=1&v=1", timeout=60)
            if status not in (200, 204, 404):
                raise EngineError(f"{self.kind}: removing {c['Id'][:12]} -> {status}: {data[:300]!r}")

    def user_networks(self) -> list[dict]:
        """User-defined networks (everything but bridge/host/none/podman)."""
        nets = self.api_json("GET", "/networks") or []
        return [n for n in nets if n.get("Name") not in ("bridge", "host", "none", "podman")]

    def _remember_bridges(self) -> None:
        """Note the host bridge interfaces of user-defined networks, so they can be deleted even
        if the daemon is later killed (dockerd leaves them, with their routes, on shutdown)."""
        if self.kind != "docker":
            return
        try:
            for n in self.user_networks():
                if n.get("Driver") == "bridge":
                    opts = n.get("Options") or {}
                    self._bridges.add(opts.get("com.docker.network.bridge.name") or f"br-{n['Id'][:12]}")
        except (OSError, EngineError, ValueError):
            pass
        (self.base_dir / "bridges.txt").write_text("".join(f"{b}\n" for b in sorted(self._bridges)))

    def remove_networks(self) -> None:
        """Delete every user-defined network (containers must be gone first)."""
        self._remember_bridges()
        for n in self.user_networks():
            status, data = self.api("DELETE", f"/networks/{n['Id']}")
            if status not in (200, 204, 404):
                raise EngineError(f"{self.kind}: removing network {n['Name']} -> {status}: {data[:300]!r}")

    def _delete_bridges(self) -> None:
        for br in sorted(self._bridges):
            if os.path.exists(f"/sys/class/net/{br}"):
                subprocess.run(["ip", "link", "delete", br], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._bridges.clear()
        (self.base_dir / "bridges.txt").unlink(missing_ok=True)


def start_dockerd(base_dir: Path | str) -> Engine:
    """Start a private dockerd under ``base_dir`` (raises EngineUnavailable / EngineError)."""
    eng = Engine("docker", base_dir)
    eng.start()
    return eng


def start_podman(base_dir: Path | str) -> Engine:
    """Start a private ``podman system service`` under ``base_dir``.

    Raises EngineUnavailable (a skip reason) when podman is missing or cannot run here."""
    eng = Engine("podman", base_dir)
    try:
        eng.start()
    except EngineUnavailable:
        raise
    except EngineError as exc:
        raise EngineUnavailable(f"podman cannot run here: {exc}") from exc
    return eng


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--reap":
    _reaper_main(int(sys.argv[2]), sys.argv[3].rstrip("/"))
