"""Who may call what, from a non-local address (docs/api.md, scopes): every kind of credential × every kind of route.

The client connects from 127.0.0.2 while only 127.0.0.1 is local, so the daemon sees a remote caller on
a real socket. Each cell states the exact status and code; a route that went missing fails its cells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from nekzusd.auth import load_or_create_secret
from tests.harness.app import remote_config, run_container, unique

ISS = AUD = "nekzus"
OTHER_SECRET = b"x" * 64
GHOST_ID = "deadbeef0000"  # well-formed, absent: a refused caller must be refused before any lookup


def claims(scopes: list[str], **override: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "matrix", "scopes": scopes, "iss": ISS, "aud": AUD, "iat": now, "exp": now + 600, **override}


def raw_token(kind: str, secret: bytes) -> str:
    """The token of one row of the matrix, as a client would send it after "Bearer "."""
    now = int(time.time())
    if kind == "malformed":
        return "not-a.jwt"
    forged = {
        "expired": (claims(["*"], exp=now - 120, iat=now - 720), secret, "HS256"),
        "bad_signature": (claims(["*"]), OTHER_SECRET, "HS256"),
        "alg_none": (claims(["*"]), None, "none"),
        "hs512": (claims(["*"]), secret, "HS512"),
        "wrong_aud": (claims(["*"], aud="someone-else"), secret, "HS256"),
        "wrong_iss": (claims(["*"], iss="someone-else"), secret, "HS256"),
        "no_exp": ({k: v for k, v in claims(["*"]).items() if k != "exp"}, secret, "HS256"),
        "no_scope": (claims([]), secret, "HS256"),
        "read": (claims(["read:containers"]), secret, "HS256"),
        "read_all": (claims(["read:*"]), secret, "HS256"),
        "write": (claims(["write:containers"]), secret, "HS256"),
        "write_all": (claims(["write:*"]), secret, "HS256"),
        "star": (claims(["*"]), secret, "HS256"),
    }
    payload, key, algorithm = forged[kind]
    return jwt.encode(payload, key, algorithm=algorithm)


def make_header(kind: str, secret: bytes) -> str | None:
    """The Authorization header of one row (None: no header)."""
    if kind == "none":
        return None
    if kind == "basic":
        return "Basic dXNlcjpwYXNz"
    return f"Bearer {raw_token(kind, secret)}"


BAD_TOKENS = ["none", "malformed", "basic", "expired", "bad_signature", "alg_none", "hs512", "wrong_aud",
              "wrong_iss", "no_exp"]
READERS = ["read", "read_all"]
WRITERS = ["write", "write_all", "star"]


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # {id}: a container; {app}: a fresh app id
    success: int
    need: str  # "read" or "write"
    body: Any = None
    container: str | None = None  # "running", "stopped" or None (no container needed)


ROUTES = [
    Route("list", "GET", "/api/v1/containers", 200, "read"),
    Route("inspect", "GET", "/api/v1/containers/{id}", 200, "read", container="running"),
    Route("stats", "GET", "/api/v1/containers/{id}/stats", 200, "read", container="running"),
    Route("all_stats", "GET", "/api/v1/containers/stats", 200, "read"),
    Route("start", "POST", "/api/v1/containers/{id}/start", 202, "write", container="stopped"),
    Route("stop", "POST", "/api/v1/containers/{id}/stop?timeout=5", 202, "write", container="running"),
    Route("batch", "POST", "/api/v1/containers/batch", 200, "write", container="stopped",
          body={"action": "start", "containerIds": ["{id}"]}),
    Route("stop_all", "POST", "/api/v1/containers/stop-all", 200, "write"),
    Route("export", "POST", "/api/v1/containers/{id}/export", 200, "read", container="running", body={}),
    Route("export_unsanitised", "POST", "/api/v1/containers/{id}/export", 200, "write", container="running",
          body={"sanitize_secrets": False}),
    Route("batch_export_unsanitised", "POST", "/api/v1/containers/batch/export", 200, "write",
          container="running", body={"container_ids": ["{id}"], "sanitize_secrets": False}),
    Route("apps_list", "GET", "/api/v1/apps", 200, "read"),
    Route("apps_add", "POST", "/api/v1/apps", 201, "write", body={"id": "{app}", "name": "Matrix"}),
    Route("apps_delete", "DELETE", "/api/v1/apps/grafana", 409, "write"),  # config apps stay: 409 is success
    Route("discovery", "GET", "/api/v1/discovery", 200, "read"),
    Route("websocket", "GET", "/api/v1/ws", 101, "read"),
]


def expected(token: str, route: Route) -> tuple[int, str | None]:
    """The status and error code the matrix demands."""
    if token in BAD_TOKENS:
        if token == "none" and route.name == "websocket":
            return 101, None  # the upgrade is allowed: the first message must then authenticate
        return 401, "UNAUTHORIZED"
    granted = {"no_scope": set(), "read": {"read"}, "read_all": {"read"}}.get(token, {"read", "write"})
    if route.need not in granted:
        return 403, "INSUFFICIENT_SCOPE"
    return route.success, None


def fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


async def call(client, route: Route, header: str | None, ids: dict[str, str]) -> tuple[int, Any, Any]:
    headers = {"Authorization": header} if header else {}
    url = fill(route.path, ids)
    if route.name == "websocket":
        try:
            ws = await client.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError:
            pass  # refused before the upgrade: ask again as plain HTTP to read the error body
        else:
            await ws.close()
            return 101, None, None
        headers |= {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    kwargs = {} if route.body is None else {"json": fill(route.body, ids)}
    async with client.request(route.method, url, headers=headers, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.read()
        return resp.status, body, resp.headers


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
@pytest.mark.parametrize("token", BAD_TOKENS + ["no_scope"] + READERS + WRITERS)
async def test_matrix(remote_client, config_data, engine, token, route):
    client = await remote_client(config_data)
    status_want, code_want = expected(token, route)
    ids = {"id": GHOST_ID, "app": unique("app")}
    if route.container and status_want == route.success:
        ids["id"] = await run_container(engine, unique("m"), labels={"nekzus.app.id": "grafana"},
                                        start=route.container == "running")
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    status, body, headers = await call(client, route, make_header(token, secret), ids)
    assert status == status_want, (status, body)
    if code_want is not None:
        assert body["error"] == code_want and body["message"], body
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    if status == 403:
        # an unsanitised export is a read route that asks for write once it has read the body
        first_missing = "read" if token == "no_scope" and route.name.endswith("unsanitised") else route.need
        assert body["details"]["required"] == f"{first_missing}:containers"
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    if status >= 400:
        assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("token, reply, code", [
    ("", "auth_failed", "UNAUTHORIZED"),
    ("malformed", "auth_failed", "UNAUTHORIZED"),
    ("expired", "auth_failed", "UNAUTHORIZED"),
    ("bad_signature", "auth_failed", "UNAUTHORIZED"),
    ("hs512", "auth_failed", "UNAUTHORIZED"),
    ("alg_none", "auth_failed", "UNAUTHORIZED"),
    ("wrong_aud", "auth_failed", "UNAUTHORIZED"),
    ("no_scope", "auth_failed", "INSUFFICIENT_SCOPE"),
    ("read", "auth_success", None),
    ("star", "auth_success", None),
])
async def test_websocket_first_message_auth(remote_client, config_data, token, reply, code):
    """The other way in: upgrade without credentials, then {"type":"auth"} as the first message."""
    client = await remote_client(config_data)
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": raw_token(token, secret) if token else ""}})
    message = await ws.receive_json(timeout=5)
    assert message["type"] == reply, message
    if code:
        assert message["data"]["error"] == code
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    else:
        assert message["data"]["deviceId"] == "matrix"
    await ws.close()


async def test_local_client_needs_no_token_and_a_bad_one_is_ignored(make_client, config_data):
    """The same app, seen from 127.0.0.1 (local): no token needed, a forged one is not refused."""
    client = await make_client(remote_config(config_data))
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    for kind in ("none", "malformed", "expired", "bad_signature", "alg_none", "no_scope"):
        header = make_header(kind, secret)
        resp = await client.post("/api/v1/apps", json={"id": unique("app"), "name": "Local"},
                                 headers={"Authorization": header} if header else {})
        assert resp.status == 201, (kind, await resp.text())


async def test_matrix_scopes_agree_with_the_openapi_document(make_client, config_data):
    """Each row's scope is the one the API document declares for that operation."""
    from nekzusd.apidoc import DOCUMENT as doc
    templated = {"/api/v1/containers/{id}": "/api/v1/containers/{containerId}", "/api/v1/apps/grafana":
                 "/api/v1/apps/{appId}"}
    for route in ROUTES:
        path = route.path.split("?")[0]
        for raw, doc_form in templated.items():
            if path.startswith(raw):
                path = doc_form + path[len(raw):]
        operation = doc["paths"][path][route.method.lower()]
        if route.name.endswith("unsanitised"):
            assert "write scope" in operation["description"]
        else:
            assert operation["x-required-scope"] == route.need, route.name
