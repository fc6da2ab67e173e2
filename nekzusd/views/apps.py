"""Approved apps (docs/api.md) and discovery of containers asking to be managed."""

from __future__ import annotations

import re

from aiohttp import web

from ..apps import App
from ..auth import WRITE, requires
from ..config import check_app_id
from ..errors import invalid_body
from ..keys import APPS, HEALTH
from ..merged import merged
from ..runtimes import Container
from ..validation import Field, read_json
from .common import json_response, listed

# An approved app lives in memory and in every apps list, so each is small: with the cap on their number
# (max_api_apps) a client cannot grow the daemon by approving apps. Sizes are checked on the parsed
# fields, so padding the body changes nothing.
MAX_NAME = 200
MAX_CONTAINERS = 50
MAX_CONTAINER_NAME = 253  # a Kubernetes workload name (DNS subdomain); Docker names are shorter in practice
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # what Docker, Podman and Kubernetes accept

_APP_FIELDS = {
    "id": Field(str, required=True, max_length=64),
    "name": Field(str, required=True, max_length=MAX_NAME),
    "containers": Field(list, default=[], item_type=str, max_items=MAX_CONTAINERS, max_length=MAX_CONTAINER_NAME),
}


def _check_containers(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not _CONTAINER_NAME.fullmatch(name):
            raise invalid_body(f"Field containers[{i}] must be a container or workload name: a letter or digit, "
                               "then letters, digits, '_', '.' or '-'", field=f"containers[{i}]")
        if name in seen:
            raise invalid_body(f"Field containers[{i}] repeats {name!r}", field=f"containers[{i}]")
        seen.add(name)
    return names


def _app_json(request: web.Request, app: App) -> dict:
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
    if not name or not name.isprintable():
        raise invalid_body(f"Field name must be 1-{MAX_NAME} printable characters", field="name")
    app = await request.app[APPS].add(app_id, name, _check_containers(body["containers"]))
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
    """Candidates of every covered runtime, in the list's order (``merged.order``)."""
    listing = await listed(request)
    apps = request.app[APPS]
    found = merged((runtime, apps.unlinked_candidates(rows)) for runtime, rows in listing.answered)
    return json_response([_discovered(c) for _runtime, c in found], headers=listing.headers)
