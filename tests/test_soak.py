"""The short soak (60 s of load, WebSocket clients and two engine kills against a real `nekzusd serve`)
as part of `make test`, beside the other workers' tests. On that busy machine the load generator and the
daemon fall behind; the load is then lighter than asked, and the sampler (a thread of its own) still takes a
sample every second. `make soak` runs the long one. bench/soak.py does the checking: it exits non-zero and says why when any check fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.engine  # a dockerd of its own, in a subprocess
def test_short_soak_passes_every_check() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--seconds", "60"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"soak failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    assert "soak: all checks passed" in done.stdout, done.stdout
