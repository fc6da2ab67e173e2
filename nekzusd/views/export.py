"""Compose export endpoints (docs/export.md): one container or a batch, as JSON or as a zip.

The handlers only parse and answer; nekzusd/export.py does the work.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .. import auth
from ..compose import DEFAULT_STACK_NAME, Export, export_zip, sanitize_name
from ..errors import bad_request, invalid_body
from ..export import export_batch, export_one
from ..keys import CONFIG
from ..runtimes import Ref
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
