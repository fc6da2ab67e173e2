"""`make bench`: every benchmark against one private dockerd with 30 containers, one table, and the same
figures as JSON (bench/results.json) for comparison between versions.

    python -m bench [--containers 30] [--quick] [--json bench/results.json] [--only stats,bulk]

``--quick`` runs each benchmark on a tiny configuration: it proves the runner works, its figures mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from bench import access_control, api_overhead, bulk, livestats, logs, merged_list, state_changes, stats
from bench.common import ROOT, lab, table

# Each benchmark with its options: the full run, and a tiny one.
BENCHMARKS = {
    "api_overhead": (api_overhead.run, {"requests": 300}, {"requests": 20}),
    "stats": (stats.run, {"rounds": 5, "batch": 20}, {"rounds": 1, "batch": 3}),
    "bulk": (bulk.run, {"containers": 20, "rounds": 3}, {"containers": 3, "rounds": 1}),
    "logs": (logs.run, {"lines": 200_000, "clients": 20},
             {"lines": 2000, "clients": 2, "flood_mb": 5, "stalled_seconds": 2.0}),
    "livestats": (livestats.run, {"watched": 20, "seconds": 20.0}, {"watched": 3, "seconds": 2.0}),
    "access_control": (access_control.run, {"containers": 20, "requests": 300}, {"containers": 3, "requests": 20}),
    "merged_list": (merged_list.run, {"pods": 20, "requests": 200}, {"pods": 2, "requests": 20}),
    "state_changes": (state_changes.run, {"rounds": 50}, {"rounds": 3}),
}


def machine(engine) -> dict:
    version = engine.api_json("GET", "/version")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"cores": os.cpu_count(), "python": platform.python_version(), "dockerd": version.get("Version"),
            "commit": commit.stdout.strip() or None, "load_average_at_start": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=30, help="containers in the shared dockerd")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (a smoke test of the runner)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    sections, seconds = {}, {}
    with lab(args.containers) as the_lab:
        about = machine(the_lab.engine)
        for name in chosen:
            run, full, quick = BENCHMARKS[name]
            started = time.perf_counter()
            sections[name] = run(the_lab, **(quick if args.quick else full))
            seconds[name] = round(time.perf_counter() - started, 1)
            print(f"{name}: done in {seconds[name]} s", flush=True)
    about["load_average_at_end"] = os.getloadavg()[0]
    print(f"nekzusd benchmarks: {about['cores']} cores, dockerd {about['dockerd']}, {args.containers} containers "
          f"in the engine, load average {about['load_average_at_start']:.1f} -> {about['load_average_at_end']:.1f}")
    print(table(sections))
    args.json.write_text(json.dumps({"machine": about, "containers": args.containers, "quick": args.quick,
                                     "seconds": seconds,
                                     "benchmarks": {name: [r.as_json() for r in rows]
                                                    for name, rows in sections.items()}}, indent=1) + "\n")
    missed = [f"{name}: {r.name}" for name, rows in sections.items() for r in rows if r.ok is False]
    print(f"targets missed: {len(missed)}" + "".join(f"\n  - {m}" for m in missed))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
