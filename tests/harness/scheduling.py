"""How tests share the machine under ``pytest -n N --dist loadgroup`` (pytest-xdist), set from conftest.

Three kinds of tests, all in one run:

* **Anything** runs on any worker, concurrently with the others. Each worker has its own engines (see
  tests/harness/machine.py), so tests only need to be independent of each other's *timing*.
* **Grouped**: every test that uses a fixture named in :data:`FIXTURE_GROUPS` gets that
  ``xdist_group``: all of them run on one worker, so the fixture (session-scoped) starts once per run
  instead of once per worker. A test may also say ``@pytest.mark.xdist_group("name")`` itself.
* **Exclusive** (``@pytest.mark.exclusive``): tests whose figures depend on having the run's CPUs to
  themselves (a soak's trends, a booted systemd's timers). Such a test waits until the tests running on
  the other workers have finished, runs alone, and only then do the others go on: a readers-writer lock
  shared by the run's workers (every other test holds it shared). They all go to one worker, group
  ``exclusive``. Other programs on the machine are not stopped, so an exclusive test must still tolerate
  a loaded machine; it only stops competing with its own run.

Every test that uses an engine (dockerd, Podman or the control plane, directly or through ``engine``,
``client``, ``config_data``...) is marked ``engine``: ``pytest -m "not engine"`` selects the tests of pure
modules, and ``NEKZUSD_TEST_ENGINES=0`` proves they need none (the harness then refuses to start one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

import pytest

from tests.harness.machine import LOCK_DIR

#: Fixtures that start something heavy once per process: every test using one runs on the same worker.
#: A new such fixture adds its row (e.g. a real kubelet cluster: ``"k8s_live": "kubelet"``; it must also
#: take ``machine_lock("kubelet")`` itself, as other checkouts' suites run on the same kernel).
FIXTURE_GROUPS = {
    "k8s_cluster": "k8s",
}
#: Fixtures that start a real engine or cluster (a test using one is marked ``engine``).
ENGINE_FIXTURES = {"docker_engine", "podman_engine", "k8s_cluster", *FIXTURE_GROUPS}


def mark_items(items: list[pytest.Item]) -> None:
    """Mark and group the items, then order them: ``slow`` ones first (the longest tests, started early,
    do not stretch the end of a run in which the other workers have nothing left), ``exclusive`` ones last
    (started early, one would hold the others back while a long test finishes)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & ENGINE_FIXTURES:
            item.add_marker(pytest.mark.engine)
        if item.get_closest_marker("exclusive") is not None:
            item.add_marker(pytest.mark.xdist_group("exclusive"))
            continue
        if item.get_closest_marker("xdist_group") is None:
            for fixture in sorted(used & FIXTURE_GROUPS.keys()):
                item.add_marker(pytest.mark.xdist_group(FIXTURE_GROUPS[fixture]))
                break

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("exclusive") is not None:
            return 2
        return 0 if item.get_closest_marker("slow") is not None else 1
    items.sort(key=rank)  # stable: the same order in every worker, as xdist requires


#: The environment variable naming the lock directory the workers of one run share.
RUN_DIR_VAR = "NEKZUSD_TEST_RUN_DIR"


def start_run(config: pytest.Config) -> None:
    """On the controller of an xdist run, before its workers start: make the run's lock directory (the
    workers inherit its name through the environment)."""
    if getattr(config, "workerinput", None) is None and config.getoption("numprocesses", None):
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        os.environ[RUN_DIR_VAR] = tempfile.mkdtemp(prefix="run-", dir=LOCK_DIR)


def end_run(config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is None and RUN_DIR_VAR in os.environ:
        shutil.rmtree(os.environ.pop(RUN_DIR_VAR), ignore_errors=True)


def _flock(path: Path, mode: int) -> IO[str]:
    handle = open(path, "a")
    fcntl.flock(handle, mode)
    return handle


@contextlib.contextmanager
def turn(item: pytest.Item) -> Iterator[None]:
    """Hold the run's lock for the whole test (setup, call, teardown): shared for ordinary tests,
    exclusive for ``exclusive`` ones. The turnstile (``gate``) taken first keeps a waiting exclusive test
    from being starved by shared holders coming and going (flock does not queue writers first)."""
    run_dir = os.environ.get(RUN_DIR_VAR) if getattr(item.config, "workerinput", None) is not None else None
    if run_dir is None:  # one process: nothing runs beside the test
        yield
        return
    gate_path, tests_path = Path(run_dir) / "gate", Path(run_dir) / "tests"
    exclusive = item.get_closest_marker("exclusive") is not None
    gate = _flock(gate_path, fcntl.LOCK_EX)
    try:
        held = _flock(tests_path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        gate.close()
        raise
    if not exclusive:
        gate.close()  # others may come in; an exclusive test keeps the gate shut until it is done
    try:
        yield
    finally:
        held.close()
        if exclusive:
            gate.close()
