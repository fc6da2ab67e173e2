"""Registers the harness's fixtures for every test, and sorts tests onto xdist workers.

The harness lives in tests/harness/ (see tests/README.md): engines, the control plane, the daemon as a
subprocess, helpers. Tests run against the real engines it starts, never a mock.
"""

from __future__ import annotations

import pytest

# Helpers, for tests that still import them from here (new tests: from tests.harness.app import ...).
from tests.harness.app import base_config, next_message, run_container, unique, wait_for, ws_connect  # noqa: F401
# Fixtures are registered by being imported here.
from tests.harness.fixtures import client, config_data, docker_engine, engine, make_client  # noqa: F401
from tests.harness.fixtures import k8s_cluster, podman_engine, remote_client, short_tmp  # noqa: F401
from tests.harness.k8s_fixtures import k8s_api, k8s_client  # noqa: F401
from tests.harness.scheduling import end_run, make_scheduler, mark_items, release_finished_group, start_run


def pytest_configure(config: pytest.Config) -> None:
    start_run(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    end_run(config)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups to schedule by
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_items(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    result = yield
    release_finished_group(item, nextitem)
    return result


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Groups of ``--dist loadgroup`` as tests/harness/scheduling.py sets them (None: xdist's own)."""
    return make_scheduler(config, log) if config.getvalue("dist") == "loadgroup" else None

