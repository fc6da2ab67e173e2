"""Logs over HTTP (GET /api/v1/containers/{id}/logs) against the real dockerd (and Podman): real
containers write known sequences; the daemon's own counters (LogStreams) show what is still open.

Containers that must be followed from their first line wait for a go signal (a file made through
``docker exec``), so that no line is written before the stream exists.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace

import aiohttp
import pytest

from nekzusd import config as config_mod
from nekzusd import httplogs
from nekzusd.app import create_app
from nekzusd.descriptors import Budget
from nekzusd.keys import LOG_STREAMS, TOKEN_FILES, TOKENS
from nekzusd.errors import ApiError
from nekzusd.logs import Options, parse_options
from nekzusd.runtimes.logparse import MAX_LINE, LogParser, stamp_key
from tests.harness.app import base_config, next_reply, remote_connector, run_container, unique, wait_for, ws_connect
from tests.test_cli import daemon_factory  # noqa: F401 -- a fixture
from tests.harness.k8s_fixtures import deployment, k8s_api, k8s_client, running_pods  # noqa: F401 -- fixtures
from tests.test_logs import WAIT_GO, _logged, collect, go, subscribe, texts

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


async def _true(value: bool) -> bool:
    return value


def http_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "http-logs" and not t.done()]


async def read_lines(client, path: str, **kwargs) -> tuple[aiohttp.ClientResponse, list[str]]:
    async with client.get(path, **kwargs) as resp:
        body = await resp.text()
    return resp, body.split("\n")[:-1] if body else []


async def test_plain_text_by_default_one_line_per_log_line(engine, client):
    cid = await run_container(engine, unique(), "echo one; echo two >&2; echo 'caf\u00e9 <b>x</b>'; sleep 100000")
    await wait_for(lambda: _stored(engine, cid, 3))
    resp, lines = await read_lines(client, f"/api/v1/containers/{cid}/logs")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Cache-Control"] == "no-store"
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    assert sorted(lines) == sorted(["one", "two", "caf\u00e9 <b>x</b>"])  # two streams: ordered within each
    assert lines.index("one") < lines.index("caf\u00e9 <b>x</b>")
    assert client.app[LOG_STREAMS].active == 0


@pytest.mark.parametrize("accept", ["application/x-ndjson", "application/ndjson",
                                    "text/plain;q=0.5, application/x-ndjson"])
async def test_ndjson_when_accept_asks_stdout_and_stderr_apart(engine, client, accept):
    cid = await run_container(engine, unique(), "echo out1; echo err1 >&2; echo out2; sleep 100000")
    await wait_for(lambda: _stored(engine, cid, 3))
    resp, lines = await read_lines(client, f"/api/v1/containers/{cid}/logs", headers={"Accept": accept})
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
    items = [json.loads(line) for line in lines]
    assert all(set(item) == {"stream", "message", "timestamp"} and isinstance(item["timestamp"], int)
               for item in items)
    assert [i["message"] for i in items if i["stream"] == "stdout"] == ["out1", "out2"]
    assert [i["message"] for i in items if i["stream"] == "stderr"] == ["err1"]


async def _stored(engine, cid: str, count: int) -> bool:
    """The engine holds ``count`` lines of the (non-TTY) container's log, stdout and stderr together."""
    status, body = await asyncio.to_thread(engine.api, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
    parser = LogParser(multiplexed=True)
    return status == 200 and len(parser.feed(body) + parser.flush()) >= count


@pytest.mark.parametrize("accept", ["text/plain", "*/*", "application/json", "application/x-ndjson;q=0",
                                    "application/x-ndjson;q=0.4, text/*;q=0.5"])
async def test_other_accepts_get_text(engine, client, accept):
    cid = await run_container(engine, unique(), "echo hello; sleep 100000")
    await wait_for(lambda: _logged(engine, cid, "hello"))
    resp, lines = await read_lines(client, f"/api/v1/containers/{cid}/logs", headers={"Accept": accept})
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8" and lines == ["hello"]


async def test_tail(engine, client):
    cid = await run_container(engine, unique(), "seq 1 1500; sleep 100000")
    await wait_for(lambda: _logged(engine, cid, "1500"))
    path = f"/api/v1/containers/{cid}/logs"
    assert (await read_lines(client, f"{path}?tail=10"))[1] == [str(i) for i in range(1491, 1501)]
    assert (await read_lines(client, path))[1] == [str(i) for i in range(1401, 1501)]  # default 100
    assert (await read_lines(client, f"{path}?tail=5000"))[1] == [str(i) for i in range(501, 1501)]  # cut
    assert (await read_lines(client, f"{path}?tail=99999999999999999999999"))[1][0] == "501"
    resp, lines = await read_lines(client, f"{path}?tail=0")
    assert resp.status == 200 and lines == []


async def test_timestamps_and_since_until_windows(engine, client):
    """since/until are inclusive, in any of their forms (Unix seconds, RFC 3339, a duration back)."""
    cid = await run_container(engine, unique(), "for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done; "
                              "sleep 100000")
    await wait_for(lambda: _logged(engine, cid, "line5"))
    path = f"/api/v1/containers/{cid}/logs"
    _, stamped = await read_lines(client, f"{path}?timestamps=true")
    assert [line.partition(" ")[2] for line in stamped] == [f"line{i}" for i in range(1, 6)]
    stamps = [line.partition(" ")[0] for line in stamped]
    assert all(STAMP.fullmatch(stamp) for stamp in stamps)
    _, plain = await read_lines(client, f"{path}?timestamps=false")
    assert plain == [f"line{i}" for i in range(1, 6)]
    # line2's stamp up to line4's: those three lines
    window = {"since": stamps[1], "until": stamps[3]}
    _, lines = await read_lines(client, path, params=window)
    assert lines == ["line2", "line3", "line4"]
    seconds = {name: _unix(value) for name, value in window.items()}
    _, lines = await read_lines(client, path, params=seconds)
    assert lines == ["line2", "line3", "line4"]
    _, lines = await read_lines(client, path, params={"since": stamps[3]})
    assert lines == ["line4", "line5"]
    _, lines = await read_lines(client, path, params={"since": "1h", "until": stamps[0]})
    assert lines == ["line1"]
    _, lines = await read_lines(client, path, params={"since": "0", "until": "1"})  # 1970
    assert lines == []
    # tail counts back from the log's end first (line4, line5), then the window applies (as docker logs)
    _, lines = await read_lines(client, path, params={"tail": "2", "until": stamps[2]})
    assert lines == []
    # ndjson: the line's own time
    resp, lines = await read_lines(client, path, params={"since": stamps[4], "timestamps": "true"},
                                   headers={"Accept": "application/x-ndjson"})
    [item] = [json.loads(line) for line in lines]
    assert item["message"].startswith(stamps[4]) and item["timestamp"] == int(_unix(stamps[4]).split(".")[0])


def _unix(stamp: str) -> str:
    from nekzusd.runtimes.logparse import stamp_key

    seconds, nanos = stamp_key(stamp)
    return f"{seconds}.{nanos:09d}"


async def test_follow_ends_when_the_container_stops(engine, client):
    cid = await run_container(engine, unique(), "i=0; while true; do i=$((i+1)); echo $i; sleep 0.01; done")
    streams = client.app[LOG_STREAMS]
    async with client.get(f"/api/v1/containers/{cid}/logs?follow=true&tail=0") as resp:
        assert resp.status == 200
        first = [int(await resp.content.readline()) for _ in range(3)]
        assert streams.active == 1 and len(http_tasks()) == 1
        await asyncio.to_thread(engine.api_json, "POST", f"/containers/{cid}/stop?t=5", expect=(204,))
        rest = (await asyncio.wait_for(resp.text(), 30)).split("\n")[:-1]  # a clean end: no payload error
    numbers = first + [int(line) for line in rest]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap, no duplicate
    await wait_for(lambda: _true(streams.active == 0 and not http_tasks()))


async def test_follow_from_go_every_line_once_then_the_end(engine, client):
    count = 20_000
    cid = await run_container(engine, unique(), WAIT_GO + f"seq 1 {count}")
    async with client.get(f"/api/v1/containers/{cid}/logs?follow=1&tail=0",
                          headers={"Accept": "application/x-ndjson"}) as resp:
        await wait_for(lambda: _true(client.app[LOG_STREAMS].active == 1))
        await go(engine, cid)
        body = await asyncio.wait_for(resp.text(), 60)
    assert [json.loads(line)["message"] for line in body.splitlines()] == [str(i) for i in range(1, count + 1)]
    streams = client.app[LOG_STREAMS]
    assert streams.lines_sent == count and streams.lines_dropped == 0 and streams.active == 0


@pytest.mark.parametrize("busy", [False, True])
async def test_a_reader_that_leaves_ends_the_stream(engine, client, busy):
    """Quiet container (the daemon must notice the reader left without writing) and a busy one: the
    stream, its task and its count go, and the engine stream with them."""
    cmd = "while true; do echo tick; sleep 0.01; done" if busy else "sleep 100000"
    cid = await run_container(engine, unique(), cmd)
    streams = client.app[LOG_STREAMS]
    async with aiohttp.ClientSession() as session:
        resp = await session.get(client.make_url(f"/api/v1/containers/{cid}/logs"), params={"follow": "true"})
        assert resp.status == 200
        if busy:
            assert await resp.content.readline() == b"tick\n"
        assert streams.active == 1 and len(http_tasks()) == 1
        resp.close()  # the connection goes with it
    await wait_for(lambda: _true(streams.active == 0 and not http_tasks()), timeout=10)
    assert streams.held(("remote", None)) == 0


async def test_tty_container_gives_raw_lines(engine, client):
    cid = await run_container(engine, unique(), WAIT_GO + "echo first; echo second >&2; printf 'no '; "
                              "sleep 0.3; echo newline; printf 'unfinished last'", tty=True)
    async with client.get(f"/api/v1/containers/{cid}/logs?follow=true&tail=0",
                          headers={"Accept": "application/x-ndjson"}) as resp:
        await wait_for(lambda: _true(client.app[LOG_STREAMS].active == 1))
        await go(engine, cid)
        body = await asyncio.wait_for(resp.text(), 30)
    assert [(i["stream"], i["message"]) for i in map(json.loads, body.splitlines())] == [
        ("stdout", "first"), ("stdout", "second"), ("stdout", "no newline"), ("stdout", "unfinished last")]


async def test_a_stalled_reader_is_bounded_then_cut(engine, client, monkeypatch):
    """A reader that takes nothing while the container floods: the daemon reads at most its buffer ahead
    (the engine waits meanwhile), then cuts the stream when a write has waited SEND_TIMEOUT."""
    monkeypatch.setattr(httplogs, "SEND_TIMEOUT", 3.0)  # a limit, not a replaced component
    cid = await run_container(engine, unique(), WAIT_GO + "yes 'a line of a flood, a hundred bytes or so, "
                              "written as fast as the engine takes it ....................' | head -c 100000000; "
                              "sleep 100000")
    streams = client.app[LOG_STREAMS]
    async with aiohttp.ClientSession() as session:
        resp = await session.get(client.make_url(f"/api/v1/containers/{cid}/logs"),
                                 params={"follow": "true", "tail": "0"})
        [stream] = streams.own
        await go(engine, cid)
        peak = 0
        async with asyncio.timeout(60):
            while streams.active:
                peak = max(peak, stream._chars)
                await asyncio.sleep(0.01)
        lines_read = stream.read
        # What it read is about what the sockets and the buffer hold, not the 100 MB the container wrote.
        assert peak <= httplogs.BUFFER_CHARS + MAX_LINE
        assert lines_read < 200_000, lines_read
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 30)  # cut: no terminating chunk
        resp.close()
    assert not http_tasks()


async def test_errors_before_the_stream_are_json(engine, client):
    cid = await run_container(engine, unique())
    path = f"/api/v1/containers/{cid}/logs"
    cases = [(f"{path}?tail=-1", 400, "INVALID_TAIL"), (f"{path}?tail=abc", 400, "INVALID_TAIL"),
             (f"{path}?tail=1e3", 400, "INVALID_TAIL"), (f"{path}?tail=%EF%BC%91", 400, "INVALID_TAIL"),
             (f"{path}?follow=maybe", 400, "INVALID_PARAMETER"),
             (f"{path}?timestamps=", 400, "INVALID_PARAMETER"),
             (f"{path}?since=yesterday", 400, "INVALID_PARAMETER"),
             (f"{path}?since=-5", 400, "INVALID_PARAMETER"),
             (f"{path}?since=999999999999", 400, "INVALID_PARAMETER"),
             (f"{path}?until=" + "9" * 5000, 400, "INVALID_PARAMETER"),
             (f"{path}?since=2024-05-01T12:00:00Z&until=2024-05-01T11:00:00Z", 400, "INVALID_PARAMETER"),
             (f"{path}?tail=1&tail=2", 400, "INVALID_PARAMETER"),
             (f"{path}?runtime=lxc", 400, "INVALID_RUNTIME"),
             ("/api/v1/containers/nosuchcontainer/logs", 404, "CONTAINER_NOT_FOUND"),
             ("/api/v1/containers/-bad/logs", 400, "INVALID_CONTAINER_ID"),
             ("/api/v1/containers/default/somepod/logs", 404, "NOT_FOUND")]  # no Kubernetes runtime
    for url, status, code in cases:
        async with client.get(url) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]) == (status, code), (url, body)
            assert resp.content_type == "application/json" and body["message"]
    async with client.get(f"{path}?until=2024-05-01T11:00:00Z&since=2024-05-01T12:00:00Z") as resp:
        assert (await resp.json())["details"] == {"parameter": "until", "value": "2024-05-01T11:00:00Z"}
    async with client.head(path) as resp:
        assert resp.status == 405
    assert client.app[LOG_STREAMS].active == 0


@pytest.fixture
async def capped(aiohttp_client, engine, tmp_path):
    """A daemon with a cap of 8 log streams: reserve 1 for local clients, remote clients 7 in all."""
    data = base_config(engine, tmp_path / "state", auth={"local_networks": ["127.0.0.1/32"]})
    app = create_app(config_mod.parse(data, env={}), budget=replace(Budget.current(), log_streams=8))
    return await aiohttp_client(app)


def remote(address: str = "127.0.0.3") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=remote_connector(address, limit=0))


async def test_http_streams_count_against_the_caps_with_websocket_ones(capped, engine):
    streams = capped.app[LOG_STREAMS]
    assert (streams.max_subscriptions, streams.local_reserve, streams.remote_share) == (8, 1, 7)
    cid = await run_container(engine, unique(), "sleep 100000")
    token = capped.app[TOKENS].create("reader", ["read:containers"], 600)
    url = capped.make_url(f"/api/v1/containers/{cid}/logs")
    opened = []
    async with remote() as http:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(7):
            resp = await http.get(url, params={"follow": "true"}, headers=headers)
            assert resp.status == 200
            opened.append(resp)
        assert streams.held(("subject", "reader")) == 7
        async with http.get(url, params={"follow": "true"}, headers=headers) as refused:
            body = await refused.json()
        assert refused.status == 429 and body["error"] == "TOO_MANY_SUBSCRIPTIONS"
        assert "kept for local clients" in body["message"]
        # The owner takes the reserve over the WebSocket, then the daemon-wide cap holds for HTTP too.
        ws = await ws_connect(capped)
        await subscribe(ws, cid, tail=0)
        async with capped.get(f"/api/v1/containers/{cid}/logs?follow=true") as full:
            body = await full.json()
        assert full.status == 503 and body["error"] == "TOO_MANY_SUBSCRIPTIONS"
        # A stream that ends gives its place back.
        opened.pop().close()
        await wait_for(lambda: _true(streams.active == 7))
        async with capped.get(f"/api/v1/containers/{cid}/logs?follow=true") as local:
            assert local.status == 200 and streams.active == 8
            local.close()
        for resp in opened:
            resp.close()
        await ws.close()
    await wait_for(lambda: _true(streams.active == 0 and not http_tasks()))
    assert streams.held(("remote", None)) == 0


async def test_scope(capped, engine):
    cid = await run_container(engine, unique(), "echo hello; sleep 100000")
    await wait_for(lambda: _logged(engine, cid, "hello"))
    tokens = capped.app[TOKENS]
    url = capped.make_url(f"/api/v1/containers/{cid}/logs")
    async with remote() as http:
        async with http.get(url) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "UNAUTHORIZED"
        nothing = tokens.create("nothing", [], 600)
        async with http.get(url, headers={"Authorization": f"Bearer {nothing}"}) as resp:
            assert resp.status == 403 and (await resp.json())["error"] == "INSUFFICIENT_SCOPE"
        for scopes in (["read:containers"], ["read:*"], ["write:containers"]):
            token = tokens.create("reader", scopes, 600)
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200 and await resp.text() == "hello\n"
        # A local address with another site's page behind it is not trusted: a token is needed.
        async with capped.get(f"/api/v1/containers/{cid}/logs", headers={"Sec-Fetch-Site": "cross-site"}) as resp:
            assert resp.status == 401


async def test_a_revoked_token_cuts_its_follow(capped, engine):
    cid = await run_container(engine, unique(), "sleep 100000")
    tokens = capped.app[TOKENS]
    token = tokens.create("reader", ["read:containers"], 600)
    streams = capped.app[LOG_STREAMS]
    async with remote() as http:
        resp = await http.get(capped.make_url(f"/api/v1/containers/{cid}/logs"), params={"follow": "true"},
                              headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200 and streams.active == 1
        tokens.use_secret(b"another secret, so that every token stops verifying")
        capped.app[TOKEN_FILES].on_change()  # what the daemon runs when its token files change
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
        resp.close()
    await wait_for(lambda: _true(streams.active == 0 and not http_tasks()))


async def test_shutdown_cuts_open_streams(engine, client):
    cid = await run_container(engine, unique(), "sleep 100000")
    async with aiohttp.ClientSession() as session:
        resp = await session.get(client.make_url(f"/api/v1/containers/{cid}/logs"), params={"follow": "true"})
        assert resp.status == 200
        streams = client.app[LOG_STREAMS]
        await asyncio.wait_for(client.server.close(), 10)
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
        resp.close()
    assert streams.active == 0 and not http_tasks()


async def test_on_podman(podman_engine, make_client, tmp_path):
    client = await make_client(base_config(podman_engine, tmp_path / "state"))
    try:
        cid = await run_container(podman_engine, unique("plog"), "echo out1; echo err1 >&2; "
                                  "i=0; while true; do i=$((i+1)); echo n$i; sleep 0.02; done")
        path = f"/api/v1/containers/{cid}/logs"
        async with client.get(f"{path}?follow=true&tail=all") as resp:
            assert resp.status == 400  # tail=all is not a number, as over the WebSocket
        async with client.get(f"{path}?follow=true&tail=1000", headers={"Accept": "application/x-ndjson"}) as resp:
            assert resp.status == 200
            items = [json.loads(await resp.content.readline()) for _ in range(5)]
            await asyncio.to_thread(podman_engine.api_json, "POST", f"/containers/{cid}/stop?t=5",
                                    expect=(204, 304))
            rest = await asyncio.wait_for(resp.text(), 30)
        items += [json.loads(line) for line in rest.splitlines()]
        assert [i["message"] for i in items if i["stream"] == "stderr"] == ["err1"]
        async with client.get(f"{path}?tail=1000", headers={"Accept": "application/x-ndjson"}) as resp:
            stored = [int(m[1:]) for line in (await resp.text()).splitlines()
                      if (m := json.loads(line)["message"]).startswith("n")]
        assert stored == list(range(1, len(stored) + 1))  # a read that does not follow gives every line
        numbers = [int(i["message"][1:]) for i in items if i["message"].startswith("n")]
        # In order, none twice, to the last line, from the follow and the catch-up after the stop. Podman 4's
        # follow (k8s-file) itself loses a line now and then (containers/podman#21914; once in 14 suite runs
        # here), so a line or two may be missing, never more.
        lost = sorted(set(stored) - set(numbers))
        assert numbers == sorted(set(numbers)) and numbers[0] == 1 and numbers[-1] == stored[-1], \
            (len(numbers), lost, items[-5:])
        assert len(lost) <= 2, lost
        assert client.app[LOG_STREAMS].active == 0
    finally:
        await asyncio.to_thread(podman_engine.remove_all)


async def metric(http: aiohttp.ClientSession, daemon, name: str) -> float:
    async with http.get(f"{daemon.base_url}/metrics") as resp:
        text = await resp.text()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
async def test_a_real_daemon_lets_go_of_readers_that_leave_or_stall(daemon_factory, engine):
    """``nekzusd serve`` as deployed (aiohttp does not cancel a handler whose client left there): a reader
    that leaves a quiet stream, one that leaves a busy one, and one that stops reading a flood. The
    daemon's own metrics show the streams and their tasks gone; its memory stays bounded meanwhile."""
    daemon = await daemon_factory()
    quiet = await run_container(engine, unique("quiet"), "sleep 100000")
    busy = await run_container(engine, unique("busy"), "while true; do echo tick; sleep 0.01; done")
    flood = await run_container(engine, unique("flood"), WAIT_GO + "yes 'a line of a flood, a hundred bytes or "
                                "so, written as fast as the engine takes it ...............' | head -c 100000000; "
                                "sleep 100000")
    async with aiohttp.ClientSession() as http:
        idle_tasks = await metric(http, daemon, "nekzusd_asyncio_tasks")
        for cid in (quiet, busy):
            async with aiohttp.ClientSession() as reader:
                resp = await reader.get(f"{daemon.base_url}/api/v1/containers/{cid}/logs?follow=true")
                assert resp.status == 200
                if cid == busy:
                    assert await resp.content.readline() == b"tick\n"
                assert await metric(http, daemon, "nekzusd_log_streams") == 1
                resp.close()
            await wait_for(lambda: _metric_is(http, daemon, "nekzusd_log_streams", 0), timeout=10)
        # a reader that leaves before the headers (a quiet follow sends them after a second)
        _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(f"GET /api/v1/containers/{quiet}/logs?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        await wait_for(lambda: _metric_is(http, daemon, "nekzusd_log_streams", 1), timeout=10)
        writer.close()
        await wait_for(lambda: _metric_is(http, daemon, "nekzusd_log_streams", 0), timeout=10)
        async with aiohttp.ClientSession() as reader:
            resp = await reader.get(f"{daemon.base_url}/api/v1/containers/{flood}/logs?follow=true&tail=0")
            baseline = peak = rss_mb(daemon.proc.pid)
            await go(engine, flood)
            async with asyncio.timeout(httplogs.SEND_TIMEOUT + 30):
                while await metric(http, daemon, "nekzusd_log_streams"):
                    peak = max(peak, rss_mb(daemon.proc.pid))
                    await asyncio.sleep(0.1)
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.read(), 30)
        print(f"stalled HTTP reader: daemon RSS growth {peak - baseline:.1f} MB")
        assert peak - baseline < 50
        assert "cutting a stalled HTTP log reader" in daemon.stderr()
        assert "Traceback" not in daemon.stderr()
        # every stream's tasks are gone: back to what the idle daemon had (a scrape is one request)
        await wait_for(lambda: _metric_at_most(http, daemon, "nekzusd_asyncio_tasks", idle_tasks), timeout=10)


async def _metric_is(http, daemon, name: str, value: float) -> bool:
    return await metric(http, daemon, name) == value


async def _metric_at_most(http, daemon, name: str, value: float) -> bool:
    return await metric(http, daemon, name) <= value


@pytest.mark.kubernetes
async def test_the_pod_form_reads_through_the_kubernetes_runtime(k8s_client, k8s_api, k8s_cluster, engine):
    """A real kube-apiserver without a kubelet (tests/k8s): the routing, the checks and the runtime's own
    failure (the API server cannot reach the node's kubelet) as a JSON error before the stream. Live pod
    logs need a kubelet (tested where one runs)."""
    from kubernetes_asyncio import client as k8s

    await k8s.AppsV1Api(k8s_api).create_namespaced_deployment("default", deployment("logweb", 1))
    async with k8s_cluster.fake_kubelet(namespaces=("default",)):
        pod = (await running_pods(k8s_api, "default", "logweb", 1))[0]
    cid = await run_container(engine, unique(), "echo docker-side; sleep 100000")
    await wait_for(lambda: _logged(engine, cid, "docker-side"))
    cases = [(f"/api/v1/containers/default/{pod}/logs", 500, "CONTAINER_LOGS_FAILED"),
             (f"/api/v1/containers/default/{pod}/logs?follow=true&since=10m", 500, "CONTAINER_LOGS_FAILED"),
             (f"/api/v1/containers/{pod}/logs?runtime=kubernetes&namespace=default", 500, "CONTAINER_LOGS_FAILED"),
             ("/api/v1/containers/default/no-such-pod/logs", 404, "CONTAINER_NOT_FOUND"),
             ("/api/v1/containers/forbidden-ns/some-pod/logs", 403, "NAMESPACE_NOT_ALLOWED"),
             ("/api/v1/containers/default/Not_A_Pod/logs", 400, "INVALID_CONTAINER_ID"),
             (f"/api/v1/containers/default/{pod}/logs?tail=-1", 400, "INVALID_TAIL"),
             (f"/api/v1/containers/default/{pod}/logs?runtime=docker", 404, "CONTAINER_NOT_FOUND")]
    for url, status, code in cases:
        async with k8s_client.get(url) as resp:
            body = await resp.json()
        assert (resp.status, body["error"]) == (status, code), (url, body)
        if code == "CONTAINER_LOGS_FAILED":
            assert "kubelet" in body["message"], body
    # /{id}/logs stays the primary runtime's (Docker), whatever the daemon's other runtimes
    async with k8s_client.get(f"/api/v1/containers/{cid}/logs") as resp:
        assert resp.status == 200 and await resp.text() == "docker-side\n"
    assert k8s_client.app[LOG_STREAMS].active == 0


async def test_a_follow_ends_when_its_token_expires(capped, engine):
    """A token still accepted for about two more seconds (exp in the past, within the 30 s leeway): the
    followed stream opens, then is cut at the moment the token stops being accepted."""
    cid = await run_container(engine, unique(), "sleep 100000")
    token = capped.app[TOKENS].create("short", ["read:containers"], -28)
    async with remote() as http:
        resp = await http.get(capped.make_url(f"/api/v1/containers/{cid}/logs"), params={"follow": "true"},
                              headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
        resp.close()
        async with http.get(capped.make_url(f"/api/v1/containers/{cid}/logs"),
                            headers={"Authorization": f"Bearer {token}"}) as again:
            assert again.status == 401
    await wait_for(lambda: _true(capped.app[LOG_STREAMS].active == 0 and not http_tasks()))


async def test_a_follow_ends_at_until(engine, client):
    """dockerd would keep a follow with a future until open until a later line came; the stream ends at
    until, cleanly, with the lines logged up to then."""
    cid = await run_container(engine, unique(), "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done")
    until = time.time() + 2
    started = time.monotonic()
    async with client.get(f"/api/v1/containers/{cid}/logs",
                          params={"follow": "true", "tail": "0", "until": f"{until:.3f}",
                                  "timestamps": "true"}) as resp:
        body = await asyncio.wait_for(resp.text(), 20)  # a clean end
    assert 1.5 < time.monotonic() - started < 10
    lines = body.splitlines()
    assert lines and all(stamp_key(line.partition(" ")[0]) <= (int(until), int(until % 1 * 1e9) + 1000)
                         for line in lines)
    numbers = [int(line.partition(" ")[2]) for line in lines]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert client.app[LOG_STREAMS].active == 0


async def test_websocket_subscriptions_take_the_same_window(engine, client):
    cid = await run_container(engine, unique(), "for i in 1 2 3; do echo w$i; sleep 0.3; done; sleep 100000")
    await wait_for(lambda: _logged(engine, cid, "w3"))
    _, stamped = await read_lines(client, f"/api/v1/containers/{cid}/logs?timestamps=true")
    ws = await ws_connect(client)
    await subscribe(ws, cid, follow=False, since=stamped[1].partition(" ")[0],
                    until=float(_unix(stamped[1].partition(" ")[0])))
    messages, ended = await collect(ws, cid)
    assert texts(messages) == ["w2"] and ended["data"]["reason"] == "container_stopped"
    for bad in ({"since": "yesterday"}, {"until": True}, {"since": -1}, {"since": 5, "until": 4}):
        await ws.send_json({"type": "container.logs.subscribe", "data": {"containerId": cid, **bad}})
        reply = await next_reply(ws, timeout=10)
        assert reply["type"] == "container.logs.error" and reply["data"]["error"] == "INVALID_MESSAGE", (bad, reply)
    await ws.close()


@pytest.mark.parametrize("query, expected", [
    ({}, Options(100, False, False, False)),
    ({"tail": "7", "follow": "TRUE", "timestamps": "yes"}, Options(7, True, True, False)),
    ({"follow": "0", "timestamps": "no"}, Options(100, False, False, False)),
    ({"since": "1700000000", "until": "1700000000.5"}, Options(since=1700000000.0, until=1700000000.5, follow=False)),
    ({"since": "2023-11-14T23:13:20.5+01:00"}, Options(since=1700000000.5, follow=False)),
    ({"batch": "true"}, Options(follow=False)),  # not an HTTP option: ignored like any other unknown name
])
def test_query_options(query, expected):
    assert parse_options(query, query=True) == expected


def test_query_durations_count_back_from_now():
    options = parse_options({"since": "1d", "until": "10m"}, query=True)
    assert options.since == pytest.approx(time.time() - 86400, abs=5)
    assert options.until == pytest.approx(time.time() - 600, abs=5)
    with pytest.raises(ApiError) as info:  # until a day ago is before since ten minutes ago
        parse_options({"since": "10m", "until": "1d"}, query=True)
    assert info.value.code == "INVALID_PARAMETER" and info.value.details["parameter"] == "until"


@pytest.mark.parametrize("value", ["", "abc", "1e9", "0x10", "１２", "-1", "10y", "10 m", "2024-05-01",
                                   "2024-05-01T12:00:00", "2024-13-01T12:00:00Z", "nan", "inf", "9" * 13, "x" * 5000])
def test_bad_query_times(value):
    with pytest.raises(ApiError) as info:
        parse_options({"since": value}, query=True)
    assert info.value.code == "INVALID_PARAMETER" and info.value.details["parameter"] == "since"


@pytest.mark.parametrize("accept, ndjson", [
    ("", False), ("*/*", False), ("application/x-ndjson", True), ("application/ndjson", True),
    ("APPLICATION/X-NDJSON; charset=utf-8", True), ("text/plain, application/x-ndjson", True),
    ("text/plain, application/x-ndjson;q=0.9", False), ("application/x-ndjson;q=0", False),
    ("application/x-ndjson;q=abc", False), ("application/x-ndjson;q=2", False),
    ("application/json", False), (", ;;, =", False), ("text/*;q=0.1, application/x-ndjson;q=0.2", True),
    ("a/b," * 10_000 + "application/x-ndjson", False),  # only the first 64 entries are looked at
])
def test_accept(accept, ndjson):
    assert httplogs.wants_ndjson(accept) is ndjson
