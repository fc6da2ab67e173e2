"""Every route of the daemon, in matching order: literal paths first, then the Docker forms
/{id}/{action}, then the Kubernetes path form /{namespace}/{pod}/{action} (docs/kubernetes.md). So
/{id}/stats and /{id}/logs are a Docker container's, never a pod named "stats" or "logs"."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import ws
from .actions import ACTIONS
from .auth import PUBLIC, requires
from .views import apps, bulk, containers, export, logs, openapi, stats
from .views import status as operator

API = "/api/v1"
C = f"{API}/containers"
LIFECYCLE = "{action:" + "|".join(ACTIONS) + "}"  # only the names of the table ever match


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", operator.status_page)
    r.add_get("/healthz", operator.healthz)
    r.add_get("/readyz", operator.readyz)
    r.add_get("/metrics", operator.metrics)
    r.add_get(f"{API}/ws", ws.websocket)
    r.add_get(f"{API}/apps", apps.list_apps)
    r.add_post(f"{API}/apps", apps.add_app)
    r.add_delete(f"{API}/apps/{{app_id}}", apps.delete_app)
    r.add_get(f"{API}/discovery", apps.discovery)
    r.add_get(f"{API}/openapi.json", openapi.openapi_document)

    r.add_get(C, containers.list_containers)
    # Literal paths answer 405 to other methods rather than falling through to /{id} or /{namespace}/{pod}.
    literal(app, "GET", f"{C}/stats", stats.all_stats)
    for action in ACTIONS.values():
        literal(app, "POST", f"{C}/{action.name}-all", bulk.all_handler(action))
    literal(app, "POST", f"{C}/batch", bulk.batch)
    literal(app, "POST", f"{C}/batch/export", export.export_containers)
    literal(app, "POST", f"{C}/batch/export/preview", export.preview_containers)
    # One container: the Docker form first, then the Kubernetes path form (which only applies where the
    # Docker form does not match).
    for one in (f"{C}/{{id}}", f"{C}/{{namespace}}/{{pod}}"):
        r.add_get(one, containers.inspect_container)
        r.add_post(f"{one}/{LIFECYCLE}", containers.lifecycle)
        r.add_get(f"{one}/stats", stats.container_stats)
        # No HEAD (405): a followed stream would read an engine's log for a reader that takes no body.
        r.add_get(f"{one}/logs", logs.container_logs, allow_head=False)
        r.add_route("HEAD", f"{one}/logs", only_get)
        r.add_post(f"{one}/export", export.export_container)
        r.add_post(f"{one}/export/preview", export.preview_container)


def literal(app: web.Application, method: str, path: str, handler: Any) -> None:
    """A route on a fixed path that owns the path: any other method is a 405 naming the allowed one."""
    allowed = {method, "HEAD"} if method == "GET" else {method}

    @requires(PUBLIC)
    async def not_allowed(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    app.router.add_route(method, path, handler)
    app.router.add_route("*", path, not_allowed)


@requires(PUBLIC)
async def only_get(request: web.Request) -> web.StreamResponse:
    """A HEAD on a GET-only path: 405, rather than falling through to a route of another shape."""
    raise web.HTTPMethodNotAllowed(request.method, {"GET"})
