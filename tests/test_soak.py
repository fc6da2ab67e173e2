"""The short soak (60 s of load, 100 WebSocket clients and two engine kills against a real `nekzusd serve`)
as part of the suite, beside the other workers' tests (its checks are counts and trends, not timings);
`make soak` runs the long one. bench/soak.py does the checking: it exits non-zero and says why when any
check fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.engine  # a dockerd of its own, in a subprocess
def test_short_soak_passes_every_check() -> None:
    # A lighter load than `make soak`'s (50 requests/s, 200 clients, 20 followers): beside the other
    # workers' tests on two cores, that one fell 25 s behind, its load generator and the daemon starved of CPU,
    # and too few samples were taken to judge a trend. The faults, the checks and their tolerances are the same.
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--seconds", "60", "--rate", "20", "--clients", "100",
                           "--followers", "10"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"soak failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    assert "soak: all checks passed" in done.stdout, done.stdout
