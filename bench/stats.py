"""Stats latency: first call ÷ the engine's own `stream=false`, repeat calls, batch of 20 ÷ one first call.

    python -m bench.stats [--rounds 5] [--batch 20]

First calls are measured on containers nobody asked about yet, interleaved with the engine's
`stream=false` on other fresh containers, so both meet dockerd's stats collector in the same state:
running, as it is while any sampler lives (a collector that has to start answers a new subscriber a
little sooner, which would flatter whichever side met it).
"""

from __future__ import annotations

import argparse
import functools
import statistics

from bench.common import Daemon, Lab, Row, linked, median_of, scratch, standalone, timed

APP = "stats"


def run(lab: Lab, rounds: int = 5, batch: int = 20) -> list[Row]:
    engine = lab.engine
    with scratch(engine):
        members = [engine.run(f"stats-{i:02d}", "sleep 100000", labels=linked(APP)) for i in range(batch)]
        fresh = [engine.run(f"fresh-{i:02d}", "sleep 100000") for i in range(2 * rounds)]
        keeper = engine.run("keeper", "sleep 100000")
        with Daemon(engine, APP) as daemon:
            def stats(container_id: str) -> None:
                status, _ = daemon.request("GET", f"/api/v1/containers/{container_id[:12]}/stats")
                assert status == 200, status

            def engine_stats(container_id: str) -> None:
                status, _ = engine.api("GET", f"/containers/{container_id}/stats?stream=false")
                assert status == 200, status

            def batch_stats() -> None:
                status, body = daemon.request("GET", "/api/v1/containers/stats")
                assert status == 200 and len(body["containers"]) == len(members), body

            stats(keeper)  # from here on dockerd's collector runs, for every measurement alike
            batch_time = timed(batch_stats)  # all of its samplers fresh
            engine_first, daemon_first = [], []
            for i in range(rounds):
                engine_first.append(timed(functools.partial(engine_stats, fresh[2 * i])))
                daemon_first.append(timed(functools.partial(stats, fresh[2 * i + 1])))
            repeat = median_of(lambda: stats(fresh[1]), 50)
    engine_ms = statistics.median(engine_first) * 1000
    first_ms = statistics.median(daemon_first) * 1000
    batch_ms = batch_time * 1000
    return [
        Row("stats first call, fresh container, median", first_ms, "ms", engine_ms, "ratio <= 1.05",
            first_ms / engine_ms <= 1.05),
        Row("stats repeat call, median", repeat * 1000, "ms", engine_ms, "<= 50 ms", repeat * 1000 <= 50),
        Row(f"batch stats of {batch} (fresh samplers), wall", batch_ms, "ms", engine_ms, "<= 1.3 x first",
            batch_ms / first_ms <= 1.3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    standalone("stats", run, 0, rounds=args.rounds, batch=args.batch)


if __name__ == "__main__":
    main()
