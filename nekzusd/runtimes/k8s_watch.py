"""The Kubernetes pod watch behind ``KubernetesRuntime.events()``: one watch per configured namespace,
merged into one bounded queue.

A watch is opened without a resourceVersion first: the API server then sends every existing pod as
ADDED, so the consumer's listing after ``CONNECTED`` and those events leave no gap. When the server ends
a watch (``timeoutSeconds``, or its own limit), it is reopened from the last resourceVersion seen
(bookmarks keep it fresh on quiet namespaces), so nothing is missed and nothing is listed again. A
version the server no longer has (410 Gone, as an answer or an ERROR event) starts over without one,
preceded by ``CONNECTED`` (a resync). Anything else (the server away, an answer that is not a watch)
ends the generator with ``RuntimeUnavailable``: the consumer reopens it with backoff.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp

from ..errors import ApiError, EngineError, RuntimeUnavailable
from .base import CONNECTED, Event

WATCH_SECONDS = 300  # asked of the server: it ends the watch after this long, and it is reopened
READ_MARGIN = 60.0  # a watch silent past WATCH_SECONDS plus this is a dead connection
QUEUE = 256  # events waiting for the consumer; a full queue makes the watches wait (no loss, no growth)
MIN_LIFE = 1.0  # a watch that ends sooner than this without error is treated as a broken server
GONE = 410

Opener = Callable[..., AbstractAsyncContextManager[aiohttp.ClientResponse]]


class _Expired(Exception):
    """The resourceVersion is too old (410 Gone): start over without one."""


async def pod_events(opener: Opener, namespaces: tuple[str, ...], runtime: str) -> AsyncGenerator[Event, None]:
    """Pod changes in ``namespaces`` until cancelled; ``opener`` is the runtime's API call
    (``KubernetesRuntime._response``)."""
    queue: asyncio.Queue[Event | BaseException] = asyncio.Queue(QUEUE)
    tasks = [asyncio.create_task(_namespace(opener, ns, runtime, queue), name=f"k8s-watch-{ns}")
             for ns in namespaces]
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _namespace(opener: Opener, namespace: str, runtime: str,
                     queue: asyncio.Queue[Event | BaseException]) -> None:
    loop = asyncio.get_running_loop()
    version: str | None = None
    try:
        while True:
            if version is None:
                await queue.put(Event("", CONNECTED))
            opened = loop.time()
            try:
                version = await _watch_once(opener, namespace, version, queue)
            except _Expired:
                if version is None:  # even a fresh watch: not a server that can be watched
                    raise RuntimeUnavailable(runtime, f"pod watch of {namespace}: 410 without a version") from None
                version = None
                continue
            if loop.time() - opened < MIN_LIFE:
                raise RuntimeUnavailable(runtime, f"pod watch of {namespace} ended at once")
    except asyncio.CancelledError:
        raise
    except (ApiError, EngineError) as exc:
        await queue.put(exc)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        await queue.put(RuntimeUnavailable(runtime, f"pod watch of {namespace} broke: {exc!r}"))


async def _watch_once(opener: Opener, namespace: str, version: str | None,
                      queue: asyncio.Queue[Event | BaseException]) -> str | None:
    """One watch request until the server ends it; returns the last resourceVersion seen."""
    query: list[tuple[str, Any]] = [("watch", "true"), ("allowWatchBookmarks", "true"),
                                    ("timeoutSeconds", str(WATCH_SECONDS))]
    if version is not None:
        query.append(("resourceVersion", version))
    try:
        async with opener("GET", f"/api/v1/namespaces/{namespace}/pods", query=query) as response:
            async with asyncio.timeout(WATCH_SECONDS + READ_MARGIN):
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == GONE:
                            raise _Expired
                        raise EngineError(f"pod watch of {namespace}: {obj.get('message', 'error')}",
                                          int(obj.get("code") or 500))
                    meta = obj.get("metadata") or {}
                    version = meta.get("resourceVersion") or version
                    if kind in ("ADDED", "MODIFIED", "DELETED") and meta.get("name"):
                        await queue.put(Event(meta["name"], kind.lower()))
    except EngineError as exc:
        if exc.status == GONE:
            raise _Expired from None
        raise
    return version
