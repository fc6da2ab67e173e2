"""``container.state_changed`` delay: from the engine's own event (its ``timeNano``: ``die`` for a stop,
``start`` for a start) to the message reaching a WebSocket client of nekzusd, over stop/start rounds made
through the raw engine API, each one more than the coalescing window after the last. The engine's figure:
the same event reaching a raw ``/events`` subscriber.
Also how many messages one stop/start makes (2 expected: exited, then running).

    python -m bench.state_changes [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

from bench.common import Daemon, Lab, Row, scratch, standalone

EVENTS = {"die": "exited", "start": "running"}
# Seconds between one change's message and the next action: more than the per-container window, so that
# each change is measured alone (a change within the window waits for its end, by design).
PAUSE = 0.4


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(lab: Lab, daemon: Daemon, cid: str, rounds: int) -> tuple[list[float], list[float], int]:
    engine = lab.engine
    short = cid[:12]
    event_at: dict[tuple[str, int], int] = {}  # (state, round) -> the engine's timeNano
    raw_delay: list[float] = []
    ours: list[float] = []
    messages = 0
    counts = {"exited": 0, "running": 0}
    arrived = asyncio.Event()

    async def raw_events(session: aiohttp.ClientSession) -> None:
        seen = {"exited": 0, "running": 0}
        params = {"filters": json.dumps({"type": ["container"], "container": [cid]})}
        async with session.get("http://engine/events", params=params, timeout=aiohttp.ClientTimeout()) as response:
            async for line in response.content:
                now = time.time_ns()
                event = json.loads(line)
                state = EVENTS.get(event.get("Action", ""))
                if state:
                    event_at[(state, seen[state])] = event["timeNano"]
                    seen[state] += 1
                    raw_delay.append((now - event["timeNano"]) / 1e6)

    async def client(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal messages
        async for frame in ws:
            now = time.time_ns()
            message = json.loads(frame.data)
            data = message["data"]
            if message["type"] != "container.state_changed" or data["containerId"] != short:
                continue
            messages += 1
            state = data["state"]
            if state in counts:
                key = (state, counts[state])
                counts[state] += 1
                for _ in range(100):  # the raw subscriber may be a moment behind
                    if key in event_at:
                        break
                    await asyncio.sleep(0.01)
                ours.append((now - event_at[key]) / 1e6)
                arrived.set()

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(engine.socket_path))) as raw, \
            aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{daemon.url}/api/v1/ws") as ws:
            await ws.send_json({"type": "auth", "data": {"token": ""}})
            tasks = [asyncio.create_task(raw_events(raw)), asyncio.create_task(client(ws))]
            await asyncio.sleep(0.5)  # both subscribed
            try:
                for _ in range(rounds):
                    for action, state in (("stop?t=5", "exited"), ("start", "running")):
                        want = counts[state] + 1
                        status, _ = await asyncio.to_thread(engine.api, "POST", f"/containers/{cid}/{action}")
                        assert status == 204, status
                        async with asyncio.timeout(10):
                            while counts[state] < want:
                                arrived.clear()
                                await arrived.wait()
                        await asyncio.sleep(PAUSE)
                await asyncio.sleep(1.0)  # anything late is counted
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    return ours, raw_delay, messages


def run(lab: Lab, rounds: int = 50) -> list[Row]:
    engine = lab.engine
    with scratch(engine):
        cid = engine.run("state-bench", "sleep 100000")
        with Daemon(engine) as daemon:
            ours, raw, messages = asyncio.run(measure(lab, daemon, cid, rounds))
    n = len(ours)
    return [
        Row(f"state_changed delay after the engine's event, p50 ({n} changes)", statistics.median(ours), "ms",
            statistics.median(raw)),
        Row(f"state_changed delay after the engine's event, p99 ({n} changes)", percentile(ours, 0.99), "ms",
            percentile(raw, 0.99)),
        Row("state_changed delay, stops only (die), p50", statistics.median(ours[0::2]), "ms"),
        Row("state_changed delay, starts only (start), p50", statistics.median(ours[1::2]), "ms"),
        Row(f"state_changed messages per stop/start ({rounds} rounds)", messages / rounds, "msgs", None,
            "<= 2", messages / rounds <= 2),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    standalone("state_changes", run, 30, rounds=args.rounds)


if __name__ == "__main__":
    main()
