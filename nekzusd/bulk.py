"""Bulk (`<action>-all`) and batch lifecycle operations (docs/api.md, Bulk and batch).

Every engine call of every bulk or batch request goes through one semaphore shared by the whole
process, so two requests at once still run at most ``bulk.concurrency`` operations together. Each
operation is an ordinary lifecycle operation: refused by the same checks as a single one
(`operations.check`, before the engine is called and without a notification), else run by
`Operations.run`, announced on the WebSocket and recorded exactly like a single one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from .actions import Action, not_supported
from .apps import Apps
from .concurrency import gather_all
from .errors import ApiError, EngineError, invalid_body
from .operations import Operations, check
from .runtimes.base import Container, Ref, Runtime

BATCH_MESSAGE = "Batch operation completed"
NOT_FOUND = "container not found"
SELF = "nekzusd does not act on the container it runs in"


def able(runtimes: Iterable[Runtime], action: Action) -> tuple[list[Runtime], list[dict[str, Any]]]:
    """The runtimes that can do ``action``, and a report for each one that cannot (``<action>-all``
    leaves its containers alone and says so in ``skippedRuntimes``). When none can, the 501 of
    ``Action.check_runtime``: also when the request named that runtime, nothing could ever be done."""
    runtimes = list(runtimes)
    can = [r for r in runtimes if action.name in r.actions]
    if not can:
        action.check_runtime(runtimes[0])
    skipped = [{"runtime": r.name, "error": "ACTION_NOT_SUPPORTED",
                "message": not_supported(action.name, r.name).message} for r in runtimes if r not in can]
    return can, skipped


def all_targets(action: Action, containers: Iterable[Container], apps: Apps, runtime: Runtime) -> list[Container]:
    """The linked containers of one runtime that ``action.picks`` (start-all: those not running; stop-all
    and restart-all: the running ones); never nekzusd's own container."""
    wanted = [c for c in containers if action.picks(c)]
    return [c for c in apps.linked(wanted) if not runtime.is_self(c)]


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

    async def _operate(self, runtime: Runtime, container: Container, action: Action, timeout: int) -> dict[str, Any]:
        """One container: the checks of a single operation (a refusal is a failed result, with the
        single 409's message, or the clients' short wording for a state), then the operation."""
        async with self.semaphore:
            try:
                await check(runtime, container, action)
            except ApiError as exc:
                refusal = action.refusal(container)
                return result(container.id, container.name, refusal.short if refusal else exc.message)
            except EngineError as exc:
                return result(container.id, container.name, str(exc))
            operation = await self.operations.run(runtime, container, action, timeout)
        return result(container.id, container.name, None if operation.ok else operation.error)

    async def run_all(self, targets: list[tuple[Runtime, Container]], action: Action,
                      timeout: int) -> dict[str, Any]:
        """Act on containers of one or several runtimes (``merged.merged``'s pairs); results in their order."""
        for runtime in {id(r): r for r, _c in targets}.values():
            action.check_runtime(runtime)
        results = await gather_all(self._operate(runtime, c, action, timeout) for runtime, c in targets)
        return summary(action.all_message, results)

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

    async def batch(self, runtime: Runtime, refs: list[Ref], action: Action, timeout: int) -> dict[str, Any]:
        """Act on the given containers; results in the request's order. Two ids naming one container
        (a name and its id) are refused before anything runs, like literal duplicates."""
        action.check_runtime(runtime)
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
            return await self._operate(runtime, found, action, timeout)

        results = await gather_all(one(ref, found) for ref, found in zip(refs, resolved, strict=True))
        return summary(BATCH_MESSAGE, results)
