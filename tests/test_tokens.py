"""Tokens (issue 12, item 10): what ``token create`` refuses, revocation by subject and by id, and secret
rotation, each done with the real CLI (a subprocess) while the real daemon app runs against the real dockerd.

The daemon must see the change without a restart: on HTTP (401) and on open WebSocket sessions (a clear
message, then close 1008). Remote callers connect from 127.0.0.2 while only 127.0.0.1 is local.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml
from aiohttp import WSMsgType

from nekzusd import revocation
from tests.harness.app import remote_config, remote_session

ROOT = Path(__file__).resolve().parent.parent


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nekzusd", "token", *args, "--config", str(config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def config_file(config_data: dict[str, Any], tmp_path: Path) -> Path:
    remote_config(config_data)
    path = tmp_path / "nekzusd.yaml"
    path.write_text(yaml.safe_dump(config_data))
    return path


def create(config_path: Path, subject: str, *scopes: str, ttl: str = "1h") -> dict[str, Any]:
    args = ["create", "--subject", subject, "--ttl", ttl, "--json"]
    for scope in scopes or ("read:*",):
        args += ["--scope", scope]
    result = cli(config_path, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
async def daemon(remote_client, config_data, config_file):
    """The daemon app (real services, real dockerd), seen from a remote address."""
    return await remote_client(config_data)


async def status_of(client, token: str) -> int:
    async with client.get("/api/v1/containers", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


async def until_status(client, token: str, status: int, timeout: float = 10.0) -> dict[str, Any]:
    """Poll until the token gets ``status`` (the daemon applies file changes within about a second)."""
    async with asyncio.timeout(timeout):
        while True:
            async with client.get("/api/v1/containers", headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status == status:
                    return await resp.json()
            await asyncio.sleep(0.05)


async def session(client, token: str):
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"type": "auth", "data": {"token": token}})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "auth_success", reply
    return ws


async def ended(ws, timeout: float = 10.0) -> dict[str, Any]:
    """The last message before the close (1008 expected)."""
    last: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                break
            last = msg.json()
    assert ws.close_code == 1008, (ws.close_code, last)
    return last


async def alive(ws) -> None:
    await ws.send_json({"type": "ping"})
    assert await ws.receive_json(timeout=5) == {"type": "pong"}


# --- token create ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, complaint", [
    (["--scope", "admin"], "unknown scope 'admin'"),
    (["--scope", "read:*", "--scope", "root:*"], "unknown scope 'root:*'"),
    (["--scope", "write"], "unknown scope 'write'"),
    (["--scope", "read:*", "--ttl", "0s"], "invalid ttl"),
    (["--scope", "read:*", "--ttl=-5m"], "invalid ttl"),
    (["--scope", "read:*", "--ttl", "10s"], "too short"),
    (["--scope", "read:*", "--ttl", "366d"], "too long"),
    (["--scope", "read:*", "--ttl", "1000000d"], "too long"),
])
def test_create_refuses_unknown_scopes_and_absurd_lifetimes(config_file, args, complaint):
    result = cli(config_file, "create", "--subject", "phone", *args)
    assert result.returncode == 2 and complaint in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("subject", ["", "two words", "evil\nsubject=admin", "x" * 129, "tab\there"])
def test_create_refuses_subjects_that_would_corrupt_the_log(config_file, subject):
    result = cli(config_file, "create", "--subject", subject, "--scope", "read:*")
    assert result.returncode == 2 and "invalid subject" in result.stderr, result.stderr


def test_create_prints_an_id_and_the_expiry(config_file, config_data):
    made = create(config_file, "phone-of-ann", "read:containers", "write:*", ttl="365d")
    secret = (Path(config_data["state_dir"]) / "jwt.secret").read_bytes().strip()
    claims = jwt.decode(made["token"], secret, algorithms=["HS256"], audience="nekzus")
    assert claims["jti"] == made["id"] and len(made["id"]) >= 16
    assert claims["sub"] == "phone-of-ann" and claims["scopes"] == ["read:containers", "write:*"]
    assert claims["exp"] - claims["iat"] == 365 * 86400
    assert made["expiresAt"].startswith(time.strftime("%Y", time.gmtime(claims["exp"])))
    plain = cli(config_file, "create", "--subject", "phone", "--scope", "read:*")
    assert plain.returncode == 0 and plain.stdout.count(".") == 2  # the token alone on stdout
    assert "token id " in plain.stderr and "revoke" in plain.stderr


# --- revocation ---------------------------------------------------------------------------------------

async def test_revoke_by_subject_on_http_and_open_sessions(daemon, config_file):
    lost = create(config_file, "phone")
    older = create(config_file, "phone")
    other = create(config_file, "tablet")
    assert await status_of(daemon, lost["token"]) == 200
    ws_lost, ws_other = await session(daemon, lost["token"]), await session(daemon, other["token"])
    result = cli(config_file, "revoke", "--subject", "phone")
    assert result.returncode == 0, result.stderr

    last = await ended(ws_lost)
    assert last["type"] == "auth_revoked" and last["data"]["error"] == "TOKEN_REVOKED", last
    body = await until_status(daemon, lost["token"], 401)
    assert body["error"] == "UNAUTHORIZED" and "revoked" in body["message"]
    assert await status_of(daemon, older["token"]) == 401  # every token of the subject
    assert await status_of(daemon, other["token"]) == 200  # not another subject's
    await alive(ws_other)
    fresh = create(config_file, "phone")  # a new token for the found phone, made right after
    assert await status_of(daemon, fresh["token"]) == 200
    ws_fresh = await session(daemon, fresh["token"])
    await alive(ws_fresh)
    await ws_fresh.close()
    await ws_other.close()


async def test_revoke_by_id_on_http_and_open_sessions(daemon, config_file):
    lost, kept = create(config_file, "phone"), create(config_file, "phone")
    ws_lost, ws_kept = await session(daemon, lost["token"]), await session(daemon, kept["token"])
    result = cli(config_file, "revoke", "--id", lost["id"])
    assert result.returncode == 0, result.stderr
    last = await ended(ws_lost)
    assert last["type"] == "auth_revoked" and last["data"]["error"] == "TOKEN_REVOKED", last
    await until_status(daemon, lost["token"], 401)
    assert await status_of(daemon, kept["token"]) == 200
    await alive(ws_kept)
    reconnect = await daemon.ws_connect("/api/v1/ws")  # the revoked token cannot open a new session
    await reconnect.send_json({"type": "auth", "data": {"token": lost["token"]}})
    assert (await reconnect.receive_json(timeout=5))["type"] == "auth_failed"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:  # nor on the upgrade
        await daemon.ws_connect("/api/v1/ws", headers={"Authorization": f"Bearer {lost['token']}"})
    assert info.value.status == 401
    await ws_kept.close()


async def test_a_session_opened_with_a_bearer_header_is_ended_too(daemon, config_file):
    lost = create(config_file, "phone")
    ws = await daemon.ws_connect("/api/v1/ws", headers={"Authorization": f"Bearer {lost['token']}"})
    await alive(ws)
    assert cli(config_file, "revoke", "--id", lost["id"]).returncode == 0
    assert (await ended(ws))["data"]["error"] == "TOKEN_REVOKED"


async def test_rotate_secret_invalidates_every_token(daemon, config_file, config_data):
    secret_path = Path(config_data["state_dir"]) / "jwt.secret"
    tokens = [create(config_file, name) for name in ("phone", "tablet", "script")]
    sessions = [await session(daemon, made["token"]) for made in tokens]
    old = secret_path.read_bytes()
    result = cli(config_file, "rotate-secret")
    assert result.returncode == 0, result.stderr
    assert secret_path.read_bytes() != old and stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    for ws in sessions:
        last = await ended(ws)
        assert last["type"] == "auth_revoked" and last["data"]["error"] == "TOKEN_REVOKED", last
    for made in tokens:
        await until_status(daemon, made["token"], 401)
    fresh = create(config_file, "phone")  # signed with the new secret
    assert await status_of(daemon, fresh["token"]) == 200


async def test_a_broken_revocation_list_refuses_every_token_until_fixed(daemon, config_file, config_data):
    made = create(config_file, "phone")
    path = revocation.path_in(Path(config_data["state_dir"]))
    path.write_text("{not json")
    body = await until_status(daemon, made["token"], 401)
    assert "token files" in body["message"]
    assert cli(config_file, "revoke", "--subject", "x").returncode == 1  # the CLI does not overwrite it
    path.unlink()
    await until_status(daemon, made["token"], 200)


def test_the_list_is_private_and_written_atomically(tmp_path):
    path = revocation.path_in(tmp_path / "state")
    revocation.revoke(path, subject="phone", now=1000)
    revocation.revoke(path, token_id="abc", now=2000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert revocation.load(path) == revocation.RevocationList({"phone": 1000}, {"abc": 2000})
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and
            not p.name.endswith(".lock")] == []  # no temporary file left behind
    later = 2000 + revocation.KEEP_IDS + 1
    assert revocation.revoke(path, subject="phone", now=later).ids == {}  # pruned once no token can be alive


def test_subject_revocation_refuses_tokens_without_iat():
    revoked = revocation.RevocationList({"phone": 1000}, {})
    assert revoked.refuses({"sub": "phone"}) is not None
    assert revoked.refuses({"sub": "phone", "iat": 1000}) is not None
    assert revoked.refuses({"sub": "phone", "iat": 1001}) is None
    assert revoked.refuses({"sub": "tablet", "iat": 5}) is None


async def test_real_daemon_applies_a_revocation_on_sighup(engine, tmp_path):
    """``nekzusd serve`` in a subprocess: revoke, SIGHUP, and the session and the token are refused; the daemon
    keeps serving and logs no traceback."""
    import signal

    from tests.harness.app import base_config
    from tests.harness.daemon import Daemon

    config = base_config(engine, tmp_path / "d" / "state")
    config["auth"] = {"local_networks": ["127.0.0.1/32"]}
    daemon = Daemon(tmp_path / "d", config)
    try:
        await daemon.start()
        made = create(daemon.config_path, "phone")
        async with remote_session() as http:
            headers = {"Authorization": f"Bearer {made['token']}"}
            async with http.get(f"{daemon.base_url}/api/v1/containers", headers=headers) as resp:
                assert resp.status == 200
            ws = await http.ws_connect(f"{daemon.base_url}/api/v1/ws", headers=headers)
            await alive(ws)
            assert cli(daemon.config_path, "revoke", "--subject", "phone").returncode == 0
            await daemon.send(signal.SIGHUP)
            last = await ended(ws)
            assert last["type"] == "auth_revoked" and last["data"]["error"] == "TOKEN_REVOKED"
            async with http.get(f"{daemon.base_url}/api/v1/containers", headers=headers) as resp:
                assert resp.status == 401 and "revoked" in (await resp.json())["message"]
            async with http.get(f"{daemon.base_url}/healthz") as resp:
                assert resp.status == 200
        rc, _ = await daemon.stop()
        assert rc == 0
        assert "Traceback" not in daemon.stderr() and made["token"] not in daemon.stderr()
    finally:
        await daemon.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_files_written_with_sudo_stay_readable_by_the_daemons_user(config_file, config_data):
    """systemd runs the daemon as a dynamic user; an admin runs the CLI with sudo. A root-owned 0600 list or
    secret would be unreadable to the daemon (every token refused), so they go to the state directory's owner."""
    state = Path(config_data["state_dir"])
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(state, 61234, 61234)
    assert cli(config_file, "revoke", "--subject", "phone").returncode == 0
    assert cli(config_file, "rotate-secret").returncode == 0
    for path in (revocation.path_in(state), state / "jwt.secret"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (61234, 61234, 0o600), path
