"""What every benchmark shares: a private dockerd (the "lab"), a real `nekzusd serve` process on a free
loopback port, timing, process figures, and the one row shape every benchmark returns.

A figure means little alone on an unknown machine, so each row carries, where one exists, the raw
engine's figure for the same thing measured in the same run, and the ratio between them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from tests.harness.engines import Engine, start_dockerd

#: The repository root (run the benchmarks from here: ``python -m bench``, ``python -m bench.soak``).
ROOT = Path(__file__).resolve().parent.parent

BENCH_APP = "bench"  # the app that links the lab's base containers


def linked(app: str = BENCH_APP) -> dict[str, str]:
    """Labels that link a container to ``app``."""
    return {"nekzus.app.id": app}


@dataclass
class Row:
    """One figure. ``engine`` is the raw engine's figure for the same thing in the same run (None where
    the engine has no counterpart); ``ok`` None means a plain measurement without a target."""

    name: str
    value: float
    unit: str
    engine: float | None = None
    target: str = "-"
    ok: bool | None = None

    @property
    def ratio(self) -> float | None:
        return self.value / self.engine if self.engine else None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class Lab:
    """A private dockerd with ``base`` containers linked to BENCH_APP, shared by the benchmarks of a run."""

    engine: Engine
    startup: float  # seconds from starting dockerd to its first answer
    base: list[str] = field(default_factory=list)


@contextlib.contextmanager
def lab(containers: int = 0) -> Iterator[Lab]:
    """Start the lab; everything in it is removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="nkb-"))
    started = time.perf_counter()
    engine = start_dockerd(tmp / "e")
    startup = time.perf_counter() - started
    try:
        engine.ensure_busybox()
        base = [engine.run(f"base-{i:02d}", "sleep 100000", labels=linked()) for i in range(containers)]
        yield Lab(engine, startup, base)
    finally:
        try:
            engine.remove_all()
        finally:
            engine.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch(engine: Engine) -> Iterator[None]:
    """Containers a benchmark creates inside this block are removed at its end; the lab's stay."""
    before = {c["Id"] for c in engine.api_json("GET", "/containers/json?all=1")}
    try:
        yield
    finally:
        for c in engine.api_json("GET", "/containers/json?all=1"):
            if c["Id"] not in before:
                engine.api("DELETE", f"/containers/{c['Id']}?force=1&v=1", timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Daemon:
    """A `nekzusd serve` subprocess (plain HTTP on loopback) with ``app`` approved; ``startup`` is the time
    from spawning it to its first 200 on the container list."""

    def __init__(self, engine: Engine, app: str = BENCH_APP, **config: Any) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="nkb-state-"))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = {"server": {"listen": f"127.0.0.1:{port}", "tls": {"mode": "off"}}, "state_dir": str(self.state),
                "runtimes": {"docker": {"host": engine.url}}, "apps": [{"id": app, "name": app.title()}],
                **config}
        (self.state / "nekzusd.yaml").write_text(json.dumps(data))
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nekzusd", "--log-level", "warning", "serve", "--config",
             str(self.state / "nekzusd.yaml")], cwd=ROOT)  # `-m` from ROOT: this checkout's nekzusd
        deadline = time.monotonic() + 60  # a bound, not a figure: imports alone took 30 s under a load of 30
        while True:
            try:
                if self.request("GET", "/api/v1/containers", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("nekzusd did not start")
            time.sleep(0.005)
        self.startup = time.perf_counter() - started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def timed(call: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def median_of(call: Callable[[], Any], n: int) -> float:
    return statistics.median(timed(call) for _ in range(n))


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 10_000 else f"{value:.3f}"


def table(sections: dict[str, list[Row]]) -> str:
    """Every row of every benchmark as one table."""
    lines = [f"{'figure':60} {'value':>10} {'unit':7} {'engine':>10} {'ratio':>7}  {'target':14} verdict"]
    for section, rows in sections.items():
        lines.append(f"[{section}]")
        for r in rows:
            verdict = "" if r.ok is None else ("ok" if r.ok else "MISSED")
            ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
            lines.append(f"  {r.name:58} {_num(r.value):>10} {r.unit:7} {_num(r.engine):>10} {ratio:>7}  "
                         f"{r.target:14} {verdict}")
    return "\n".join(lines)


def standalone(name: str, run: Callable[..., list[Row]], containers: int, **options: Any) -> None:
    """`python -m bench.<name>`: its own lab, its table."""
    with lab(containers) as the_lab:
        rows = run(the_lab, **options)
    print(table({name: rows}))
