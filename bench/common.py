"""Shared benchmark helpers: a private dockerd, a real `nekzusd serve` process on a free loopback port,
plain timing and a results table. Every figure is printed next to the raw engine measured in the same run.
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
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.engines import Engine, start_dockerd  # noqa: E402

BENCH_APP = "bench"
LINKED = {"nekzus.app.id": BENCH_APP}


@contextlib.contextmanager
def private_dockerd() -> Iterator[Engine]:
    """A private dockerd with the busybox image; its containers and files are removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="nkb-"))
    engine = start_dockerd(base / "e")
    try:
        engine.ensure_busybox()
        yield engine
    finally:
        try:
            engine.remove_all()
        finally:
            engine.stop()
            shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A `nekzusd serve` subprocess (plain HTTP on loopback) with the app ``bench`` approved."""

    def __init__(self, engine: Engine, **config: Any) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="nkb-state-"))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        data = {"server": {"listen": f"127.0.0.1:{port}", "tls": {"mode": "off"}}, "state_dir": str(self.state),
                "runtimes": {"docker": {"host": engine.url}}, "apps": [{"id": BENCH_APP, "name": "Bench"}],
                **config}
        (self.state / "nekzusd.yaml").write_text(json.dumps(data))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nekzusd", "--log-level", "warning", "serve", "--config",
             str(self.state / "nekzusd.yaml")], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 30
        while True:
            try:
                self.request("GET", "/api/v1/containers")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("nekzusd did not start") from None
                time.sleep(0.01)

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

    def __enter__(self) -> "Daemon":
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


def report(title: str, rows: list[tuple[str, float, str, bool | None]]) -> None:
    """Rows of (figure, value, target, met); met None for plain measurements."""
    print(title)
    print(f"  {'figure':52} {'value':>10}  {'target':>9}  verdict")
    for name, value, target, met in rows:
        verdict = "" if met is None else ("ok" if met else "MISSED")
        print(f"  {name:52} {value:10.3f}  {target:>9}  {verdict}")
