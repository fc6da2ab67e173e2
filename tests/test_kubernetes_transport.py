"""How the Kubernetes runtime reaches the API server: the proxy it goes through.

At the HTTP boundary (the fake API server of tests/test_k8s_stats.py, answering with recorded documents):
a proxy cannot be set up in front of the suite's real kube-apiserver without changing what it is tested
for, and here the fake server can play the proxy itself. Everything on nekzusd's side is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nekzusd.config import KubernetesConfig
from nekzusd.errors import RuntimeUnavailable
from nekzusd.runtimes import Ref
from nekzusd.runtimes.kubernetes import KubernetesRuntime
from tests.test_k8s_stats import NAME, fake_api  # noqa: F401 -- fake_api: a fixture


def _kubeconfig(path: Path, server: str, **cluster: str) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}]}))
    return str(path)


async def test_the_api_servers_proxy_comes_from_the_kubeconfig_else_from_the_environment(
        fake_api, tmp_path, monkeypatch, unused_tcp_port):  # noqa: F811
    """nekzusd reads the proxy variables once, not on each request as kubernetes-asyncio's session would;
    the proxy it uses must stay the same: the kubeconfig's ``proxy-url``, else HTTP(S)_PROXY / NO_PROXY.
    The API server is a name that does not resolve, so an answer can only come through the proxy, here
    the fake API server itself (a proxied plain-HTTP request carries the API server's name as Host)."""
    fake, server = fake_api
    fake_url = f"http://127.0.0.1:{server.port}"
    api_server = "http://kube-api.nekzus-test.invalid:6443"
    for var in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)

    async def pod_through(kubeconfig: str) -> str:
        runtime = KubernetesRuntime(KubernetesConfig(enabled=True, kubeconfig=kubeconfig))
        try:
            return (await runtime.get(Ref(NAME, "default"))).name
        finally:
            await runtime.close()

    monkeypatch.setenv("HTTP_PROXY", fake_url)
    assert await pod_through(_kubeconfig(tmp_path / "env", api_server)) == NAME
    assert fake.hosts[-1] == "kube-api.nekzus-test.invalid"

    fake.hosts.clear()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_tcp_port}")  # nothing listens there
    assert await pod_through(_kubeconfig(tmp_path / "own", api_server, **{"proxy-url": fake_url})) == NAME
    assert fake.hosts and set(fake.hosts) == {"kube-api.nekzus-test.invalid"}

    monkeypatch.setenv("HTTP_PROXY", fake_url)
    monkeypatch.setenv("NO_PROXY", ".nekzus-test.invalid")  # bypassed: the name is then looked up, and fails
    with pytest.raises(RuntimeUnavailable):
        await pod_through(_kubeconfig(tmp_path / "bypass", api_server))
