"""What the test processes share with everything else on this machine, and how they stay out of each
other's way: machine-wide locks, the worker's name, and a switch that forbids starting engines.

Several pytest processes run at once here: the workers of one ``pytest -n`` run (pytest-xdist), and other
checkouts' suites. Each worker starts its own dockerd, Podman service and control plane under its own
temporary directory, so data dirs, sockets and pid files never meet. What *is* shared goes through a lock
from :func:`machine_lock`: the caches under ``~/.cache`` (the Kubernetes binaries, the nspawn root), the
address pools of private dockerds' networks (host routes), and anything that changes kernel settings or
cgroups for the whole machine (a real kubelet) and therefore may never run twice at once.

``NEKZUSD_TEST_ENGINES=0`` makes every harness starter (dockerd, Podman, the control plane, an nspawn
machine) raise :class:`EnginesRefused` instead: run a selection of tests with it to prove they need none
(``NEKZUSD_TEST_ENGINES=0 pytest -m "not engine" tests/test_config.py ...``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Lock files of the whole machine (not per checkout: two checkouts' suites share the kernel).
LOCK_DIR = Path(tempfile.gettempdir()) / "nekzusd-test-locks"


class EnginesRefused(RuntimeError):
    """A test asked for an engine while NEKZUSD_TEST_ENGINES=0 forbids starting one."""


def refuse_engines_if_asked(what: str) -> None:
    """Raise EnginesRefused when the environment forbids starting ``what`` (an engine, a cluster...)."""
    if os.environ.get("NEKZUSD_TEST_ENGINES", "1") == "0":
        raise EnginesRefused(f"NEKZUSD_TEST_ENGINES=0: refusing to start {what}")


def worker_id() -> str:
    """pytest-xdist's worker name (``gw0``, ``gw1``...), or ``main`` when the tests run in one process."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@contextlib.contextmanager
def machine_lock(name: str, path: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` for the whole machine (blocking until it is free).

    ``path`` puts the lock file elsewhere (e.g. beside the cache it guards). The lock is a ``flock`` on
    an open file: the kernel releases it when the holder dies, so a killed run never leaves it stuck."""
    lock_path = path or LOCK_DIR / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def checkout_build_lock(repo: Path) -> contextlib.AbstractContextManager[None]:
    """Held while ``make install``/``deb``/``wheelhouse`` builds from the checkout ``repo``: pip builds
    nekzusd in the source tree (``build/``, ``*.egg-info``), so two builds of one checkout at once (two
    workers) would mix their files. Builds of other checkouts do not wait."""
    return machine_lock("build-" + hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:12])


def copy_checkout(repo: Path, dest: Path) -> None:
    """The working tree as a user would have it (no VCS data, venvs, caches or build output)."""
    skip = {".git", ".venv", "build", "wheels", ".state", "__pycache__", ".pytest_cache", ".mypy_cache"}
    shutil.copytree(repo, dest, symlinks=True,
                    ignore=lambda _d, names: [n for n in names if n in skip or n.endswith(".egg-info")])
