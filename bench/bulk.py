"""Bulk restart: `restart-all` of 20 linked containers ÷ one restart by the raw engine (target ≤ 5.0:
with `bulk.concurrency` 5, twenty restarts are four waves). Also the same twenty restarts sent straight
to the engine five at a time: the floor that the engine itself allows on this machine.

    python -m bench.bulk [--containers 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor

from bench.common import Daemon, Lab, Row, linked, scratch, standalone, timed

APP = "bulk"


def run(lab: Lab, containers: int = 20, rounds: int = 3) -> list[Row]:
    engine = lab.engine
    with scratch(engine):
        ids = [engine.run(f"bulk-{i:02d}", "sleep 100000", labels=linked(APP)) for i in range(containers)]
        spare = engine.run("bulk-spare", "sleep 100000")
        with Daemon(engine, APP) as daemon:
            def engine_restart() -> None:
                status, _ = engine.api("POST", f"/containers/{spare}/restart?t=10")
                assert status == 204, status

            def engine_restarts() -> None:
                with ThreadPoolExecutor(5) as pool:
                    list(pool.map(lambda c: engine.api("POST", f"/containers/{c}/restart?t=10"), ids))

            def restart_all() -> None:
                status, body = daemon.request("POST", "/api/v1/containers/restart-all")
                assert status == 200 and body["success"] == len(ids), body

            one, floor, bulk = [], [], []
            for _ in range(rounds):  # interleaved, so that machine noise hits all alike
                one.append(timed(engine_restart))
                floor.append(timed(engine_restarts))
                bulk.append(timed(restart_all))
    one_ms, bulk_ms = statistics.median(one) * 1000, statistics.median(bulk) * 1000
    floor_ms = statistics.median(floor) * 1000
    return [
        Row(f"restart-all of {containers} (engine: one restart), median", bulk_ms, "ms", one_ms, "ratio <= 5.0",
            bulk_ms / one_ms <= 5.0),
        Row(f"restart-all of {containers} (engine: {containers} restarts 5 at a time)", bulk_ms, "ms", floor_ms),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    standalone("bulk", run, 0, containers=args.containers, rounds=args.rounds)


if __name__ == "__main__":
    main()
