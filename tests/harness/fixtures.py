"""The suite's shared pytest fixtures (registered for every test by tests/conftest.py).

Engines are expensive and live for the whole session of one pytest process (one per xdist worker):
``docker_engine``, ``podman_engine`` and ``k8s_cluster`` start on first use, never before; a test that
asks for none of them (directly or through ``engine``, ``config_data``, ``client``...) starts nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from nekzusd import config as config_mod
from nekzusd.app import create_app
from tests.harness.app import REMOTE_ADDR, base_config, check_remote, remote_config, remote_connector
from tests.harness.engines import Engine, EngineUnavailable, start_dockerd, start_podman


def short_dir(prefix: str) -> Path:
    """A new directory with a short path, for an engine's base_dir: unix socket paths are limited to 107
    bytes, and pytest's tmp_path under an xdist worker (``.../pytest-N/popen-gw1/test_name0/``) is too long
    for dockerd's containerd sockets and Podman's conmon sockets. The caller removes it."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """Like ``tmp_path``, but short enough to hold an engine's sockets (see :func:`short_dir`)."""
    path = short_dir("nkt")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """This process's private dockerd (started on first use, stopped at the end of the session)."""
    base = short_dir("nkd")
    engine = start_dockerd(base)
    engine.ensure_busybox()
    yield engine
    engine.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[Engine]:
    """A private Podman API service for the session (skipped where Podman cannot run)."""
    base = short_dir("nkp")
    try:
        engine = start_podman(base)
    except EngineUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(str(exc))
    engine.ensure_busybox()
    yield engine
    engine.remove_all()
    engine.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real (kubelet-less) control plane per session, built and started by the tests themselves
    (tests/harness/k8s/cluster.py): skipped without it locally, a failure under CI=true. Tests that use
    it run on one xdist worker (group ``k8s``, set by tests/conftest.py), so a run starts one."""
    from tests.harness.k8s.cluster import Cluster, require_cluster

    require_cluster()
    cluster = Cluster()
    cluster.start(tmp_path_factory.mktemp("k8s"))
    yield cluster
    cluster.stop()


@pytest.fixture
def engine(docker_engine: Engine) -> Iterator[Engine]:
    """The session's dockerd, running, with no containers left over from the test."""
    if not docker_engine.is_running():
        docker_engine.restart()
    yield docker_engine
    if not docker_engine.is_running():
        docker_engine.restart()
    docker_engine.remove_all()


@pytest.fixture
def config_data(engine: Engine, tmp_path: Path) -> dict[str, Any]:
    """The test daemon's config as YAML data; tests may change it before asking for ``client``."""
    return base_config(engine, tmp_path / "state")


@pytest.fixture
def make_client(aiohttp_client: Any) -> Callable[..., Awaitable[TestClient]]:
    """Build a daemon app from config data and return a test client bound to 127.0.0.1 (a local address)."""
    async def make(data: dict[str, Any], **kwargs: Any) -> TestClient:
        return await aiohttp_client(create_app(config_mod.parse(data, env={})), **kwargs)
    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[TestClient]], config_data: dict[str, Any]) -> TestClient:
    return await make_client(config_data)


@pytest.fixture
def remote_client(make_client: Callable[..., Awaitable[TestClient]]) -> Callable[..., Awaitable[TestClient]]:
    """``await remote_client(data, source="127.0.0.2", **auth)``: a test client of the daemon app whose
    connections come from ``source``, a stranger's address. ``auth.local_networks`` becomes 127.0.0.1/32
    unless given in ``auth`` (with ``trusted_proxies=...`` and the other auth keys); the client is refused
    if the config would still count ``source`` as local."""
    async def make(data: dict[str, Any], source: str = REMOTE_ADDR, **auth: Any) -> TestClient:
        if auth or "local_networks" not in (data.get("auth") or {}):
            remote_config(data, **{**(data.get("auth") or {}), **auth})
        check_remote(data, source)
        return await make_client(data, connector=remote_connector(source))
    return make


