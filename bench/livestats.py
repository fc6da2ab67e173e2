"""Live stats over the WebSocket: the daemon's CPU for N containers watched at 1 s, against the engine's.

    python -m bench.livestats [--containers 20] [--seconds 20]

Two windows of the same length on the same N busybox containers:
1. a real `nekzusd serve` with one WebSocket client subscribed to the N containers at 1 s (the client reads
   every message): the CPU time of nekzusd and of dockerd over the window (both from /proc, utime+stime),
   and the messages the client got;
2. no daemon: N raw `GET /containers/{id}/stats?stream=1` streams read by this process: dockerd's CPU time.
Rows: the daemon's CPU against dockerd's in the same window (the engine's work for the daemon's N sampler
streams), and dockerd's CPU under the daemon against dockerd's for N raw streams (one engine stream per
container, whoever watches: about 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiohttp

from bench.common import Daemon, Lab, Row, scratch, standalone

APP = "livestats"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _through_daemon(url: str, ids: list[str], seconds: float, dockerd: int, nekzusd: int,
                          ) -> tuple[float, float, int]:
    """(nekzusd CPU s, dockerd CPU s, container.stats messages) over ``seconds`` of a subscription."""
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/api/v1/ws") as ws:
        await ws.send_json({"type": "auth", "data": {"token": ""}})
        await ws.send_json({"type": "container.stats.subscribe",
                            "data": {"containerIds": [i[:12] for i in ids], "interval": 1}})
        seen: set[str] = set()
        while len(seen) < len(ids):  # every sampler is up: the steady state starts
            message = await ws.receive_json(timeout=60)
            if message["type"] == "container.stats":
                seen.add(message["data"]["containerId"])
            assert message["type"] not in ("error", "container.stats.error"), message
        daemon_before, engine_before = cpu_seconds(nekzusd), cpu_seconds(dockerd)
        count, deadline = 0, time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await ws.receive_json(timeout=left)
            except TimeoutError:
                break
            count += message["type"] == "container.stats"
        return cpu_seconds(nekzusd) - daemon_before, cpu_seconds(dockerd) - engine_before, count


async def _raw_streams(socket_path: str, ids: list[str], seconds: float, dockerd: int) -> tuple[float, int]:
    """(dockerd CPU s, documents read) over ``seconds`` of N raw stats streams."""
    counts = [0] * len(ids)
    ready = asyncio.Event()
    connector = aiohttp.UnixConnector(path=socket_path, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def follow(i: int, cid: str) -> None:
            async with session.get(f"http://docker/containers/{cid}/stats", params={"stream": "1"},
                                   timeout=aiohttp.ClientTimeout(total=None)) as response:
                async for line in response.content:
                    if line.strip():
                        counts[i] += 1
                        if all(counts):
                            ready.set()

        tasks = [asyncio.create_task(follow(i, cid)) for i, cid in enumerate(ids)]
        try:
            await asyncio.wait_for(ready.wait(), 60)
            before, read_before = cpu_seconds(dockerd), sum(counts)
            await asyncio.sleep(seconds)  # the measuring window itself
            return cpu_seconds(dockerd) - before, sum(counts) - read_before
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def run(lab: Lab, watched: int = 20, seconds: float = 20.0) -> list[Row]:
    containers = watched
    engine = lab.engine
    with scratch(engine):
        ids = [engine.run(f"live-{i:02d}", "sleep 100000") for i in range(containers)]
        with Daemon(engine, APP) as daemon:
            daemon_cpu, engine_cpu, messages = asyncio.run(
                _through_daemon(daemon.url, ids, seconds, engine.pid, daemon.pid))
        time.sleep(2)  # the daemon's samplers are gone with it; dockerd settles before the raw window
        raw_cpu, documents = asyncio.run(_raw_streams(engine.url.removeprefix("unix://"), ids, seconds, engine.pid))
    core = 100 / seconds  # CPU seconds over the window -> % of one core
    return [
        Row(f"live stats, {containers} containers at 1 s: daemon CPU (engine: dockerd, same window)",
            daemon_cpu * core, "% core", engine_cpu * core, "-"),
        Row(f"live stats, {containers} containers at 1 s: daemon CPU (engine: {containers} raw stats streams)",
            daemon_cpu * core, "% core", raw_cpu * core, "-"),
        Row(f"live stats: dockerd CPU under the daemon (engine: {containers} raw stats streams)",
            engine_cpu * core, "% core", raw_cpu * core, "ratio <= 1.2",
            engine_cpu <= 1.2 * raw_cpu if raw_cpu else None),
        Row("live stats: messages received per second (engine: raw documents per second)",
            messages / seconds, "msg/s", documents / seconds, "-"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    standalone("livestats", run, 0, watched=args.containers, seconds=args.seconds)


if __name__ == "__main__":
    main()
