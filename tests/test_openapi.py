"""The OpenAPI 3.1 document (the packaged file plus the lifecycle paths of the actions table): valid,
served, and in step with the app's routes."""

from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import validate

from nekzusd.actions import ACTIONS
from nekzusd.apidoc import DOCUMENT
from nekzusd.auth import PUBLIC, READ

DOC = json.loads(json.dumps(DOCUMENT))
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_GROUP = re.compile(r"\(\?P<(\w+)>([^()]*)\)")


def operations(doc=DOC):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def doc_routes() -> set[tuple[str, str]]:
    """(METHOD, path) with every path parameter written as {}."""
    return {(method.upper(), re.sub(r"\{[^}]+\}", "{}", path)) for path, method, _ in operations()}


def expand(pattern: str) -> list[str]:
    """An aiohttp route pattern as the concrete path shapes it matches: free segments become {},
    alternatives ({action:start|stop|restart}) become one path each."""
    match = _GROUP.search(pattern)
    if match is None:
        assert "(" not in pattern, f"unexpected route pattern {pattern}"
        return [pattern]
    head, body, tail = pattern[:match.start()], match.group(2), pattern[match.end():]
    if body == "[^{}/]+":
        choices = ["{}"]
    else:
        assert re.fullmatch(r"[\w.-]+(\|[\w.-]+)*", body), f"cannot describe route pattern {pattern}"
        choices = body.split("|")
    return [path for choice in choices for path in expand(head + choice + tail)]


def app_routes(app) -> dict[tuple[str, str], object]:
    """(METHOD, path shape) → handler, for every route the app registers (HEAD mirrors GET, and the "*"
    routes of literal paths only answer 405: both left out)."""
    found = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info()
        pattern = info["pattern"].pattern if "pattern" in info else re.escape(info["path"]).replace("\\", "")
        for path in expand(pattern):
            found[(route.method, path)] = route.handler
    return found


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def test_every_operation_has_an_id_a_scope_and_json_errors():
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations():
        assert operation["x-required-scope"] in ("read", "write", "public"), (path, method)
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and "$ref" in response:
                name = response["$ref"].rsplit("/", 1)[1]
                schema = DOC["components"]["responses"][name]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}


async def test_lists_exactly_the_routes_the_app_registers(client):
    registered = set(app_routes(client.app))
    documented = doc_routes()
    assert sorted(registered - documented) == [], "registered but not documented"
    assert sorted(documented - registered) == [], "documented but not registered"


async def test_declared_scopes_match_the_handlers(client):
    """x-required-scope is what the auth middleware enforces (None, the WebSocket, still needs read)."""
    handlers = app_routes(client.app)
    for path, method, operation in operations():
        if not path.startswith("/api/"):
            continue
        handler = handlers.get((method.upper(), re.sub(r"\{[^}]+\}", "{}", path)))
        if handler is None:
            continue  # the route test above reports it
        declared = getattr(handler, "required_scope", READ)
        assert operation["x-required-scope"] == (READ if declared is None else declared), (method, path)


def test_every_action_of_the_table_is_documented():
    """The batch enum and the paths come from the table: a new action needs no edit of the file."""
    assert DOC["components"]["schemas"]["BatchRequest"]["properties"]["action"]["enum"] == list(ACTIONS)
    for name in ACTIONS:
        for path in (f"/api/v1/containers/{name}-all", f"/api/v1/containers/{{containerId}}/{name}",
                     f"/api/v1/containers/{{namespace}}/{{pod}}/{name}"):
            assert "post" in DOC["paths"][path], path


async def test_served_document_is_the_built_one_and_public(remote_client, config_data):
    client = await remote_client(config_data)
    async with client.get("/api/v1/openapi.json") as resp:  # a remote client without any token
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == DOC


@pytest.mark.parametrize("path, method, operation", list(operations()),
                         ids=[f"{m.upper()} {p}" for p, m, _ in operations()])
async def test_unauthenticated_remote_calls_get_what_the_document_says(remote_client, config_data, path, method,
                                                                     operation):
    """Without a token, from a remote address: 401 wherever a scope is declared, never where it is public."""
    client = await remote_client(config_data)
    concrete = re.sub(r"\{[^}]+\}", "abc", path)
    async with client.request(method.upper(), concrete) as resp:
        await resp.read()
        if operation["x-required-scope"] == PUBLIC:
            assert resp.status != 401
        elif operation["operationId"] == "websocket":
            assert resp.status == 400  # a plain GET; the upgrade itself may authenticate by message
        else:
            assert resp.status == 401
            assert str(resp.status) in operation["responses"]
