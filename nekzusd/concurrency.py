"""Running a batch of coroutines together, with nothing left behind when one of them fails.

Runtime-neutral and free of any feature, so that read paths (stats) and lifecycle paths (bulk) share it
without depending on each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_all(awaitables: Iterable[Coroutine[Any, Any, T]], limit: int | None = None) -> list[T]:
    """All results in order; the first failure cancels the rest (nothing left running unowned) and is
    raised as itself, so that an ApiError still reaches the error middleware. ``limit``: at most that many
    run at once (the others wait their turn), so a long batch does not open one engine call per item."""
    gate = asyncio.Semaphore(limit) if limit is not None else None

    async def bounded(awaitable: Coroutine[Any, Any, T]) -> T:
        if gate is None:
            return await awaitable
        async with gate:
            return await awaitable

    try:
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[T]] = [group.create_task(bounded(a)) for a in awaitables]
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [t.result() for t in tasks]
