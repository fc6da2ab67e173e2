"""The status page: the data ``status.gather`` collects, who may see it, and the page as headless Chromium
renders it (a screenshot under tests/artifacts/ and DOM checks of every section), with the real dockerd
behind it."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nekzusd.actions import ACTIONS
from nekzusd.auth import Tokens
from nekzusd.keys import OPERATIONS, RUNTIMES
from nekzusd.runtimes import Ref
from nekzusd.status import gather
from tests.harness.app import next_message, remote_session, run_container, unique, wait_for, ws_connect

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


async def _stop_through_api(client, cid: str) -> None:
    ws = await ws_connect(client)
    resp = await client.post(f"/api/v1/containers/{cid}/stop?timeout=1")
    assert resp.status == 202, await resp.text()
    await next_message(ws, "container.stop.completed")
    await ws.close()


@pytest.fixture
async def busy_client(make_client, config_data, engine):
    """A daemon with one app of two containers (one running, one stopped by an operation) and one other
    container not linked to any app."""
    config_data["apps"] = [{"id": "grafana", "name": "Grafana"}, {"id": "media", "name": "Media <server>"}]
    client = await make_client(config_data)
    web_id = await run_container(engine, unique("web"), labels={"nekzus.app.id": "grafana"})
    db_id = await run_container(engine, unique("db"), labels={"nekzus.app.id": "grafana"})
    other_id = await run_container(engine, unique("other"))
    await _stop_through_api(client, db_id)
    client.ids = {"web": web_id, "db": db_id, "other": other_id}  # type: ignore[attr-defined]
    return client


async def test_gather_reports_every_section(busy_client, engine) -> None:
    app = busy_client.server.app
    ids = busy_client.ids

    async def health_settled() -> bool:
        return (await gather(app))["apps"][0]["health"] == "unhealthy"

    await wait_for(health_settled)
    data = await gather(app)
    assert data["version"] and data["uptimeSeconds"] >= 0
    (docker,) = data["runtimes"]
    engine_version = engine.api_json("GET", "/version")["Version"]
    assert docker["reachable"] and docker["version"] == engine_version and docker["latencyMs"] > 0
    assert data["containers"]["byState"] == {"docker": {"exited": 1, "running": 2}}
    assert data["containers"]["total"] == 3
    grafana, media = data["apps"]
    assert grafana["id"] == "grafana" and grafana["health"] == "unhealthy"
    assert {c["id"]: c["state"] for c in grafana["containers"]} == {ids["web"]: "running", ids["db"]: "exited"}
    assert media["containers"] == [] and media["health"] == "unknown"
    (op,) = data["operations"]["recent"]
    assert op["kind"] == "stop" and op["containerId"] == ids["db"] and op["result"] == "success"
    assert op["durationMs"] >= 0
    assert data["live"]["websocket_clients"] == 0


async def test_recent_operations_are_the_last_twenty_newest_first(busy_client, engine) -> None:
    app = busy_client.server.app
    web_id = busy_client.ids["web"]
    operations, docker = app[OPERATIONS], app[RUNTIMES].pick("docker")
    container = await operations.prepare(docker, Ref(web_id), ACTIONS["stop"])
    for _ in range(11):  # 22 more operations, alternating stop and start on one container
        await operations.run(docker, container, ACTIONS["stop"], 1)
        await operations.run(docker, container, ACTIONS["start"], 1)
    recent = (await gather(app))["operations"]["recent"]
    assert len(recent) == 20
    assert [o["kind"] for o in recent[:2]] == ["start", "stop"]


async def test_page_is_local_only_without_a_token(make_client, config_data, engine, tmp_path) -> None:
    config_data["auth"] = {"local_networks": ["127.0.0.1/32"]}
    client = await make_client(config_data)
    local = await client.get("/")
    assert local.status == 200 and "text/html" in local.headers["Content-Type"]
    url = client.make_url("/")
    async with remote_session() as remote:
        async with remote.get(url) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "UNAUTHORIZED"
        secret = (Path(config_data["state_dir"]) / "jwt.secret").read_bytes().strip()
        tokens = Tokens(secret, "nekzus", "nekzus")
        for scopes, status in ((["read:*"], 200), (["something:else"], 403)):
            token = tokens.create("ann", scopes, 60)
            async with remote.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == status, scopes
        async with remote.get(url, headers={"Authorization": "Bearer not-a-token"}) as resp:
            assert resp.status == 401


class _Sections(HTMLParser):
    """Collects the text of each <section id=...> and the attributes of marked rows."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.marks: list[dict[str, str]] = []
        self.meta: list[dict[str, str]] = []
        self.external: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._stack.append(a.get("id", ""))
            self.text.setdefault(a.get("id", ""), "")
        if tag == "meta":
            self.meta.append(a)
        if tag in ("script", "link", "img", "iframe", "object", "embed"):
            self.external.append(tag)
        if any(k.startswith("data-") for k in a):
            self.marks.append(a)

    def handle_endtag(self, tag):
        if tag == "section" and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._stack:
            self.text[self._stack[-1]] += data


async def _chromium(*args: str, timeout: float = 60) -> bytes:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="nkd-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def test_page_rendered_by_headless_chromium(busy_client, engine) -> None:
    client, ids = busy_client, busy_client.ids
    ws = await ws_connect(client)  # one connected WebSocket client
    url = str(client.make_url("/"))
    ARTIFACTS.mkdir(exist_ok=True)
    for scheme in ("light", "dark"):
        shot = ARTIFACTS / f"status-page-{scheme}.png"
        shot.unlink(missing_ok=True)
        await _chromium(f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars",
                        f"--blink-settings=preferredColorScheme={0 if scheme == 'dark' else 1}", url)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    light, dark = ((ARTIFACTS / f"status-page-{s}.png").read_bytes() for s in ("light", "dark"))
    assert light != dark, "prefers-color-scheme: dark must change the page"
    dom = (await _chromium("--dump-dom", url)).decode()
    page = _Sections()
    page.feed(dom)

    assert {"runtimes", "containers", "clients", "rate-limit", "apps", "operations"} <= set(page.text)
    assert page.external == [], "the page must not load anything but itself"
    assert any(m.get("http-equiv") == "refresh" and m.get("content") == "10" for m in page.meta)
    engine_version = engine.api_json("GET", "/version")["Version"]
    assert "docker" in page.text["runtimes"] and engine_version in page.text["runtimes"]
    assert "yes" in page.text["runtimes"] and " ms" in page.text["runtimes"]
    states = {m["data-state"] for m in page.marks if "data-state" in m}
    assert states == {"running", "exited"}
    assert "(3)" in page.text["containers"]
    apps = [m["data-app"] for m in page.marks if "data-app" in m]
    assert apps == ["grafana", "media"]
    assert "Media <server>" in page.text["apps"]  # escaped in HTML, shown as typed
    linked = {m["data-container"] for m in page.marks if "data-container" in m}
    assert linked == {ids["web"], ids["db"]}  # the unlinked container is not listed under an app
    assert "unhealthy" in page.text["apps"]
    assert "stop" in page.text["operations"] and "success" in page.text["operations"]
    assert ids["db"] in page.text["operations"]
    assert re.search(r'id="ws-clients">\s*1\s+<span[^>]*>\(1 authenticated\)', dom), page.text["clients"]
    assert re.search(r'id="log-streams">\s*(0|—)\s*<', dom), page.text["clients"]
    assert "Requests refused (429)" in page.text["rate-limit"]
    await ws.close()
    # The page itself never runs JavaScript and works without it.
    assert "<script" not in (await (await client.get("/")).text())
