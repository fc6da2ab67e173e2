"""Pod logs of the Kubernetes runtime, tested at the HTTP boundary (pod statistics: tests/test_k8s_stats.py).

They need a component that could not run on this machine (a kubelet that the API server relays logs
from). So here, and only here, the Kubernetes API is a small fake HTTP server answering with
the bodies in tests/data/k8s/: the pod and node documents and the error answers were recorded from the
real kube-apiserver of tests/k8s; the PodMetrics and log bodies are written in those components' exact
shape (see tests/data/k8s/README.md). Everything on nekzusd's side is real: the runtime, its HTTP client
(kubernetes-asyncio), the daemon's routes and the WebSocket log stream.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nekzusd.errors import ApiError, EngineError
from nekzusd.keys import RUNTIMES
from nekzusd.runtimes import Ref
from tests.conftest import next_message, ws_connect

DATA = Path(__file__).parent / "data" / "k8s"
POD = json.loads((DATA / "pod-running.json").read_text())
NAME = POD["metadata"]["name"]
LOG = (DATA / "pod-log.txt").read_bytes()


class FakeApi:
    """The few API paths these tests need, with what each request asked for kept in ``asked``."""

    def __init__(self) -> None:
        self.pod: dict[str, Any] = copy.deepcopy(POD)
        self.metrics: tuple[int, str, str] = (200, (DATA / "podmetrics.json").read_text(), "application/json")
        self.log: tuple[int, list[bytes], str] = (200, _chunks(LOG), "text/plain")
        self.asked: list[tuple[str, dict[str, str]]] = []
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/pods/{name}", self.get_pod)
        app.router.add_get("/api/v1/nodes/fake-node", self.get_node)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{name}", self.get_metrics)
        app.router.add_get("/api/v1/namespaces/default/pods/{name}/log", self.get_log)
        self.app = app

    def _note(self, request: web.Request) -> None:
        assert request.headers["Authorization"] == "Bearer fake-token"
        self.asked.append((request.path, dict(request.query)))

    async def get_pod(self, request: web.Request) -> web.Response:
        self._note(request)
        if request.match_info["name"] != NAME:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                      "message": f'pods "{request.match_info["name"]}" not found', "code": 404},
                                     status=404)
        return web.json_response(self.pod)

    async def get_node(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.Response(text=(DATA / "node.json").read_text(), content_type="application/json")

    async def get_metrics(self, request: web.Request) -> web.Response:
        self._note(request)
        status, body, content_type = self.metrics
        return web.Response(status=status, text=body, content_type=content_type)

    async def get_log(self, request: web.Request) -> web.StreamResponse:
        """Sent in pieces that cut lines apart, as a kubelet's stream arrives."""
        self._note(request)
        status, chunks, content_type = self.log
        response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response


def _chunks(data: bytes, size: int = 50) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.fixture
async def fake_api(aiohttp_server) -> tuple[FakeApi, Any]:
    fake = FakeApi()
    return fake, await aiohttp_server(fake.app, host="127.0.0.1")


@pytest.fixture
async def daemon(fake_api, make_client, tmp_path):
    """A Kubernetes-only daemon whose kubeconfig points at the fake API server."""
    fake, server = fake_api
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
        "users": [{"name": "u", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]}))
    client = await make_client({
        "state_dir": str(tmp_path / "state"), "server": {"listen": "127.0.0.1:0", "tls": {"mode": "off"}},
        "runtimes": {"primary": "kubernetes", "docker": {"enabled": False},
                     "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "namespaces": ["default"]}},
        "apps": [{"id": "grafana", "name": "Grafana"}]})
    return fake, client


async def test_logs_are_lines_of_the_first_container(daemon):
    fake, client = daemon
    runtime = client.app[RUNTIMES].pick("kubernetes")
    lines = [line async for line in runtime.logs(Ref(NAME, "default"), tail=3, follow=False, timestamps=True)]
    expected = LOG.decode().splitlines()
    assert [line.message for line in lines] == expected
    assert {line.stream for line in lines} == {"stdout"}
    assert int(lines[0].timestamp) == 1795883730  # 2026-11-28T16:35:30Z, read from the line itself
    path, query = fake.asked[-1]
    assert path.endswith(f"/pods/{NAME}/log")
    assert query == {"container": "grafana", "tailLines": "3", "follow": "false", "timestamps": "true"}


async def test_a_last_line_without_newline_still_arrives(daemon):
    fake, client = daemon
    fake.log = (200, _chunks(b"one\ntw") + [b"o\nthree"], "text/plain")
    runtime = client.app[RUNTIMES].pick("kubernetes")
    lines = [line.message async for line in runtime.logs(Ref(NAME, "default"), tail=10, follow=True,
                                                         timestamps=False)]
    assert lines == ["one", "two", "three"]
    assert fake.asked[-1][1]["follow"] == "true"


async def test_log_subscription_over_the_websocket(daemon):
    fake, client = daemon
    ws = await ws_connect(client)
    await ws.send_json({"type": "container.logs.subscribe",
                        "data": {"containerId": NAME, "namespace": "default", "tail": 5, "follow": True}})
    await next_message(ws, "container.logs.started")
    got = [(await next_message(ws, "container.logs"))["data"] for _ in range(3)]
    assert [d["message"] for d in got] == LOG.decode().splitlines()
    assert all(d["containerId"] == NAME and d["stream"] == "stdout" for d in got)
    ended = await next_message(ws, "container.logs.ended")
    assert ended["data"]["reason"] == "container_stopped"
    await ws.close()


async def test_log_errors_are_clear(daemon):
    fake, client = daemon
    fake.log = (500, [(DATA / "pod-log-no-kubelet.json").read_bytes()], "application/json")  # the real answer
    runtime = client.app[RUNTIMES].pick("kubernetes")
    with pytest.raises(EngineError) as exc:
        async for _ in runtime.logs(Ref(NAME, "default"), tail=1, follow=False, timestamps=False):
            pass
    assert "kubelet" in str(exc.value) and "connection refused" in str(exc.value)
    with pytest.raises(ApiError) as missing:
        async for _ in runtime.logs(Ref("gone", "default"), tail=1, follow=False, timestamps=False):
            pass
    assert missing.value.code == "CONTAINER_NOT_FOUND"
