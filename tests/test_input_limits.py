"""Hostile input (issue 6): body size, strict JSON bodies, and container ids that must never reach the engine.

To prove that no request reaches another engine endpoint, the daemon talks to the real dockerd through
a small recording proxy on a unix socket (a real HTTP hop, not a mock): every path the daemon sends to
the engine is recorded, and the hostile requests must add none.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from nekzusd.validation import MAX_BODY, MAX_IDS
from tests.harness.app import run_container, unique
from tests.harness.engine_proxy import EngineProxy

class RecordingProxy(EngineProxy):
    """Keeps the method and raw path of every request the daemon sends to the engine."""

    def __init__(self, engine_url: str, listen: Path) -> None:
        super().__init__(engine_url, listen)
        self.seen: list[tuple[str, str]] = []

    def container_calls(self, since: int) -> list[str]:
        """Paths recorded after ``since``, without the daemon's background calls (event stream, version
        negotiation, the health tracker's container list), which name no container."""
        return [path for _, path in self.seen[since:]
                if not re.search(r"/(events|version|_ping|containers/json)\b", path)]

    async def forward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        return await super().forward(request)


@pytest.fixture
async def proxied(engine, make_client, config_data, tmp_path):
    """A daemon whose engine traffic goes through a RecordingProxy; yields (client, proxy)."""
    async with RecordingProxy(engine.url, tmp_path / "p.sock") as proxy:
        client = await make_client(proxy.route(config_data))
        yield client, proxy
        await client.close()


_ENGINE_PATH = re.compile(r"^/version$|^/v[0-9.]+/(containers/json(\?.*)?|containers/[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}/"
                          r"(json|start|stop|restart|stats|logs)(\?.*)?|events(\?.*)?|version|_ping|images/.+/json"
                          r"|volumes/[^/]+|networks(/[^/]+)?)$")  # the list: containernets learns the bridges


HOSTILE_IDS = [  # (raw path segment, expected status, expected code)
    ("..%2Fimages%2Fjson", 400, "INVALID_CONTAINER_ID"),
    ("..%2F..%2Fv1.41%2Fimages%2Fjson", 400, "INVALID_CONTAINER_ID"),
    ("%2E%2E%2Fimages", 400, "INVALID_CONTAINER_ID"),
    ("abc%2F..%2F..%2Fimages", 400, "INVALID_CONTAINER_ID"),
    ("abc%252Fjson", 400, "INVALID_CONTAINER_ID"),  # %2F once decoded: a literal % is not an id
    ("abc%00def", 400, "INVALID_CONTAINER_ID"),
    ("abc%3Fall%3D1", 400, "INVALID_CONTAINER_ID"),
    ("abc%23frag", 400, "INVALID_CONTAINER_ID"),
    ("abc%5C..%5Cimages", 400, "INVALID_CONTAINER_ID"),
    ("abc%20def", 400, "INVALID_CONTAINER_ID"),
    ("-rf", 400, "INVALID_CONTAINER_ID"),
    (".hidden", 400, "INVALID_CONTAINER_ID"),
    ("%EF%BC%A1bc", 400, "INVALID_CONTAINER_ID"),  # a full-width letter
    ("a" * 300, 400, "INVALID_CONTAINER_ID"),
    ("%2E%2E", 400, "INVALID_CONTAINER_ID"),  # decoded after routing: reaches the id check
    ("..", 404, "NOT_FOUND"),  # a dot segment: resolved by the URL layer, matches no route
]


async def test_the_proxy_sees_the_daemons_engine_calls(proxied, engine):
    """The control: a well-formed request does reach the engine, through the proxy, on the expected path."""
    client, proxy = proxied
    cid = await run_container(engine, unique("ok"))
    async with client.get(f"/api/v1/containers/{cid}") as resp:
        assert resp.status == 200
    assert any(path.endswith(f"/containers/{cid}/json") for _, path in proxy.seen), proxy.seen


@pytest.mark.parametrize("segment, status, code", HOSTILE_IDS, ids=[h[0][:30] for h in HOSTILE_IDS])
async def test_hostile_ids_never_reach_the_engine(proxied, segment, status, code):
    client, proxy = proxied
    before = len(proxy.seen)
    for method, suffix in (("GET", ""), ("POST", "/start"), ("POST", "/stop?timeout=5"), ("GET", "/stats"),
                           ("POST", "/export"), ("POST", "/export/preview")):
        url = URL(f"/api/v1/containers/{segment}{suffix}", encoded=True)
        async with client.request(method, url) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]) == (status, code), (method, suffix, body)
    assert proxy.container_calls(since=before) == []


@pytest.mark.parametrize("path, body", [
    ("/api/v1/containers/batch", {"action": "start", "containerIds": ["ok", "../images/json"]}),
    ("/api/v1/containers/batch", {"action": "stop", "containerIds": ["abc/../../images"]}),
    ("/api/v1/containers/batch/export", {"container_ids": ["..", "x"]}),
    ("/api/v1/containers/batch/export/preview", {"container_ids": ["a\u0000b"]}),
])
async def test_hostile_ids_in_bodies_never_reach_the_engine(proxied, path, body):
    client, proxy = proxied
    before = len(proxy.seen)
    async with client.post(path, json=body) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "INVALID_CONTAINER_ID"), answer
    assert proxy.container_calls(since=before) == []


async def test_every_engine_call_stays_on_known_endpoints(proxied, engine):
    """After a mix of ordinary and hostile requests, the engine has only seen the endpoints the daemon uses."""
    client, proxy = proxied
    cid = await run_container(engine, unique("ok"), labels={"nekzus.app.id": "grafana"})
    for method, path in (("GET", "/api/v1/containers"), ("GET", f"/api/v1/containers/{cid}"),
                         ("POST", f"/api/v1/containers/{cid}/export"), ("GET", "/api/v1/discovery"),
                         ("GET", "/api/v1/containers/..%2Fimages"), ("GET", "/api/v1/containers?namespace=../x"),
                         ("POST", f"/api/v1/containers/{cid}/stop?timeout=1&namespace=..%2F..")):
        async with client.request(method, URL(path, encoded=True)) as resp:
            await resp.read()
    paths = [p for _, p in proxy.seen]
    assert paths and all(_ENGINE_PATH.match(p) for p in paths), [p for p in paths if not _ENGINE_PATH.match(p)]


# --- body size ------------------------------------------------------------------------------

async def test_declared_body_over_64k_is_413_even_where_no_body_is_read(client):
    big = b"x" * (MAX_BODY + 1)
    for path in ("/api/v1/apps", "/api/v1/containers/abc/start", "/api/v1/containers/batch"):
        async with client.post(path, data=big, headers={"Content-Type": "application/json"}) as resp:
            body = await resp.json()
            assert resp.status == 413 and body["error"] == "REQUEST_TOO_LARGE", (path, body)
            assert body["details"]["limit"] == MAX_BODY


async def test_chunked_body_over_64k_is_413(client):
    async def chunks():
        for _ in range(20):
            yield b" " * 8192  # valid JSON whitespace, 160 KiB in all, no Content-Length

    async with client.post("/api/v1/apps", data=chunks()) as resp:
        body = await resp.json()
        assert resp.status == 413 and body["error"] == "REQUEST_TOO_LARGE", body


async def test_body_just_under_the_limit_is_read(client):
    padding = " " * (MAX_BODY - 100)
    raw = f'{{"id": "{unique("app")}", {padding} "name": "Padded"}}'.encode()
    assert len(raw) <= MAX_BODY
    async with client.post("/api/v1/apps", data=raw) as resp:
        assert resp.status == 201, await resp.text()


# --- strict JSON ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, field, words", [
    (b"not json", None, "not valid JSON"),
    (b"", None, "JSON object"),
    (b"[]", None, "JSON object"),
    (b'"just a string"', None, "JSON object"),
    (b'{"id": "a", "name": "b", "extra": 1}', "extra", "Unknown field"),
    (b'{"id": 5, "name": "b"}', "id", "must be a string"),
    (b'{"name": "b"}', "id", "Missing required field"),
    (b'{"id": "a", "name": "b", "containers": "web"}', "containers", "must be a list"),
    (b'{"id": "a", "name": "b", "containers": [1]}', "containers[0]", "must be a string"),
    (b'{"id": "a", "id": "b", "name": "c"}', "id", "Duplicate field"),
    (b'{"id": "a", "name": NaN}', None, "NaN"),
    (b'{"id": "a", "name": "b", "containers": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", None, "nested"),
    (b'{"id": "../x", "name": "b"}', "id", "Field id"),
])
async def test_apps_body_is_validated(client, raw, field, words):
    async with client.post("/api/v1/apps", data=raw, headers={"Content-Type": "application/json"}) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"] == "INVALID_REQUEST_BODY", body
        assert words in body["message"], body
        if field is not None:
            assert body["details"]["field"] == field


async def test_too_many_ids_in_a_batch(client):
    ids = [f"c{i}" for i in range(MAX_IDS + 1)]
    for path, body in (("/api/v1/containers/batch", {"action": "start", "containerIds": ids}),
                       ("/api/v1/containers/batch/export", {"container_ids": ids})):
        async with client.post(path, json=body) as resp:
            answer = await resp.json()
            assert resp.status == 400 and answer["error"] == "INVALID_REQUEST_BODY", answer
            assert answer["details"]["maxItems"] == MAX_IDS


@pytest.mark.parametrize("body, code", [
    ({"action": "start", "containerIds": ["a"], "timeout": "10"}, "INVALID_TIMEOUT"),
    ({"action": "start", "containerIds": ["a"], "timeout": 1.5}, "INVALID_TIMEOUT"),
    ({"action": "start", "containerIds": ["a"], "timeout": True}, "INVALID_TIMEOUT"),
    ({"action": "start", "containerIds": ["a"], "timeout": 301}, "INVALID_TIMEOUT"),
    ({"action": "start", "containerIds": ["a"], "timeout": 10 ** 30}, "INVALID_TIMEOUT"),
    ({"action": ["start"], "containerIds": ["a"]}, "INVALID_REQUEST_BODY"),
    ({"action": "start", "containerIds": [None]}, "INVALID_REQUEST_BODY"),
    ({"action": "start", "containerIds": {"a": 1}}, "INVALID_REQUEST_BODY"),
    ({"action": "start", "containerIds": ["a"], "force": True}, "INVALID_REQUEST_BODY"),
])
async def test_batch_body_is_validated(client, body, code):
    async with client.post("/api/v1/containers/batch", json=body) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, code), answer


@pytest.mark.parametrize("value", ["+10", "1_0", "\u0661\u0660", " 10", "0x1", "10.0", "-1", "0", "301", "9" * 50])
async def test_timeout_query_accepts_plain_digits_only(client, value):
    async with client.post("/api/v1/containers/abc/stop", params={"timeout": value}) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "INVALID_TIMEOUT"), (value, answer)


async def test_export_options_are_validated(client):
    async with client.post("/api/v1/containers/abc/export", json={"sanitize_secrets": "no"}) as resp:
        answer = await resp.json()
        assert resp.status == 400 and answer["details"]["field"] == "sanitize_secrets", answer


@pytest.mark.parametrize("query", ["runtime=docker&runtime=kubernetes", "all=true&all=false",
                                   "timeout=5&timeout=500"])
async def test_a_query_parameter_given_twice_is_refused(client, query):
    """Parameter pollution: which value counts would depend on who reads the query."""
    async with client.get(f"/api/v1/containers?{query}") as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "INVALID_PARAMETER"), answer
        assert answer["details"]["parameter"] == query.split("=")[0]


@pytest.mark.parametrize("value", ["", "maybe", "2", "True "])
async def test_all_flag_must_be_a_boolean(client, value):
    async with client.get("/api/v1/containers", params={"all": value}) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "INVALID_PARAMETER"), answer
