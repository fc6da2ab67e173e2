"""What container handlers share: which runtime and container a request names."""

from __future__ import annotations

from aiohttp import web

from ..keys import RUNTIMES
from ..runtimes import Ref, Runtime


def runtime_of(request: web.Request) -> Runtime:
    """The runtime of ``?runtime=``; the path form /{namespace}/{pod}/… defaults to kubernetes."""
    name = request.query.get("runtime")
    if name is None and "namespace" in request.match_info:
        name = "kubernetes"
    return request.app[RUNTIMES].pick(name)


def target(request: web.Request) -> tuple[Runtime, Ref]:
    runtime = runtime_of(request)
    match = request.match_info
    if "namespace" in match:
        ref = Ref(match["pod"], match["namespace"])
    else:
        ref = Ref(match["id"], request.query.get("namespace", ""))
    return runtime, runtime.validate_ref(ref)
