"""Log streaming throughput and memory, as ratios against the raw engine measured in the same run.

A private dockerd and a real `nekzusd serve` process; a container waits for a go signal, then writes
N numbered lines as fast as it can (`seq`). Subscribed before the signal: a raw aiodocker follow stream
(in a child process, so that it has a core of its own as a real client would) and 1 or 20 WebSocket
clients, per-line and batch mode, or one HTTP follow (GET …/logs, text and NDJSON). Rate = lines / (last
line time - first line time) per consumer.
Also the daemon's RSS growth while a client that never reads is subscribed to a 200 MB flood.

    python -m bench.logs [--lines 200000] [--clients 20] [--flood-mb 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time

import aiodocker
import aiohttp

from bench.common import Daemon, Lab, Row, rss_mb, scratch, standalone
from tests.harness.app import BROADCASTS, authenticate

WAIT_GO = "while [ ! -e /tmp/go ]; do sleep 0.02; done; "


def go(engine, cid: str) -> None:
    created = engine.api_json("POST", f"/containers/{cid}/exec", {"Cmd": ["touch", "/tmp/go"]}, expect=(201,))
    engine.api_json("POST", f"/exec/{created['Id']}/start", {"Detach": False}, expect=(200,))


def raw_follow(url: str, cid: str, lines: int, ready, result) -> None:
    """Child process: count lines of aiodocker's own follow stream; send back lines per second."""
    async def main() -> float:
        docker = aiodocker.Docker(url=url)
        try:
            stream = docker.containers.container(cid).log(stdout=True, stderr=True, follow=True, tail=0)
            ready.set()
            seen, first = 0, None
            async for chunk in stream:
                if first is None:
                    first = time.perf_counter()
                seen += chunk.count("\n")
                if seen >= lines:
                    return lines / (time.perf_counter() - first)
        finally:
            await docker.close()
        raise RuntimeError(f"raw stream ended after {seen} lines")
    result.send(asyncio.run(main()))


async def ws_client(session: aiohttp.ClientSession, url: str, cid: str, lines: int, batch: bool,
                    subscribed: asyncio.Event, counter: list[int]) -> tuple[float, float]:
    """One WebSocket subscriber: (first line time, last line time); fails on any drop or loss."""
    async with session.ws_connect(f"{url}/api/v1/ws", max_msg_size=16 << 20) as ws:
        await authenticate(ws)
        await ws.send_json({"type": "container.logs.subscribe",
                            "data": {"containerId": cid, "tail": 0, "batch": batch}})
        while (answer := await ws.receive_json())["type"] in BROADCASTS:
            pass
        assert answer["type"] == "container.logs.started", answer
        counter[0] += 1
        if counter[0] == counter[1]:
            subscribed.set()
        seen, first = 0, None
        while seen < lines:
            msg = await ws.receive()
            text = msg.data
            if text.startswith('{"type":"container.logs",'):
                seen += 1
            elif text.startswith('{"type":"container.logs.batch",'):
                seen += len(json.loads(text)["data"]["lines"])
            elif text.startswith('{"type":"container.state_changed",'):
                continue  # every client is told of state changes (the container started); not a line
            else:
                raise RuntimeError(f"unexpected message: {text[:200]}")
            if first is None:
                first = time.perf_counter()
        last_line = json.loads(text)["data"]
        last = last_line["lines"][-1]["message"] if batch else last_line["message"]
        assert last == str(lines), last
        return first, time.perf_counter()


class RawFlood:
    """A container that writes ``lines`` lines once told to go, followed meanwhile by the raw engine in a
    child process: the figure the daemon's streams are compared with, from the same flood."""

    def __init__(self, engine, lines: int) -> None:
        self.engine, self.lines = engine, lines

    async def __aenter__(self) -> RawFlood:
        self.cid = await asyncio.to_thread(self.engine.run, None, WAIT_GO + f"seq 1 {self.lines}; sleep 100000")
        ctx = multiprocessing.get_context("spawn")
        self.ready, (self.receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
        self.child = ctx.Process(target=raw_follow, args=(self.engine.url, self.cid, self.lines, self.ready, send))
        self.child.start()
        return self

    async def go(self) -> None:
        """Start the flood, once the clients under test are subscribed."""
        await asyncio.to_thread(self.ready.wait, 30)
        await asyncio.sleep(0.5)  # the raw stream's request is on its way: let it settle
        await asyncio.to_thread(go, self.engine, self.cid)

    async def raw_rate(self) -> float:
        return await asyncio.to_thread(self.receive.recv)

    async def __aexit__(self, *exc: object) -> None:
        self.child.join(30)
        await asyncio.to_thread(self.engine.api, "DELETE", f"/containers/{self.cid}?force=1")


async def throughput(engine, url: str, lines: int, clients: int, batch: bool) -> tuple[float, float]:
    """(raw lines/s, WebSocket lines/s summed over the clients) for one flood."""
    async with RawFlood(engine, lines) as flood:
        subscribed = asyncio.Event()
        counter = [0, clients]
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(ws_client(session, url, flood.cid, lines, batch, subscribed, counter))
                     for _ in range(clients)]
            await asyncio.wait_for(subscribed.wait(), 30)
            await flood.go()
            spans = await asyncio.wait_for(asyncio.gather(*tasks), 600)
        raw_rate = await flood.raw_rate()
    ws_rate = sum(lines / (last - first) for first, last in spans)
    return raw_rate, ws_rate


async def http_client(session: aiohttp.ClientSession, url: str, cid: str, lines: int, ndjson: bool,
                      opened: asyncio.Event) -> tuple[float, float]:
    """One HTTP follow (GET …/logs?follow=true&tail=0), text or NDJSON: (first line time, last line time)."""
    headers = {"Accept": "application/x-ndjson"} if ndjson else {}
    async with session.get(f"{url}/api/v1/containers/{cid}/logs", params={"follow": "true", "tail": "0"},
                           headers=headers) as resp:
        assert resp.status == 200, resp.status
        opened.set()
        seen, first, tail = 0, None, b""
        async for chunk in resp.content.iter_any():
            if first is None:
                first = time.perf_counter()
            seen += chunk.count(b"\n")
            tail = (tail + chunk)[-200:]
            if seen >= lines:
                break
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
        assert (json.loads(last)["message"] if ndjson else last) == str(lines), last
        assert first is not None
        return first, time.perf_counter()


async def http_throughput(engine, url: str, lines: int, ndjson: bool) -> tuple[float, float]:
    """(raw lines/s, HTTP lines/s) for one flood followed by both at once."""
    async with RawFlood(engine, lines) as flood:
        opened = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(http_client(session, url, flood.cid, lines, ndjson, opened))
            await asyncio.wait_for(opened.wait(), 30)
            await flood.go()
            first, last = await asyncio.wait_for(task, 600)
        raw_rate = await flood.raw_rate()
    return raw_rate, lines / (last - first)


async def stalled_rss(engine, url: str, pid: int, megabytes: int, seconds: float) -> float:
    """Peak RSS growth of the daemon (MB) while a client that never reads is subscribed to a flood, over
    ``seconds`` (longer than hub.SEND_TIMEOUT, after which the daemon closes the stuck client)."""
    cid = await asyncio.to_thread(engine.run, None, WAIT_GO + "yes 'a line of a flood, about a hundred bytes "
                                  "long, written as fast as the engine takes it ..........' | "
                                  f"head -c {megabytes}000000; sleep 100000")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{url}/api/v1/ws")
        await authenticate(ws)
        await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": cid, "tail": 0}})
        await ws.receive_json()
        await asyncio.sleep(1)
        baseline = peak = rss_mb(pid)
        start = time.perf_counter()
        await asyncio.to_thread(go, engine, cid)
        while time.perf_counter() - start < seconds:  # reading nothing meanwhile
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.1)
        await ws.close()
    await asyncio.to_thread(engine.api, "DELETE", f"/containers/{cid}?force=1")
    return peak - baseline


async def measure(engine, url: str, pid: int, lines: int, clients: int, flood_mb: int,
                  stalled_seconds: float) -> list[Row]:
    rows = []
    for batch in (False, True):
        mode = "batch" if batch else "per-line"
        for count, target in ((1, 0.8), (clients, None)):
            raw, ws = await throughput(engine, url, lines if count == 1 else lines // 4, count, batch)
            rows.append(Row(f"log lines/s, {mode}, {count} client(s) (sum)", ws, "lines/s", raw,
                            f"ratio >= {target}" if target else "-", None if target is None else ws / raw >= target))
    for ndjson in (False, True):
        raw, http = await http_throughput(engine, url, lines, ndjson)
        kind = "NDJSON" if ndjson else "text"
        rows.append(Row(f"log lines/s over HTTP (GET …/logs?follow=true, {kind}), 1 client", http, "lines/s", raw,
                        "ratio >= 0.8" if not ndjson else "-", http / raw >= 0.8 if not ndjson else None))
    growth = await stalled_rss(engine, url, pid, flood_mb, stalled_seconds)
    rows.append(Row(f"daemon RSS growth, a stalled client under a {flood_mb} MB flood", growth, "MB", None,
                    "<= 50 MB", growth <= 50))
    return rows


def run(lab: Lab, lines: int = 200_000, clients: int = 20, flood_mb: int = 200,
        stalled_seconds: float = 25.0) -> list[Row]:
    """``stalled_seconds`` should pass hub.SEND_TIMEOUT, after which the daemon closes the stuck client."""
    with scratch(lab.engine), Daemon(lab.engine, "logs") as daemon:
        return asyncio.run(measure(lab.engine, daemon.url, daemon.pid, lines, clients, flood_mb, stalled_seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--flood-mb", type=int, default=200)
    args = parser.parse_args()
    standalone("logs", run, 0, lines=args.lines, clients=args.clients, flood_mb=args.flood_mb)


if __name__ == "__main__":
    main()
