"""Log hygiene against a real daemon process: a malformed request from a stranger is one concise line, and
nothing a stranger sends (garbage, invalid or huge headers, control characters, floods of refused requests)
can flood the journal: the daemon's stderr is counted in lines and bytes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest

from nekzusd.listen import install_loop_exception_handler
from nekzusd.logthrottle import Throttle, printable
from tests.harness.app import base_config, remote_config
from tests.harness.netattack import LimitedDaemon, connect, read_until_closed

GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n",  # a TLS hello
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",  # invalid header
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00b\r\n\r\n",  # control character in a value
    b"GET / HTTP/1.1\r\nX: " + b"A" * 20000 + b"\r\n\r\n",  # a header line far past the limit
    b"GET /" + b"B" * 20000 + b" HTTP/1.1\r\n\r\n",  # a request line far past the limit
    b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(300)) + b"\r\n",  # too many headers
    b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a broken chunked body
    b"GET / HTTP/1.1\r\nHost: x\r\nFAKE: ok\r\n\nInjected: line\n2026-01-01 INFO forged\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
]


@pytest.fixture
async def daemon(engine, tmp_path: Path):
    config = remote_config(base_config(engine, tmp_path / "state"))
    d = LimitedDaemon(tmp_path / "d", config)
    await d.start()
    yield d
    await d.close()


async def send(port: int, source: str, payload: bytes) -> bytes:
    sock = connect(source, port, payload)
    try:
        return (await read_until_closed(sock, 10))[1]
    finally:
        sock.close()


async def test_one_malformed_request_is_one_short_line(daemon: LimitedDaemon) -> None:
    before = len(daemon.stderr_lines())
    answer = await send(daemon.port, "127.0.0.2", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
    async with asyncio.timeout(10):
        while len(daemon.stderr_lines()) == before:
            await asyncio.sleep(0.05)
    new = daemon.stderr_lines()[before:]
    assert len(new) == 1 and "bad request from 127.0.0.2" in new[0] and len(new[0]) < 300, new
    assert "Traceback" not in daemon.stderr()


async def test_garbage_from_many_connections_cannot_flood_the_log(daemon: LimitedDaemon) -> None:
    before = len(daemon.stderr())
    sources = [f"127.0.0.{i}" for i in range(2, 10)]
    for _ in range(25):  # 8 addresses x 11 kinds x 25 = 2,200 malformed requests
        await asyncio.gather(*(send(daemon.port, src, payload)
                               for src in sources for payload in GARBAGE), return_exceptions=True)
    # and 800 well-formed requests refused for want of a token
    for _ in range(100):
        await asyncio.gather(*(send(daemon.port, src, b"GET /api/v1/containers HTTP/1.1\r\nHost: x\r\n"
                                                      b"Connection: close\r\n\r\n") for src in sources))
    assert await send(daemon.port, "127.0.0.1", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(10):  # the owner's request is logged: everything before it is on stderr too
        while "path=/healthz status=200" not in daemon.stderr():
            await asyncio.sleep(0.05)
    async with asyncio.timeout(15):  # the summary of what was held back follows within a few seconds
        while "lines held back in the last" not in daemon.stderr()[before:]:
            await asyncio.sleep(0.1)
    text = daemon.stderr()[before:]
    lines = text.splitlines()
    assert "Traceback" not in text
    assert len(lines) < 400 and len(text) < 60_000, (len(lines), len(text))
    # nothing the attacker wrote starts a line of its own
    assert not any("forged" in line and not line.startswith("20") for line in lines)
    assert all(line[:4].isdigit() for line in lines), [line for line in lines if not line[:4].isdigit()][:5]


def test_throttle_lets_a_burst_through_then_counts() -> None:
    logger = logging.getLogger("test.throttle")
    logger.setLevel(logging.INFO)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        throttle = Throttle(logger, burst=3, interval=0.2, global_burst=100)
        passed = [throttle.log("a", logging.INFO, "line %d", i) for i in range(50)]
        assert passed[:3] == [True] * 3 and not any(passed[3:])
        assert throttle.log("b", logging.INFO, "other key")  # another key is not held back by "a"

        deadline = time.monotonic() + 5  # no event loop here: the count rides on the key's next line
        while not throttle.log("a", logging.INFO, "again"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        match = re.search(r"\((\d+) similar lines suppressed\)", records[-1].getMessage())
        assert match and int(match.group(1)) >= 47, records[-1].getMessage()
    finally:
        logger.removeHandler(handler)


def test_printable_keeps_one_bounded_line() -> None:
    text = printable("a\r\nb\x00" + "c" * 500)
    assert "\n" not in text and "\r" not in text and "\x00" not in text and len(text) <= 101


async def test_the_loop_exception_handler_bounds_repeated_reports(caplog) -> None:
    """asyncio's own accept loop (still used by other servers in the process) reports a full descriptor
    table through ``loop.call_exception_handler``, with a traceback each time: bounded to a few lines."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    install_loop_exception_handler(loop)
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            for _ in range(1000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(24, "Too many open files")})
        records = [r for r in caplog.records if r.name == "asyncio"]
        assert 1 <= len(records) <= 2, [r.getMessage() for r in records]
        assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    finally:
        loop.set_exception_handler(previous)
