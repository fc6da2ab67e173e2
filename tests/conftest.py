"""Shared fixtures: one private dockerd per test session, a fresh daemon app per test.

Tests run against the real engine started here (tests/engines.py), never a mock.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from nekzusd import config as config_mod
from nekzusd.app import create_app
from tests.engines import Engine, start_dockerd


@pytest.fixture(scope="session")
def docker_engine() -> Engine:
    base = Path(tempfile.mkdtemp(prefix="nkd-"))  # short: unix socket paths are limited to 107 bytes
    engine = start_dockerd(base)
    engine.ensure_busybox()
    yield engine
    engine.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory):
    """One real (kubelet-less) control plane per session, built and started by the tests themselves
    (tests/k8s/cluster.py): skipped without it locally, a failure under CI=true."""
    from tests.k8s.cluster import Cluster, require_cluster

    require_cluster()
    cluster = Cluster()
    cluster.start(tmp_path_factory.mktemp("k8s"))
    yield cluster
    cluster.stop()


@pytest.fixture
def engine(docker_engine: Engine) -> Engine:
    """The session's dockerd, running, with no containers left over from the test."""
    if not docker_engine.is_running():
        docker_engine.restart()
    yield docker_engine
    if not docker_engine.is_running():
        docker_engine.restart()
    docker_engine.remove_all()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def base_config(engine: Engine, state_dir: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state_dir": str(state_dir),
        "server": {"listen": "127.0.0.1:0", "tls": {"mode": "off"}},
        "runtimes": {"docker": {"host": engine.url}},
        "apps": [{"id": "grafana", "name": "Grafana"}],
    }
    data.update(overrides)
    return data


@pytest.fixture
def config_data(engine: Engine, tmp_path: Path) -> dict[str, Any]:
    """The test daemon's config as YAML data; tests may change it before asking for ``client``."""
    return base_config(engine, tmp_path / "state")


@pytest.fixture
def make_client(aiohttp_client) -> Callable[..., Awaitable[TestClient]]:
    """Build a daemon app from config data and return a test client bound to 127.0.0.1 (a local address)."""
    async def make(data: dict[str, Any], **kwargs: Any) -> TestClient:
        return await aiohttp_client(create_app(config_mod.parse(data, env={})), **kwargs)
    return make


@pytest.fixture
async def client(make_client, config_data) -> TestClient:
    return await make_client(config_data)


async def ws_connect(client: TestClient, **kwargs: Any) -> ClientWebSocketResponse:
    """A WebSocket to /api/v1/ws that has completed the auth handshake as a local client."""
    ws = await client.ws_connect("/api/v1/ws", **kwargs)
    await ws.send_json({"type": "auth", "data": {"token": ""}})
    # A local client is authenticated from the moment it connects, so a broadcast (health_change, a
    # lifecycle result of an earlier test step) may come before the answer to the auth message: skip those.
    while (reply := await ws.receive_json(timeout=5))["type"] != "auth_success":
        assert reply["type"] not in ("auth_failed", "error"), reply
    return ws


async def next_message(ws: ClientWebSocketResponse, type_: str, timeout: float = 15.0,
                       where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """The next message of a type (and matching ``where``), skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message.get("type") == type_ and (where is None or where(message)):
                return message


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.1) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(interval)


async def run_container(engine: Engine, name: str, cmd: str = "sleep 100000", **kwargs: Any) -> str:
    """engine.run off the event loop (the daemon under test shares the loop); returns the 12-char id."""
    full_id = await asyncio.to_thread(engine.run, name, cmd, **kwargs)
    return full_id[:12]


@pytest.fixture(scope="session")
def podman_engine() -> Engine:
    """A private Podman API service for the session (skipped where Podman cannot run)."""
    from tests.engines import EngineUnavailable, start_podman

    base = Path(tempfile.mkdtemp(prefix="nkp-"))
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
