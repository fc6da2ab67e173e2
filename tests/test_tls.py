"""TLS: a self-signed certificate made once into state_dir (tls.mode auto), or the user's own files."""

from __future__ import annotations

import os
import ssl
import stat

import aiohttp
from aiohttp import web
from cryptography import x509

from nekzusd import config as config_mod
from nekzusd.app import create_app
from nekzusd.tls import ensure_self_signed, ssl_context
from tests.harness.app import base_config


def test_certificate_is_made_once_with_a_private_key_file(tmp_path):
    cert, key = ensure_self_signed(tmp_path)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    first = cert.read_bytes(), key.read_bytes()
    assert ensure_self_signed(tmp_path) == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == first  # reused, not regenerated
    parsed = x509.load_pem_x509_certificate(first[0])
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}


async def _serve_and_get(config: config_mod.Config, trust: str) -> int:
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(config))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        client_ctx = ssl.create_default_context(cafile=trust)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/api/v1/apps", ssl=client_ctx) as response:
                return response.status
    finally:
        await runner.cleanup()


async def test_https_by_default_with_the_generated_certificate(engine, tmp_path):
    data = base_config(engine, tmp_path / "state")
    data["server"] = {"listen": "127.0.0.1:0"}  # tls: auto is the default
    config = config_mod.parse(data, env={})
    assert config.server.tls.mode == "auto"
    assert await _serve_and_get(config, str(tmp_path / "state" / "tls.crt")) == 200


async def test_https_with_the_users_own_files(engine, tmp_path):
    cert, key = ensure_self_signed(tmp_path / "mine")
    data = base_config(engine, tmp_path / "state")
    data["server"] = {"listen": "127.0.0.1:0", "tls": {"mode": "files", "cert": str(cert), "key": str(key)}}
    assert await _serve_and_get(config_mod.parse(data, env={}), str(cert)) == 200
    assert not (tmp_path / "state" / "tls.crt").exists()
