"""The operator's routes: the status page, /healthz, /readyz and /metrics.

The status page and /metrics show what runs on the server, so they follow the API's rule: local
addresses need no token, everyone else needs one with a read scope. /healthz and /readyz stay open for
probes, but to a stranger (a remote client without a read token) they say only "up or not": the version,
uptime and engine error text tell an attacker which exploits to try, and a probe needs the status code only.
"""

from __future__ import annotations

import time

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .. import __version__
from ..auth import PRINCIPAL, READ, require
from ..keys import METRICS, PROBE, STARTED_AT
from ..metrics import CONTENT_TYPE
from ..status import gather

REFRESH_SECONDS = 10


class _CompiledOnce(jinja2.BytecodeCache):
    """The compiled template, kept for every app this process builds: each app has its own environment
    (aiohttp_jinja2 binds it to the app), and compiling anew cost 40 ms of the 66 ms an app takes to build
    (the tests build a thousand). Jinja keys each entry by the template's name and source checksum."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_COMPILED = _CompiledOnce()


def setup_templates(app: web.Application) -> None:
    """Jinja with autoescaping; the template is compiled now so that no request reads a file."""
    env = aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("nekzusd", "templates"),
                               autoescape=True, auto_reload=False, bytecode_cache=_COMPILED)
    env.get_template("status.html")


async def status_page(request: web.Request) -> web.Response:
    require(request, READ)
    data = await gather(request.app)
    data["refreshSeconds"] = REFRESH_SECONDS
    response = aiohttp_jinja2.render_template("status.html", request, data)
    response.headers["Cache-Control"] = "no-store"
    return response


def _may_see_details(request: web.Request) -> bool:
    """A local client or a token with a read scope (the auth middleware resolved it; a bad token is nobody)."""
    principal = request.get(PRINCIPAL)
    return principal is not None and principal.allows(READ)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its loop answers."""
    body: dict[str, object] = {"status": "ok"}
    if _may_see_details(request):
        body |= {"version": __version__, "uptimeSeconds": int(time.time() - request.app[STARTED_AT])}
    return web.json_response(body)


async def readyz(request: web.Request) -> web.Response:
    """Ready when the listener answers (it just did) and the primary runtime is reachable."""
    primary = await request.app[PROBE].primary()
    body: dict[str, object] = {"status": "ready" if primary.reachable else "not_ready"}
    if _may_see_details(request):
        body["runtime"] = primary.as_json()
    return web.json_response(body, status=200 if primary.reachable else 503)


async def metrics(request: web.Request) -> web.Response:
    require(request, READ)
    await request.app[PROBE].check()  # the collector reads the cached reachability
    return web.Response(body=request.app[METRICS].expose(), headers={"Content-Type": CONTENT_TYPE})
