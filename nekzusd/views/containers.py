"""List, inspect and lifecycle of single containers."""

from __future__ import annotations

from aiohttp import web

from ..actions import ACTIONS
from ..auth import WRITE, requires
from ..errors import engine_errors
from ..keys import APPS, OPERATIONS
from ..merged import merged
from ..operations import accepted_body
from ..validation import bool_param, timeout_param
from .common import json_response, listed, runtime_of, target


async def list_containers(request: web.Request) -> web.Response:
    """Every covered runtime's rows as one list, in ``merged.order``."""
    show_all = bool_param(request, "all")
    listing = await listed(request)
    apps = request.app[APPS]
    rows = merged((runtime, rows if show_all else apps.linked(rows)) for runtime, rows in listing.answered)
    return json_response([c.as_json() for _runtime, c in rows], headers=listing.headers)


async def inspect_container(request: web.Request) -> web.Response:
    runtime, ref = target(request)
    with engine_errors("CONTAINER_INSPECT_FAILED", "Failed to inspect container"):
        details = await runtime.inspect(ref)
    return json_response(details)


@requires(WRITE)
async def lifecycle(request: web.Request) -> web.Response:
    action = ACTIONS[request.match_info["action"]]  # the route matches only the table's names
    runtime = runtime_of(request)  # checked in the order of docs/api.md: runtime, timeout, action, container, state
    timeout = timeout_param(request.query.get("timeout"))
    runtime, ref = target(request, runtime)
    operations = request.app[OPERATIONS]
    with engine_errors(action.error_code, f"Failed to {action.name} container"):
        container = await operations.prepare(runtime, ref, action)
    operation_id = operations.submit(runtime, container, action, timeout)
    return json_response(accepted_body(action, container, operation_id, timeout), status=202)
