"""Approved apps (§3) and discovery of containers asking to be managed."""

from __future__ import annotations

from aiohttp import web

from ..auth import WRITE, requires
from ..config import check_app_id
from ..errors import invalid_body
from ..keys import APPS, HEALTH
from ..runtimes import Container
from ..validation import Field, read_json
from .common import json_response, listed

_APP_FIELDS = {
    "id": Field(str, required=True),
    "name": Field(str, required=True),
    "containers": Field(list, default=[], item_type=str, max_items=100),
}


def _app_json(request: web.Request, app) -> dict:
    return {**app.as_json(), "health": request.app[HEALTH].status.get(app.id, "unknown")}


async def list_apps(request: web.Request) -> web.Response:
    return json_response([_app_json(request, a) for a in request.app[APPS].all()])


@requires(WRITE)
async def add_app(request: web.Request) -> web.Response:
    body = await read_json(request, _APP_FIELDS)
    try:
        app_id = check_app_id(body["id"])
    except ValueError as exc:
        raise invalid_body(f"Field id {exc}", field="id") from None
    name = body["name"].strip()
    if not name or len(name) > 200:
        raise invalid_body("Field name must be 1-200 characters", field="name")
    app = await request.app[APPS].add(app_id, name, body["containers"])
    request.app[HEALTH].poke()
    return json_response(_app_json(request, app), status=201)


@requires(WRITE)
async def delete_app(request: web.Request) -> web.Response:
    await request.app[APPS].remove(request.match_info["app_id"])
    request.app[HEALTH].poke()
    return web.Response(status=204)


def _discovered(container: Container) -> dict:
    return {**container.as_json(), "suggestedAppId": container.labels.get("nekzus.app.id") or container.name}


async def discovery(request: web.Request) -> web.Response:
    _runtime, containers = await listed(request)
    found = sorted(request.app[APPS].unlinked_candidates(containers), key=lambda c: c.name)
    return json_response([_discovered(c) for c in found])
