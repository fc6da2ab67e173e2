"""Compose export endpoints (docs/export.md): one container or a batch, as JSON or as a zip.

The handlers only parse and answer; `export_one` and `export_batch` do the work and can be called by tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .. import auth
from ..compose import DEFAULT_STACK_NAME, Export, ServiceSource, export_services, export_zip, sanitize_name
from ..errors import ApiError, EngineError, bad_request, invalid_body
from ..keys import CONFIG
from ..runtimes import Ref, Runtime
from ..validation import MAX_IDS, Field, read_json
from .common import json_response, runtime_of, target

_OPTIONS = {
    "sanitize_secrets": Field(bool, default=True),
    "include_volumes": Field(bool, default=True),
    "include_networks": Field(bool, default=True),
}
_BATCH_FIELDS = {
    "container_ids": Field(list, required=True, item_type=str, max_items=MAX_IDS),
    "stack_name": Field(str, default=DEFAULT_STACK_NAME),
    **_OPTIONS,
}
MAX_STACK_NAME = 128
ZIP_TYPE = "application/zip"


def export_not_supported(runtime: Runtime) -> ApiError:
    return ApiError(501, "EXPORT_NOT_SUPPORTED",
                    f"Compose export is not supported for the {runtime.name} runtime", {"runtime": runtime.name})


async def _source(runtime: Runtime, ref: Ref) -> ServiceSource:
    try:
        return await runtime.export_source(ref)
    except NotImplementedError:
        raise export_not_supported(runtime) from None


async def export_one(runtime: Runtime, ref: Ref, options: dict[str, Any]) -> Export:
    """One container as a compose file; an engine failure is EXPORT_FAILED (404/501/503 pass through)."""
    try:
        source = await _source(runtime, ref)
    except EngineError as exc:
        raise ApiError(500, "EXPORT_FAILED", f"Failed to export container configuration: {exc}",
                       {"containerId": ref.id}) from None
    return await asyncio.to_thread(export_services, [source], **options)


async def export_batch(runtime: Runtime, refs: list[Ref], stack_name: str, options: dict[str, Any],
                       concurrency: int) -> tuple[Export, bool]:
    """Several containers as one stack, inspected concurrently (bounded) and kept in the request's order.

    A container that cannot be inspected is left out with a warning; the second value says whether any
    was. None left is 404 ALL_CONTAINERS_FAILED. An unreachable engine (503) or a runtime that cannot
    export (501) fails the whole request: that is no container's fault.
    """
    gate = asyncio.Semaphore(concurrency)

    async def fetch(ref: Ref) -> ServiceSource | str:
        async with gate:
            try:
                return await _source(runtime, ref)
            except ApiError as exc:
                if exc.status in (501, 503):
                    raise
                return f"Container '{ref.id}' was skipped: {exc.message}"
            except EngineError as exc:
                return f"Container '{ref.id}' was skipped: failed to inspect it: {exc}"

    try:
        async with asyncio.TaskGroup() as group:  # one failing the request cancels the others
            tasks = [group.create_task(fetch(ref)) for ref in refs]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    results = [task.result() for task in tasks]
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


def _wants_zip(request: web.Request, preview: bool) -> bool:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "zip"):
        raise bad_request("INVALID_PARAMETER", "Query parameter format must be json or zip",
                          parameter="format")
    if fmt == "zip" and preview:
        raise bad_request("INVALID_PARAMETER", "A preview is JSON only; ask …/export?format=zip for the zip",
                          parameter="format")
    return fmt == "zip"


async def _read_options(request: web.Request, fields: dict[str, Field], optional_body: bool) -> dict[str, Any]:
    body = await read_json(request, fields, optional_body=optional_body)
    if not body["sanitize_secrets"]:
        auth.require(request, auth.WRITE)  # the answer holds credentials: as much a risk as a mutation
    return body


async def _respond(export: Export, zip_folder: str, as_zip: bool, status: int = 200) -> web.Response:
    if not as_zip:
        return json_response(export.as_json(), status=status)
    folder = sanitize_name(zip_folder)
    archive = await asyncio.to_thread(export_zip, export, folder)
    return web.Response(body=archive, status=status, content_type=ZIP_TYPE,
                        headers={"Content-Disposition": f'attachment; filename="{folder}.zip"',
                                 "X-Export-Warning-Count": str(len(export.warnings))})


async def _single(request: web.Request, preview: bool) -> web.Response:
    as_zip = _wants_zip(request, preview)
    runtime, ref = target(request)
    options = await _read_options(request, _OPTIONS, optional_body=True)
    export = await export_one(runtime, ref, options)
    return await _respond(export, export.filename.removesuffix("-compose.yaml"), as_zip)


async def _batch(request: web.Request, preview: bool) -> web.Response:
    as_zip = _wants_zip(request, preview)
    runtime = runtime_of(request)
    body = await _read_options(request, _BATCH_FIELDS, optional_body=False)
    ids: list[str] = body.pop("container_ids")
    stack_name: str = body.pop("stack_name") or DEFAULT_STACK_NAME
    if not ids:
        raise bad_request("EMPTY_CONTAINER_LIST", "At least one container ID is required")
    if len(stack_name) > MAX_STACK_NAME:
        raise invalid_body(f"Field stack_name may hold at most {MAX_STACK_NAME} characters", field="stack_name")
    namespace = request.query.get("namespace", "")
    refs = [runtime.validate_ref(Ref(i, namespace)) for i in ids]
    concurrency = request.app[CONFIG].bulk.concurrency
    export, skipped = await export_batch(runtime, refs, stack_name, body, concurrency)
    return await _respond(export, stack_name, as_zip, status=206 if skipped else 200)


async def export_container(request: web.Request) -> web.Response:
    return await _single(request, preview=False)


async def preview_container(request: web.Request) -> web.Response:
    return await _single(request, preview=True)


async def export_containers(request: web.Request) -> web.Response:
    return await _batch(request, preview=False)


async def preview_containers(request: web.Request) -> web.Response:
    return await _batch(request, preview=True)
