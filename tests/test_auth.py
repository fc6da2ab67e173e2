"""JWT verification, scopes, the secret file, and what must never reach a log (docs/api.md, issue 6)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from pathlib import Path

import jwt
import pytest

from nekzusd.auth import LEEWAY, Principal, Tokens, load_or_create_secret
from nekzusd.errors import ApiError

SECRET = b"s" * 48
TOKENS = Tokens(SECRET, "nekzus", "nekzus")


@pytest.mark.parametrize("scopes, read, write", [
    ([], False, False),
    (["read:containers"], True, False),
    (["read:*"], True, False),
    (["write:containers"], True, True),  # a write scope implies read
    (["write:*"], True, True),
    (["*"], True, True),
    (["read:apps", "write:other"], False, False),
    (["READ:containers"], False, False),  # scopes are exact strings
])
def test_scope_rules(scopes, read, write):
    principal = Principal("x", frozenset(scopes), local=False)
    assert (principal.allows("read"), principal.allows("write")) == (read, write)


def encode(**claims) -> str:
    now = int(time.time())
    base = {"sub": "alice", "scopes": ["read:containers"], "iss": "nekzus", "aud": "nekzus", "exp": now + 60}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def refused(token: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        TOKENS.verify(token)
    assert info.value.status == 401 and info.value.code == "UNAUTHORIZED"
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer ")
    return info.value


def test_round_trip():
    principal = TOKENS.verify(TOKENS.create("phone", ["write:containers"], 60))
    assert principal == Principal("phone", frozenset({"write:containers"}), local=False)


def test_leeway_is_at_most_thirty_seconds():
    assert LEEWAY <= 30
    now = int(time.time())
    assert TOKENS.verify(encode(exp=now - LEEWAY + 5)).subject == "alice"
    assert refused(encode(exp=now - LEEWAY - 5)).message == "Token expired"
    assert "not valid yet" in refused(encode(nbf=now + LEEWAY + 30)).message


@pytest.mark.parametrize("claims, words", [
    ({"iss": "other"}, "issuer"),
    ({"aud": "other"}, "audience"),
    ({"exp": None}, "exp"),
    ({"scopes": {"read": True}}, "scopes"),
    ({"scopes": [1, 2]}, "scopes"),
])
def test_claims_are_checked(claims, words):
    payload = {"sub": "alice", "scopes": [], "iss": "nekzus", "aud": "nekzus", "exp": int(time.time()) + 60}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    assert words in refused(jwt.encode(payload, SECRET, algorithm="HS256")).message


def test_scopes_as_a_space_separated_string_are_accepted():
    assert TOKENS.verify(encode(scopes="read:containers write:*")).allows("write")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512", "none"])
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the forger's HS512 with our key
def test_only_hs256(algorithm):
    key = None if algorithm == "none" else SECRET
    token = jwt.encode({"sub": "a", "iss": "nekzus", "aud": "nekzus", "exp": int(time.time()) + 60,
                        "scopes": ["*"]}, key, algorithm=algorithm)
    assert "algorithm" in refused(token).message


def test_error_messages_never_echo_the_token():
    token = encode(aud="x" * 40)
    assert "x" * 40 not in refused(token).message
    assert token not in refused(token + "garbage").message


def test_tokens_repr_hides_the_secret():
    assert SECRET.decode() not in repr(TOKENS)


def test_secret_created_0600_once_and_reused(tmp_path):
    path = tmp_path / "state" / "jwt.secret"
    old_umask = os.umask(0o000)  # even with a permissive umask
    try:
        secret = load_or_create_secret(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 32
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["jwt.secret"]  # no temporary file left


def test_concurrent_first_starts_agree_on_one_secret(tmp_path):
    path = tmp_path / "jwt.secret"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8


def test_short_secret_is_refused(tmp_path):
    path = tmp_path / "jwt.secret"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_or_create_secret(path)


def test_lax_permissions_are_tightened_with_a_warning_that_reveals_nothing(tmp_path, caplog):
    path = tmp_path / "jwt.secret"
    path.write_bytes(b"k" * 40)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_or_create_secret(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert "tightened to 600" in caplog.text and "k" * 40 not in caplog.text


async def test_no_token_and_no_secret_in_any_log(remote_client, config_data, engine, caplog):
    """Drive the daemon with good, bad and forged tokens from a remote address, with every logger at
    DEBUG: neither a token nor the secret may appear in any record."""
    caplog.set_level(logging.DEBUG)
    client = await remote_client(config_data)
    secret = load_or_create_secret(Path(config_data["state_dir"]) / "jwt.secret")
    tokens = Tokens(secret, "nekzus", "nekzus")
    now = int(time.time())
    sent = [
        tokens.create("alice", ["*"], 60),
        tokens.create("bob", ["read:containers"], 60),
        tokens.create("carol", ["*"], -120),
        jwt.encode({"sub": "eve", "iss": "nekzus", "aud": "nekzus", "exp": now + 60}, b"w" * 48, "HS256"),
        "not-even-a-jwt-but-secret-looking-0123456789",
    ]
    for token in sent:
        headers = {"Authorization": f"Bearer {token}"}
        for method, path in (("GET", "/api/v1/containers"), ("POST", "/api/v1/containers/nope/start"),
                             ("POST", "/api/v1/apps"), ("GET", "/api/v1/nowhere"), ("GET", "/metrics")):
            async with client.request(method, path, headers=headers, data=b"{bad json") as resp:
                await resp.read()
        async with client.ws_connect("/api/v1/ws") as ws:
            await ws.send_json({"type": "auth", "data": {"token": token}})
            await ws.receive(timeout=5)
    await client.close()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert logged  # the requests were logged at all
    for token in sent:
        assert token not in logged
        for part in token.split(".")[1:]:  # not even the payload or signature alone
            assert part not in logged
    assert secret.decode() not in logged


async def test_cross_site_browser_requests_from_local_addresses_need_a_token(client, engine):
    """A page from another site, open in a browser on the LAN, must not drive the token-less local access."""
    cid = (await asyncio.to_thread(engine.run, "csrf-target", "sleep 100000"))[:12]
    hostile = [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"},
               {"Sec-Fetch-Site": "same-site", "Origin": "https://other.lan"}]
    for headers in hostile:
        response = await client.post(f"/api/v1/containers/{cid}/stop", headers=headers)
        assert response.status == 401, headers
        assert (await response.json())["error"] == "UNAUTHORIZED"
        ws = await client.ws_connect("/api/v1/ws", headers=headers)
        await ws.send_json({"type": "auth", "data": {"token": ""}})
        assert (await ws.receive_json(timeout=5))["type"] == "auth_failed", headers
        await ws.close()
    state = (await asyncio.to_thread(engine.api_json, "GET", f"/containers/{cid}/json"))["State"]
    assert state["Running"] is True  # nothing reached the engine
    same_origin = {"Origin": f"http://{client.server.host}:{client.server.port}", "Sec-Fetch-Site": "same-origin"}
    response = await client.post(f"/api/v1/containers/{cid}/stop?timeout=2", headers=same_origin)
    assert response.status == 202
    response = await client.get("/api/v1/containers", headers={"Origin": same_origin["Origin"]})
    assert response.status == 200
