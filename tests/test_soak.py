"""The short soak (60 s of load, WebSocket clients and two engine kills against a real `nekzusd serve`)
as part of `make test`, beside the other workers' tests, at half the load of `make soak` (which runs the
long one). On that busy machine the load generator can still fall behind; its sampler, a thread of its own,
takes a sample every second all the same. bench/soak.py does the checking: it exits non-zero and says why
when any check fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.engine  # a dockerd of its own, in a subprocess
def test_short_soak_passes_every_check() -> None:
    # Half the load of `make soak` (50 requests/s, 200 clients, 20 following the logs of 10 busy containers,
    # two each): at full load beside the other workers the daemon got so little CPU that it answered in 7 s
    # (p50), /metrics too.
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--seconds", "60", "--rate", "25", "--clients",
                           "100", "--followers", "10", "--busy", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"soak failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    assert "soak: all checks passed" in done.stdout, done.stdout
