"""Compose export orchestration (docs/export.md): fetching what each container needs from its runtime,
in order and bounded, and handing it to the compose mapping (nekzusd/compose.py) off the loop.

The HTTP handlers (nekzusd/views/export.py) only parse and answer; these can be called by tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .compose import Export, ServiceSource, export_services
from .concurrency import gather_all
from .errors import ApiError, EngineError, NotSupported, engine_errors, from_engine
from .runtimes import Ref, Runtime

# What a runtime's failure is called in an export answer (NotSupported becomes 501 EXPORT_NOT_SUPPORTED).
FAILED = ("EXPORT_FAILED", "Failed to export container configuration")
NOT_SUPPORTED = "EXPORT_NOT_SUPPORTED"


async def export_one(runtime: Runtime, ref: Ref, options: dict[str, Any]) -> Export:
    """One container as a compose file; an engine failure is EXPORT_FAILED (404/501/503 pass through)."""
    with engine_errors(*FAILED, not_supported=NOT_SUPPORTED, containerId=ref.id):
        source: ServiceSource = await runtime.export_source(ref)
    return await asyncio.to_thread(export_services, [source], **options)


async def export_batch(runtime: Runtime, refs: list[Ref], stack_name: str, options: dict[str, Any],
                       concurrency: int) -> tuple[Export, bool]:
    """Several containers as one stack, inspected concurrently (bounded) and kept in the request's order.

    A container that cannot be inspected is left out with a warning; the second value says whether any
    was. None left is 404 ALL_CONTAINERS_FAILED. An unreachable engine (503) or a runtime that cannot
    export (501) fails the whole request: that is no container's fault.
    """
    results = await gather_all((_fetch(runtime, ref) for ref in refs), limit=concurrency)
    skipped = [r for r in results if isinstance(r, str)]
    sources: list[ServiceSource] = []
    repeated: list[str] = []
    seen: set[str] = set()
    for ref, result in zip(refs, results, strict=True):
        if isinstance(result, str):
            continue
        full_id = result.container.get("Id") or ref.id
        if full_id in seen:
            repeated.append(f"Container '{ref.id}' was listed more than once: exported once")
            continue
        seen.add(full_id)
        sources.append(result)
    if not sources:
        raise ApiError(404, "ALL_CONTAINERS_FAILED", "Failed to inspect any containers", {"warnings": skipped})
    # Off the loop: YAML emitting is pure Python and takes about 9 ms per service.
    export = await asyncio.to_thread(export_services, sources, stack_name=stack_name, **options)
    export.warnings[:0] = skipped + repeated
    return export, bool(skipped)


async def _fetch(runtime: Runtime, ref: Ref) -> ServiceSource | str:
    """One container's source, or the warning saying why it is left out of the stack."""
    try:
        source: ServiceSource = await runtime.export_source(ref)
        return source
    except NotSupported as exc:
        raise from_engine(exc, *FAILED, not_supported=NOT_SUPPORTED) from None
    except ApiError as exc:
        if exc.status in (501, 503):
            raise
        return f"Container '{ref.id}' was skipped: {exc.message}"
    except EngineError as exc:
        return f"Container '{ref.id}' was skipped: failed to inspect it: {exc}"
