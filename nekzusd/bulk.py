"""Bulk (`start-all`, `stop-all`, `restart-all`) and batch lifecycle operations (docs/api.md, Bulk and batch).

Every engine call of every bulk or batch request goes through one semaphore shared by the whole
process, so two requests at once still run at most ``bulk.concurrency`` operations together. Each
operation is an ordinary lifecycle operation (`Operations.run`): it is announced on the WebSocket and
recorded exactly like a single one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .apps import Apps
from .concurrency import gather_all
from .errors import ApiError, EngineError, invalid_body
from .operations import Operations, check_state
from .runtimes.base import Container, Ref, Runtime

ALL_MESSAGES = {
    "start": "Start all operation completed",
    "stop": "Stop all operation completed",
    "restart": "Restart all operation completed",
}
BATCH_MESSAGE = "Batch operation completed"
# Per-container errors in the words existing clients know (e.g. "container already running").
STATE_ERRORS = {"CONTAINER_ALREADY_STARTED": "container already running",
                "CONTAINER_ALREADY_STOPPED": "container already stopped"}
NOT_FOUND = "container not found"
SELF = "nekzusd does not act on the container it runs in"


def all_targets(op: str, containers: Iterable[Container], apps: Apps, runtime: Runtime) -> list[Container]:
    """start-all takes linked containers that are not running, stop-all and restart-all the linked
    running ones; never nekzusd's own container. Ordered by namespace and name, like the list."""
    if op == "start":
        wanted = [c for c in containers if c.state not in ("running", "restarting", "paused")]
    else:
        wanted = [c for c in containers if c.running]
    targets = [c for c in apps.linked(wanted) if not runtime.is_self(c)]
    return sorted(targets, key=lambda c: (c.namespace, c.name))


def result(container_id: str, name: str, error: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": container_id, "name": name, "success": error is None}
    if error is not None:
        entry["error"] = error
    return entry


def summary(message: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    success = sum(1 for r in results if r["success"])
    return {"message": message, "total": len(results), "success": success, "failed": len(results) - success,
            "results": results}


class Bulk:
    """Runs bulk and batch requests under the process-wide semaphore."""

    def __init__(self, operations: Operations, concurrency: int) -> None:
        self.operations = operations
        self.semaphore = asyncio.Semaphore(concurrency)

    async def _operate(self, runtime: Runtime, container: Container, op: str, timeout: int) -> dict[str, Any]:
        async with self.semaphore:
            operation = await self.operations.run(runtime, container, op, timeout)
        return result(container.id, container.name, None if operation.ok else operation.error)

    async def run_all(self, runtime: Runtime, targets: list[Container], op: str, timeout: int) -> dict[str, Any]:
        results = await gather_all(self._operate(runtime, c, op, timeout) for c in targets)
        return summary(ALL_MESSAGES[op], results)

    async def _resolve(self, runtime: Runtime, ref: Ref) -> Container | str:
        """The container a batch id names, or why it cannot be acted on (a failed result, not a 404:
        one unknown id must not hide the others' results). An unreachable engine fails the request."""
        async with self.semaphore:
            try:
                return await runtime.get(ref)
            except EngineError as exc:
                return str(exc)
            except ApiError as exc:
                if exc.status == 404:
                    return NOT_FOUND
                raise

    async def batch(self, runtime: Runtime, refs: list[Ref], op: str, timeout: int) -> dict[str, Any]:
        """Act on the given containers; results in the request's order. Two ids naming one container
        (a name and its id) are refused before anything runs, like literal duplicates."""
        resolved = await gather_all(self._resolve(runtime, ref) for ref in refs)
        seen: dict[str, str] = {}
        for ref, found in zip(refs, resolved, strict=True):
            if isinstance(found, Container):
                if found.id in seen:
                    raise invalid_body(f"Container ids {seen[found.id]!r} and {ref.id!r} name the same container",
                                       field="containerIds", duplicate=ref.id)
                seen[found.id] = ref.id

        async def one(ref: Ref, found: Container | str) -> dict[str, Any]:
            if isinstance(found, str):
                return result(ref.id, "", found)
            if runtime.is_self(found):
                return result(found.id, found.name, SELF)
            try:
                check_state(found, op)
            except ApiError as exc:
                return result(found.id, found.name, STATE_ERRORS.get(exc.code, exc.message))
            return await self._operate(runtime, found, op, timeout)

        results = await gather_all(one(ref, found) for ref, found in zip(refs, resolved, strict=True))
        return summary(BATCH_MESSAGE, results)
