"""Connected WebSocket clients: a bounded send queue each, and broadcast of notifications.

A client that reads slowly must not grow the daemon's memory: messages marked droppable (log lines)
are dropped when its queue is full and counted per container, then reported as
``container.logs.dropped``; a client whose queue stays full for notifications is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

QUEUE_SIZE = 1024
SEND_TIMEOUT = 10.0  # a client that cannot take one message in this long is stuck


def envelope(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "data": data}


class Client:
    """One WebSocket connection and its writer task."""

    def __init__(self, ws: web.WebSocketResponse, address: str, queue_size: int = QUEUE_SIZE) -> None:
        self.ws = ws
        self.address = address
        self.subject: str | None = None  # set once authenticated
        self.connected_at = time.time()
        self.dropped: Counter[str] = Counter()  # container id -> log messages dropped, not yet reported
        self.dropped_total = 0
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.on_close: list[Callable[[], Awaitable[None]]] = []  # e.g. end log streams

    @property
    def authenticated(self) -> bool:
        return self.subject is not None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.address}")

    def send(self, message: dict[str, Any], *, droppable_for: str | None = None) -> bool:
        """Queue a message. With ``droppable_for`` (a container id) it may be dropped when the queue is full;
        otherwise a full queue means the client is stuck and it is closed."""
        if self.ws.closed:
            return False
        try:
            self._queue.put_nowait(json.dumps(message, separators=(",", ":")))
            return True
        except asyncio.QueueFull:
            if droppable_for is not None:
                self.dropped[droppable_for] += 1
                self.dropped_total += 1
                return False
            log.warning("closing stuck WebSocket client %s: send queue full", self.address)
            if self._closer is None:
                self._closer = asyncio.create_task(self.ws.close(code=1008, message=b"send queue full"))
            return False

    async def run_close_callbacks(self) -> None:
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            await callback()

    def queue_has_room(self) -> bool:
        return not self._queue.full()

    async def _write_loop(self) -> None:
        try:
            while True:
                text = await self._queue.get()
                if text is None:
                    return
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.ws.send_str(text)
                if self.dropped and self._queue.qsize() < self._queue.maxsize // 2:
                    await self._report_drops()
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            log.info("WebSocket client %s gone: %s", self.address, exc or type(exc).__name__)
            await self.ws.close(code=1011)

    async def _report_drops(self) -> None:
        drops, self.dropped = self.dropped, Counter()
        for container_id, count in drops.items():
            message = envelope("container.logs.dropped", {"containerId": container_id, "count": count,
                                                           "timestamp": int(time.time())})
            await self.ws.send_str(json.dumps(message))

    async def flush_and_stop(self, timeout: float = 2.0) -> None:
        """Let queued messages go out (bounded), then stop the writer."""
        if self._writer is None:
            return
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            self._writer.cancel()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._writer)
        except (TimeoutError, asyncio.CancelledError):
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)


class Hub:
    def __init__(self) -> None:
        self.clients: set[Client] = set()

    def add(self, client: Client) -> None:
        self.clients.add(client)

    def remove(self, client: Client) -> None:
        self.clients.discard(client)

    def broadcast(self, type_: str, data: dict[str, Any]) -> int:
        """Send to every authenticated client; returns how many were reached."""
        message = envelope(type_, data)
        return sum(client.send(message) for client in list(self.clients) if client.authenticated)

    async def close_all(self, code: int = 1001, message: bytes = b"server shutdown") -> None:
        clients = list(self.clients)
        await asyncio.gather(*(client.run_close_callbacks() for client in clients), return_exceptions=True)
        await asyncio.gather(*(c.flush_and_stop() for c in clients), return_exceptions=True)
        await asyncio.gather(*(c.ws.close(code=code, message=message) for c in clients),
                             return_exceptions=True)
