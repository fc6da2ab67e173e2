"""How tests share the machine under ``pytest -n N --dist loadgroup`` (pytest-xdist), set from conftest.

Two kinds of tests, all in one run:

* **Anything** runs on any worker, concurrently with the others. Each worker has its own engines (see
  tests/harness/machine.py), so tests only need to be independent of each other's *timing*: a test that
  measures compares with the raw engine measured in the same conditions, never with a fixed time.
* **Grouped**: every test that uses a fixture named in :data:`FIXTURE_GROUPS` gets that
  ``xdist_group``: all of them run on one worker, so the fixture (session-scoped) starts once per run
  instead of once per worker. A test may also say ``@pytest.mark.xdist_group("name")`` itself.

Work is handed out longest first: groups, then ``slow`` tests, then the rest, so that the end of a run is
short tests filling the gaps rather than one long test holding the others' workers idle.

Every test that uses an engine (dockerd, Podman or the control plane, directly or through ``engine``,
``client``, ``config_data``...) is marked ``engine``: ``pytest -m "not engine"`` selects the tests of pure
modules, and ``NEKZUSD_TEST_ENGINES=0`` proves they need none (the harness then refuses to start one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.harness.machine import LOCK_DIR

#: Fixtures that start something heavy once per process: every test using one runs on the same worker.
#: A new such fixture adds its row. (The real-kubelet cluster needs no machine-wide lock: each one has its
#: own cgroup root and namespaces, so other checkouts' suites on the same kernel do not meet it.)
FIXTURE_GROUPS = {
    "k8s_cluster": "k8s",
    "kubelet_cluster": "kubelet",
}
#: Fixtures that start a real engine or cluster (a test using one is marked ``engine``).
ENGINE_FIXTURES = {"docker_engine", "podman_engine", "k8s_cluster", *FIXTURE_GROUPS}


def mark_items(items: list[pytest.Item]) -> None:
    """Mark and group the items, then order them longest first: grouped ones (a group is one unit of work
    on one worker, often minutes long: a cluster, a booted systemd), then ``slow`` ones, then the rest."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & ENGINE_FIXTURES:
            item.add_marker(pytest.mark.engine)
        if item.get_closest_marker("xdist_group") is None:
            for fixture in sorted(used & FIXTURE_GROUPS.keys()):
                item.add_marker(pytest.mark.xdist_group(FIXTURE_GROUPS[fixture]))
                break

    _publish_groups(items)

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("xdist_group") is not None:
            return 0
        return 1 if item.get_closest_marker("slow") is not None else 2
    items.sort(key=rank)  # stable: the same order in every worker, as xdist requires


def release_finished_group(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After ``item``'s teardown: a group's fixture (:data:`FIXTURE_GROUPS`) that the next test on this
    worker does not use is stopped now rather than at the end of the session. A group reaches one worker as
    one unit, so no later test there needs it, and an idle control plane (with its kubelet) kept for the
    rest of the run cost CPU the other workers wait for. Were a later test to ask for it after all, pytest
    would start it again."""
    used = set(getattr(item, "fixturenames", ())) & FIXTURE_GROUPS.keys()
    needed = set(getattr(nextitem, "fixturenames", ())) if nextitem is not None else set()
    for name in sorted(used - needed):
        definitions = item._fixtureinfo.name2fixturedefs.get(name)  # type: ignore[attr-defined]
        if definitions:
            definitions[-1].finish(item._request)  # type: ignore[attr-defined]


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


def _group_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    if marker is None:
        return None
    return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))


def _publish_groups(items: list[pytest.Item]) -> None:
    """On an xdist worker: write nodeid -> group for the controller's scheduler (every worker collects the
    same items and writes the same file; the last rename wins). xdist's own loadgroup renames each item's
    nodeid to carry its group, which pytest 9's structured node ids no longer allow, so groups travel
    this way instead."""
    run_dir = os.environ.get(RUN_DIR_VAR)
    if run_dir is None or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    groups = {item.nodeid: group for item in items if (group := _group_of(item)) is not None}
    target = Path(run_dir) / "groups.json"
    partial = target.with_name(f"groups.{os.getpid()}.json")
    partial.write_text(json.dumps(groups))
    os.replace(partial, target)


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The controller's scheduler for ``--dist loadgroup``: xdist's load-by-scope scheduling, where a test's
    scope is its group (from the file the workers wrote) or, without one, the test alone."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would put the biggest groups first: keep mark_items' order

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None
        original: dict[str, str] = {}

        def add_node_collection(self, node: Any, collection: list[str]) -> None:
            # Scope scheduling keys tests by node id, and schemathesis gives all the cases of test_fuzz one
            # id (38 items, one run: the others were silently left out). Repeats get a numbered id here;
            # workers are sent positions in the collection, which do not change.
            seen: dict[str, int] = {}
            unique = []
            for nodeid in collection:
                seen[nodeid] = seen.get(nodeid, 0) + 1
                name = nodeid if seen[nodeid] == 1 else f"{nodeid} (#{seen[nodeid]})"
                self.original[name] = nodeid
                unique.append(name)
            super().add_node_collection(node, unique)

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                path = Path(os.environ.get(RUN_DIR_VAR, "/nonexistent")) / "groups.json"
                self.groups = json.loads(path.read_text()) if path.exists() else {}
            group = self.groups.get(self.original.get(nodeid, nodeid))
            return nodeid if group is None else f"@group {group}"

    return GroupScheduling(config, log)
