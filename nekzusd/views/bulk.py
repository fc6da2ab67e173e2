"""`<action>-all` and batch: lifecycle operations on many containers at once."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from ..actions import ACTIONS, Action
from ..auth import WRITE, requires
from ..bulk import able, all_targets
from ..errors import bad_request, invalid_body
from ..keys import APPS, BULK
from ..merged import merged
from ..runtimes import Ref, Runtime
from ..validation import MAX_IDS, Field, read_json, timeout_param, timeout_value
from .common import json_response, listed, runtime_of, scope_of

_BATCH_FIELDS = {
    "action": Field(str),
    "containerIds": Field(list, item_type=str, max_items=MAX_IDS),
    "timeout": Field(object),  # any JSON value: timeout_value answers INVALID_TIMEOUT, as for the query
}
_ACTION_LIST = ", ".join(ACTIONS)


def all_handler(action: Action) -> web.RequestHandler:
    """The handler of `POST /containers/<action>-all`."""

    @requires(WRITE)
    async def act_on_all(request: web.Request) -> web.Response:
        """Every covered runtime that can do the action (the others are reported as skipped); a runtime
        that cannot be listed is left out and named in the header, as in the list (nekzusd.merged)."""
        scope = scope_of(request)
        timeout = timeout_param(request.query.get("timeout"))
        runtimes, skipped = able(scope.runtimes, action)
        listing = await listed(request, replace(scope, runtimes=tuple(runtimes)))
        apps = request.app[APPS]
        targets = merged((r, all_targets(action, rows, apps, r)) for r, rows in listing.answered)
        body = await request.app[BULK].run_all(targets, action, timeout)
        if skipped:
            body["skippedRuntimes"] = skipped
        return json_response(body, headers=listing.headers)

    act_on_all.__name__ = f"{action.name}_all"
    return act_on_all


def batch_refs(ids: list[str], namespace: str, runtime: Runtime) -> list[Ref]:
    """Each id checked against the runtime's syntax; literal duplicates are a 400."""
    seen: set[str] = set()
    refs = []
    for i, container_id in enumerate(ids):
        if container_id in seen:
            raise invalid_body(f"Duplicate container id: {container_id[:200]}", field=f"containerIds[{i}]",
                               duplicate=container_id[:200])
        seen.add(container_id)
        refs.append(runtime.validate_ref(Ref(container_id, namespace)))
    return refs


@requires(WRITE)
async def batch(request: web.Request) -> web.Response:
    body = await read_json(request, _BATCH_FIELDS)
    name = body["action"]
    if name not in ACTIONS:
        details = {"action": name[:40]} if name is not None else {}
        raise bad_request("INVALID_ACTION", f"Action must be one of: {_ACTION_LIST}", **details)
    if not body["containerIds"]:
        raise bad_request("EMPTY_CONTAINER_LIST", "At least one container ID is required")
    timeout = timeout_value(body["timeout"])
    runtime = runtime_of(request)
    refs = batch_refs(body["containerIds"], request.query.get("namespace", ""), runtime)
    return json_response(await request.app[BULK].batch(runtime, refs, ACTIONS[name], timeout))
