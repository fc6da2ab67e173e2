"""`make bench`'s runner on a tiny configuration: every benchmark runs against the shared dockerd and the
table and results.json come out in the one row shape. The figures of so small a run mean nothing; only
that each benchmark measured something, with the engine beside it where it has a counterpart."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.engine  # a dockerd of its own, in a subprocess
def test_quick_run_of_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--containers", "3", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-5000:]}"
    results = json.loads(out.read_text())
    assert results["machine"]["cores"] >= 1 and results["containers"] == 3
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    for name, rows in results["benchmarks"].items():
        assert rows, name
        for row in rows:
            assert set(row) == {"name", "value", "unit", "engine", "target", "ok", "ratio"}, row
            assert math.isfinite(row["value"]) and row["unit"], row  # a difference may come out negative
            if row["engine"]:
                assert row["ratio"] == pytest.approx(row["value"] / row["engine"]), row
            assert row["name"] in done.stdout  # the same figures in the printed table
    assert any(row["engine"] for rows in results["benchmarks"].values() for row in rows)
