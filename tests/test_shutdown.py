"""SIGTERM under load: a real ``nekzusd serve`` with WebSocket clients streaming logs, an operation in
flight and HTTP requests arriving. It must finish the operation, end every log stream with ``stopped``,
close the WebSockets with 1001 and exit 0 within 10 s, with no request answered by a server error."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from tests.harness.app import authenticate, base_config, run_container, unique
from tests.harness.daemon import Daemon

CLIENTS = 3


async def _collect_until_closed(ws: aiohttp.ClientWebSocketResponse, into: list[dict[str, Any]]) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            into.append(msg.json())


async def _hammer(http: aiohttp.ClientSession, url: str, statuses: list[int], stop: asyncio.Event) -> None:
    """Requests one after another until told to stop; refused connections are fine once shutdown began."""
    while not stop.is_set():
        try:
            async with http.get(url) as resp:
                statuses.append(resp.status)
                await resp.read()
        except aiohttp.ClientError:
            await asyncio.sleep(0.01)


async def test_sigterm_under_load_with_open_log_streams(engine, tmp_path: Path) -> None:
    chatty = await run_container(engine, unique("chatty"), "i=0; while true; do echo line $i; i=$((i+1)); "
                                 "usleep 2000; done", labels={"nekzusd.app.id": "grafana"})
    slow = await run_container(engine, unique("slow"),  # takes about 2 s to stop
                               ["sh", "-c", "trap 'sleep 2; exit 0' TERM; while :; do sleep 0.2; done"],
                               labels={"nekzusd.app.id": "grafana"})
    daemon = Daemon(tmp_path / "daemon", base_config(engine, tmp_path / "state"))
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:
            received: list[list[dict[str, Any]]] = [[] for _ in range(CLIENTS)]
            sockets = []
            for _ in range(CLIENTS):
                ws = await http.ws_connect(f"{daemon.base_url}/api/v1/ws")
                await authenticate(ws)
                await ws.send_json({"type": "container.logs.subscribe",
                                    "data": {"containerId": chatty, "tail": 5, "follow": True}})
                sockets.append(ws)
            readers = [asyncio.create_task(_collect_until_closed(ws, into))
                       for ws, into in zip(sockets, received, strict=True)]

            async def streaming() -> bool:
                return all(any(m["type"] == "container.logs" for m in into) for into in received)

            async with asyncio.timeout(15):
                while not await streaming():
                    await asyncio.sleep(0.05)

            statuses: list[int] = []
            stop_load = asyncio.Event()
            load_session = aiohttp.ClientSession()
            load = [asyncio.create_task(_hammer(load_session, f"{daemon.base_url}/api/v1/containers?all=true",
                                                statuses, stop_load)) for _ in range(4)]
            async with asyncio.timeout(15):  # the load is being served
                while not statuses:
                    await asyncio.sleep(0.02)
            resp = await http.post(f"{daemon.base_url}/api/v1/containers/{slow}/stop?timeout=10")
            assert resp.status == 202
            operation_id = (await resp.json())["operationId"]

            rc, took = await daemon.stop(signal.SIGTERM)
            stop_load.set()
            await asyncio.gather(*load)
            await load_session.close()
            async with asyncio.timeout(5):
                await asyncio.gather(*readers)

            assert rc == 0, daemon.stderr()[-3000:]
            assert took < 10, f"shutdown took {took:.1f} s"
            assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
            for ws, into in zip(sockets, received, strict=True):
                assert ws.close_code == 1001, (ws.close_code, into[-3:])
                done = [m for m in into if m["type"] == "container.stop.completed"]
                assert [m["data"]["operationId"] for m in done] == [operation_id], "operation not finished"
                ended = [m for m in into if m["type"] == "container.logs.ended"]
                assert len(ended) == 1 and ended[0]["data"]["reason"] == "stopped", ended
                assert ended[0]["data"]["containerId"] == chatty
                assert into.index(ended[0]) > max(i for i, m in enumerate(into) if m["type"] == "container.logs")
            state = engine.api_json("GET", f"/containers/{slow}/json")["State"]
            assert state["Status"] == "exited" and state["ExitCode"] == 0  # stopped gracefully, not killed
            assert "Traceback" not in daemon.stderr()
            await daemon.wait_message("STOPPING=1", timeout=1)
    finally:
        await daemon.close()


async def test_an_operation_longer_than_the_grace_does_not_hold_shutdown(engine, tmp_path: Path) -> None:
    stubborn = await run_container(engine, unique("stubborn"),  # would take 30 s to stop
                                   ["sh", "-c", "trap 'sleep 30; exit 0' TERM; while :; do sleep 0.2; done"])
    daemon = Daemon(tmp_path / "daemon", base_config(engine, tmp_path / "state"))
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{daemon.base_url}/api/v1/ws")
            await authenticate(ws)
            resp = await http.post(f"{daemon.base_url}/api/v1/containers/{stubborn}/stop?timeout=60")
            assert resp.status == 202
            received: list[dict[str, Any]] = []
            reader = asyncio.create_task(_collect_until_closed(ws, received))  # a client that keeps reading
            await asyncio.sleep(0.2)
            rc, took = await daemon.stop(signal.SIGTERM)
            assert rc == 0, daemon.stderr()[-3000:]
            assert took < 10, f"shutdown took {took:.1f} s"
            async with asyncio.timeout(5):
                await reader
            assert ws.close_code == 1001, daemon.stderr()[-4000:]
            failed = [m for m in received if m.get("type") == "container.stop.failed"]
            assert len(failed) == 1 and "shutting down" in failed[0]["data"]["message"], received
            assert "Traceback" not in daemon.stderr()
    finally:
        await daemon.close()
