"""Pod log throughput through nekzusd against the same pod's raw follow stream through the API server.

The live cluster of tests/harness/k8s_live.py (control plane, private dockerd, real kubelet) and a real
`nekzusd serve` process with only the Kubernetes runtime. A pod waits for a go signal, then writes N
numbered lines as fast as it can (`seq`). Subscribed before the signal: a raw follow of the pod log API
(``GET /api/v1/namespaces/default/pods/P/log?follow=true``, aiohttp with the admin token, in a child process
so that it has a core of its own as a real client would) and one client of nekzusd: a WebSocket
subscription (per-line and batch mode) or the HTTP logs route. Rate = lines / (last line time - first
line time) per consumer.

Both readers get the same bytes from the same kubelet; what the ratio shows is nekzusd's own cost (parse,
encode, send) on top of the API server's relay.

    python -m bench.k8s_logs [--lines 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import ssl
import statistics
import time

import aiohttp

from bench.common import ROOT, Daemon, Row, table
from tests.harness.k8s_live import LiveCluster, container, pod, wait_pod
from tests.harness.app import BROADCASTS, authenticate

WAIT_GO = "while [ ! -e /tmp/go ]; do sleep 0.02; done; "
# How the nekzusd client reads: a WebSocket subscription one message per line or in batches, or the HTTP
# logs route (text, chunked).
MODES = {"per-line": "WebSocket per line", "batch": "WebSocket batch mode", "http": "HTTP follow, text"}


def raw_follow(api_url: str, token: str, ca_file: str, name: str, lines: int, ready, result) -> None:
    """Child process: count the lines of the API server's own follow stream; send back lines per second."""
    async def main() -> float:
        context = ssl.create_default_context(cafile=ca_file)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            url = f"{api_url}/api/v1/namespaces/default/pods/{name}/log?follow=true&tailLines=0"
            async with session.get(url, ssl=context, timeout=aiohttp.ClientTimeout(total=None)) as response:
                assert response.status == 200, await response.text()
                ready.set()
                seen, first = 0, None
                while True:
                    chunk = await response.content.read(32768)
                    if not chunk:
                        break
                    if first is None:
                        first = time.perf_counter()
                    seen += chunk.count(b"\n")
                    if seen >= lines:
                        return lines / (time.perf_counter() - first)
        raise RuntimeError(f"raw stream ended after {seen} lines")
    result.send(asyncio.run(main()))


async def ws_client(url: str, name: str, lines: int, batch: bool, subscribed: asyncio.Event) -> float:
    """One WebSocket subscriber: lines per second; fails on any drop or loss."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/api/v1/ws", max_msg_size=16 << 20) as ws:
        await authenticate(ws)
        await ws.send_json({"type": "container.logs.subscribe",
                            "data": {"containerId": name, "namespace": "default", "tail": 0, "batch": batch}})
        while (answer := await ws.receive_json())["type"] in BROADCASTS:
            pass
        assert answer["type"] == "container.logs.started", answer
        subscribed.set()
        seen, first, text = 0, None, ""
        while seen < lines:
            text = (await ws.receive()).data
            if text.startswith('{"type":"container.logs",'):
                seen += 1
            elif text.startswith('{"type":"container.logs.batch",'):
                seen += len(json.loads(text)["data"]["lines"])
            elif not text.startswith(('{"type":"health_change"', '{"type":"container.state_changed"')):
                raise RuntimeError(f"unexpected message: {text[:200]}")
            if first is None:
                first = time.perf_counter()
        data = json.loads(text)["data"]
        assert (data["lines"][-1]["message"] if batch else data["message"]) == str(lines)
        return lines / (time.perf_counter() - first)


async def http_client(url: str, name: str, lines: int, subscribed: asyncio.Event) -> float:
    """One HTTP follower (``GET …/{namespace}/{pod}/logs?follow=true``, text): lines per second."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/containers/default/{name}/logs",
                               params={"follow": "true", "tail": "0"},
                               timeout=aiohttp.ClientTimeout(total=None)) as response:
            assert response.status == 200, await response.text()
            subscribed.set()
            seen, first, last = 0, None, b""
            while seen < lines:
                chunk = await response.content.read(32768)
                if not chunk:
                    raise RuntimeError(f"HTTP stream ended after {seen} lines")
                if first is None:
                    first = time.perf_counter()
                seen += chunk.count(b"\n")
                last = (last + chunk)[-64:]
            assert last.rstrip(b"\n").rsplit(b"\n", 1)[-1] == str(lines).encode(), last
            return lines / (time.perf_counter() - first)


async def one_round(live: LiveCluster, url: str, lines: int, mode: str, index: int) -> tuple[float, float]:
    """(raw lines/s, nekzusd lines/s) for one flood of one pod."""
    from kubernetes_asyncio import client

    name = f"flood-{index}"
    async with live.cluster.api_client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_pod("default", pod(name, container(
            "main", "echo ready; " + WAIT_GO + f"seq 1 {lines}; sleep 3600 & wait")))
        try:
            await wait_pod(api, "default", name)  # its container runs
            async with asyncio.timeout(30):  # and the kubelet has its log (before that: an error text)
                while await core.read_namespaced_pod_log(name, "default") != "ready\n":
                    await asyncio.sleep(0.1)
            info = live.cluster.info
            assert info is not None
            ctx = multiprocessing.get_context("spawn")
            ready, (receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
            child = ctx.Process(target=raw_follow, args=(info.api_url, info.admin_token, str(info.ca_file), name,
                                                         lines, ready, send))
            child.start()
            try:
                subscribed = asyncio.Event()
                task = asyncio.create_task(http_client(url, name, lines, subscribed) if mode == "http"
                                           else ws_client(url, name, lines, mode == "batch", subscribed))
                await asyncio.wait_for(subscribed.wait(), 30)
                await asyncio.to_thread(ready.wait, 30)
                await asyncio.sleep(0.5)  # both requests reached the kubelet
                uid = (await core.read_namespaced_pod(name, "default")).metadata.uid
                await asyncio.to_thread(_go, live, uid)
                ws_rate = await asyncio.wait_for(task, 600)
                raw_rate = await asyncio.to_thread(receive.recv)
            finally:
                child.join(30)
        finally:
            await core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    return raw_rate, ws_rate


def _go(live: LiveCluster, uid: str) -> None:
    engine = live.engine
    assert engine is not None
    cid = next(c["Id"] for c in live.containers_of(uid) if c["State"] == "running")
    created = engine.api_json("POST", f"/containers/{cid}/exec", {"Cmd": ["touch", "/tmp/go"]}, expect=(201,))
    engine.api_json("POST", f"/exec/{created['Id']}/start", {"Detach": False}, expect=(200,))


def run(lines: int = 200_000, rounds: int = 3) -> tuple[list[Row], LiveCluster]:
    live = LiveCluster().start()
    try:
        assert live.engine is not None
        runtimes = {"primary": "kubernetes", "docker": {"enabled": False},
                    "kubernetes": {"enabled": True, "kubeconfig": str(live.kubeconfig), "namespaces": ["default"]}}
        rows = []
        with Daemon(live.engine, "web", runtimes=runtimes) as daemon:
            index = 0
            for mode, what in MODES.items():
                raws, ours = [], []
                for _ in range(rounds):
                    index += 1
                    raw, ws = asyncio.run(one_round(live, daemon.url, lines, mode, index))
                    raws.append(raw)
                    ours.append(ws)
                    print(f"{mode}: raw {raw:.0f}, nekzusd {ws:.0f} lines/s ({ws / raw:.2f})", flush=True)
                raw, ws = statistics.median(raws), statistics.median(ours)
                rows.append(Row(f"pod log lines/s, 1 client, {what} (median of {rounds}; engine: raw API follow)",
                                ws, "lines/s", raw, "ratio >= 0.8", ws / raw >= 0.8))
    finally:
        live.stop()
    return rows, live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows, live = run(args.lines, args.rounds)
    print(f"live cluster: start-up {live.timings.total:.1f} s ({live.timings}), teardown {live.timings.teardown:.1f} s")
    print(table({"k8s_logs": rows}))
    print(f"(repository: {ROOT})")


if __name__ == "__main__":
    main()
