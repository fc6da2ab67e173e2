"""A real systemd as PID 1 for the tests: a minimal Debian root booted with systemd-nspawn.

These machines have no systemd as PID 1 (and no systemd-machined), but ``systemd-nspawn -b`` boots one in a
container. The root is built once with ``mmdebstrap --variant=minbase`` (about 40 s) and cached outside
the repository, keyed by its package list; each run boots a fresh copy (``cp -a``, a few seconds), so a
test never sees what an earlier one left behind.

The package list is what a new user's minimal Debian has, plus make and python3-venv for ``make install``:
no procps (so no ``/bin/kill``). ``libnss-systemd`` is installed, and :meth:`Machine.nss_systemd` takes it
out of (or puts it back into) ``/etc/nsswitch.conf``, so one root serves both cases: a ``DynamicUser=``
service whose user has no name and no home, and one whose user NSS knows.

The container shares the host's network (pick a free port) and PID numbers differ inside: :meth:`run`
executes commands in all the container's namespaces through ``nsenter -t <its init> -a``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.harness.machine import checkout_build_lock, refuse_engines_if_asked

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "make", "libnss-systemd")
CACHE = Path(os.environ.get("NEKZUSD_NSPAWN_CACHE", Path.home() / ".cache" / "nekzusd-nspawn"))
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

T = TypeVar("T")


class NspawnUnavailable(RuntimeError):
    """The host cannot boot a container here (tools missing, not root)."""


def check_host() -> None:
    missing = [tool for tool in ("systemd-nspawn", "mmdebstrap", "nsenter") if shutil.which(tool) is None]
    if missing:
        raise NspawnUnavailable(f"missing {', '.join(missing)} (apt-get install -y systemd-container mmdebstrap)")
    if os.geteuid() != 0:
        raise NspawnUnavailable("booting a container needs root")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something other than None/False; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last not in (None, False):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def cached_root() -> tuple[Path, bool]:
    """The cached minimal root (built if missing); True when it was built now (a cold run)."""
    key = hashlib.sha256(f"{SUITE} minbase {' '.join(sorted(PACKAGES))}".encode()).hexdigest()[:12]
    root = CACHE / f"root-{key}"
    with _locked(CACHE / f"root-{key}.lock"):
        if (root / "etc" / "os-release").exists():
            return root, False
        partial = CACHE / f"root-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        result = subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial)],
            capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
        partial.rename(root)
        return root, True


def cached_wheelhouse(repo: Path, venv_python: str) -> tuple[Path, bool]:
    """`make wheelhouse` into the cache, keyed by what decides the dependencies (setup.cfg, pyproject.toml).
    nekzusd itself is built from the checkout by `make install` (pip install .), so its own wheel, which
    changes with every edit, is not kept."""
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((repo / name).read_bytes())
    wheels = CACHE / f"wheels-{digest.hexdigest()[:12]}"
    with _locked(CACHE / f"{wheels.name}.lock"):
        if (wheels / ".complete").exists():
            return wheels, False
        shutil.rmtree(wheels, ignore_errors=True)
        venv = Path(venv_python).parent.parent
        make(repo, "wheelhouse", f"VENV={venv}", f"WHEELS={wheels}")
        for own in wheels.glob("nekzusd-*.whl"):
            own.unlink()
        (wheels / ".complete").touch()
        return wheels, True


def make(repo: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.pop("VIRTUAL_ENV", None)
    with checkout_build_lock(repo):
        result = subprocess.run(["make", "--no-print-directory", "-C", str(repo), *args], capture_output=True,
                                text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class Machine:
    """A booted copy of the cached root. ``binds`` maps host paths to paths inside."""

    def __init__(self, root: Path, log: Path, binds: dict[str, str]):
        self.root = root
        self.log = log
        self.binds = binds
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self, timeout: float = 120) -> float:
        """Boot and wait until systemd reports the system up; returns the seconds it took."""
        refuse_engines_if_asked("a systemd-nspawn machine")
        started = time.monotonic()
        args = ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit",
                "--console=passive", f"--machine=nkd{os.getpid()}"]
        args += [f"--bind={host}:{inside}" for host, inside in self.binds.items()]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.init_pid = wait_for("the container's init", self._find_init, timeout)
        state = wait_for("systemd to finish booting", self._booted, timeout)
        assert state in ("running", "degraded"), state
        return time.monotonic() - started

    def _find_init(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _booted(self) -> str | None:
        result = self.run("systemctl is-system-running", check=False, timeout=30)
        state = result.stdout.strip()
        return state if state in ("running", "degraded") else None

    def run(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A shell command inside the container (all its namespaces, its root, its PID numbers)."""
        env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        result = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", "/bin/sh", "-c", script],
                                capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"inside the container, `{script}` exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def path(self, inside: str) -> Path:
        """The host path of a file of the container's root (not of a bind mount or a tmpfs like /run)."""
        return self.root / inside.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def nss_systemd(self, on: bool) -> None:
        """Put libnss-systemd into the passwd/group lines of nsswitch.conf, or take it out."""
        conf = self.path("/etc/nsswitch.conf")
        lines = []
        for line in conf.read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("passwd", "group"):
                line = f"{key}:{' ' * (15 - len(key))}files{' systemd' if on else ''}"
            lines.append(line)
        conf.write_text("\n".join(lines) + "\n")

    def poweroff(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


def run_cp(src: Path, dest: Path) -> None:
    """A private copy of the cached root (``cp -a`` keeps owners, modes, devices, hard links)."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True, timeout=600)


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def deb_fields(deb: Path, *names: str) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), *names], capture_output=True, text=True, check=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
