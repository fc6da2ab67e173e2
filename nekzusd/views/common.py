"""What container handlers share: which runtime and container a request names."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import ApiError, engine_errors
from ..keys import RUNTIMES
from ..merged import Answers, Scope
from ..merged import list_containers as list_each
from ..runtimes import Container, Ref, Runtime


def runtime_of(request: web.Request) -> Runtime:
    """The runtime of ``?runtime=``; the path form /{namespace}/{pod}/… defaults to kubernetes."""
    runtimes = request.app[RUNTIMES]
    name = request.query.get("runtime")
    if name is None and "namespace" in request.match_info:
        if "kubernetes" not in runtimes.by_name:  # a typo in a Docker path, most likely: not a 5xx
            raise ApiError(404, "NOT_FOUND", "No such route (the /{namespace}/{pod} form needs the Kubernetes "
                                             "runtime, which is not enabled)")
        name = "kubernetes"
    return runtimes.pick(name)


def scope_of(request: web.Request) -> Scope:
    """What a list-like request covers: the runtime of ``?runtime=``, else every enabled one (the filter
    semantics of docs/api.md), and ``?namespace=``."""
    runtimes = request.app[RUNTIMES].select(request.query.get("runtime"))
    return Scope(tuple(runtimes), request.query.get("namespace") or None)


async def listed(request: web.Request, scope: Scope | None = None) -> Answers[list[Container]]:
    """The containers of every runtime the request covers (``scope_of`` unless given), each runtime's own;
    ``.headers`` name the runtimes left out (nekzusd.merged)."""
    with engine_errors("CONTAINER_LIST_FAILED", "Failed to list containers"):
        return await list_each(scope or scope_of(request), request.app[RUNTIMES].read_timeout)


def target(request: web.Request, runtime: Runtime | None = None) -> tuple[Runtime, Ref]:
    """The runtime and the container a request names, the id checked against the runtime's syntax."""
    runtime = runtime or runtime_of(request)
    match = request.match_info
    if "namespace" in match:
        ref = Ref(match["pod"], match["namespace"])
    else:
        ref = Ref(match["id"], request.query.get("namespace", ""))
    return runtime, runtime.validate_ref(ref)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer encoded with orjson: the container list and stats are the hot paths of dashboards
    that poll, and orjson encodes them several times faster than the standard library."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)
