"""State at rest: the state directory is 0700 and every file in it 0600 (the JWT secret, the TLS key and
certificate, the database with its -wal and -shm), whichever feature creates it first and whatever the
umask (022 here, the usual default), after a real start, writes, a checkpoint and a restart. A loose
directory the daemon owns is tightened; one it cannot make private is refused with a clear message.

The daemon runs as ``nekzusd serve`` in a subprocess (the start-up order of production: TLS first).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from nekzusd.statedir import judge
from tests.harness.app import base_config
from tests.harness.daemon import ROOT, Daemon

UMASK_022 = ("sh", "-c", 'umask 022 && exec "$@"', "sh")


def modes(state: Path) -> dict[str, int]:
    """Every entry of the state directory (and the directory itself, as ".") with its permission bits."""
    found = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in state.iterdir()}
    found["."] = stat.S_IMODE(state.stat().st_mode)
    return found


class TLSDaemon(Daemon):
    """``Daemon`` started under umask 022, with TLS on (the default), as the service would be."""

    prefix = UMASK_022

    async def start(self, timeout: float = 30.0) -> None:
        await super().start(timeout)


def serve_config(engine, state: Path) -> dict:
    data = base_config(engine, state)
    data["server"] = {"listen": "127.0.0.1:0"}  # tls: auto
    return data


async def approve(daemon: Daemon, app_id: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon.base_url}/api/v1/apps", ssl=False,
                             json={"id": app_id, "name": app_id, "containers": ["web"]}) as resp:
            assert resp.status == 201, await resp.text()


async def test_every_file_is_private_after_start_writes_checkpoint_and_restart(engine, tmp_path):
    state = tmp_path / "state"
    daemon = TLSDaemon(tmp_path / "d", serve_config(engine, state))
    await daemon.start()
    try:
        for i in range(20):
            await approve(daemon, f"app-{i}")
        seen = modes(state)
        assert {"nekzusd.db", "nekzusd.db-wal", "nekzusd.db-shm", "jwt.secret", "tls.key", "tls.crt"} <= set(seen)
        assert seen == {**{name: 0o600 for name in seen}, ".": 0o700}, seen

        with sqlite3.connect(state / "nekzusd.db") as db:  # a checkpoint folds the WAL back into the file
            assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        await approve(daemon, "after-checkpoint")
        assert modes(state) == {**{name: 0o600 for name in modes(state)}, ".": 0o700}
        rc, _ = await daemon.stop()
        assert rc == 0
    finally:
        await daemon.close()

    again = TLSDaemon(tmp_path / "d2", serve_config(engine, state))
    await again.start()
    try:
        await approve(again, "after-restart")
        seen = modes(state)
        assert "nekzusd.db-wal" in seen and seen == {**{name: 0o600 for name in seen}, ".": 0o700}, seen
    finally:
        await again.close()
    assert "tightened" not in daemon.stderr() + again.stderr()  # nothing was ever loose


def test_token_create_first_makes_the_directory_private(engine, tmp_path):
    """``nekzusd token create`` before the daemon ever ran: it creates the state dir and the secret."""
    state = tmp_path / "state"
    config = tmp_path / "nekzusd.yaml"
    config.write_text(yaml.safe_dump(base_config(engine, state)))
    out = subprocess.run([*UMASK_022, sys.executable, "-m", "nekzusd", "token", "create", "--config", str(config),
                          "--subject", "phone", "--scope", "read:*"], cwd=ROOT, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert modes(state) == {"jwt.secret": 0o600, ".": 0o700}


async def test_a_loose_state_directory_of_ours_is_tightened(engine, tmp_path):
    """What an older version (or systemd's StateDirectory= default, 0755) left behind."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    for name, data in (("jwt.secret", b"s" * 96), ("nekzusd.db", b""), ("nekzusd.db-wal", b""),
                       ("nekzusd.db-shm", b"")):
        (state / name).write_bytes(data)
        os.chmod(state / name, 0o644)
    daemon = TLSDaemon(tmp_path / "d", serve_config(engine, state))
    await daemon.start()
    try:
        await approve(daemon, "written")
        seen = modes(state)
        assert seen == {**{name: 0o600 for name in seen}, ".": 0o700}, seen
        assert "state directory" in daemon.stderr() and "tightened to 700" in daemon.stderr()
    finally:
        await daemon.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_state_directory_owned_by_someone_else_is_refused(engine, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # nobody: could replace the secret and mint tokens
    config = tmp_path / "nekzusd.yaml"
    config.write_text(yaml.safe_dump(serve_config(engine, state)))
    out = subprocess.run([*UMASK_022, sys.executable, "-m", "nekzusd", "serve", "--config", str(config)],
                         cwd=ROOT, capture_output=True, timeout=60)
    err = out.stderr.decode()
    assert out.returncode == 1
    assert f"state directory {state} is owned by uid 65534" in err and "chmod 700" in err
    assert "Traceback" not in err
    assert list(state.iterdir()) == []  # nothing written into it


@pytest.mark.parametrize("where, words", [
    ("file/state", "cannot create state directory"),  # its parent is a regular file
    ("file", "is not a directory"),
])
def test_an_unusable_state_directory_is_one_clear_line(engine, tmp_path, where, words):
    (tmp_path / "file").write_text("not a directory")
    config = tmp_path / "nekzusd.yaml"
    config.write_text(yaml.safe_dump(serve_config(engine, tmp_path / where)))
    out = subprocess.run([sys.executable, "-m", "nekzusd", "serve", "--config", str(config)],
                         cwd=ROOT, capture_output=True, timeout=60)
    err = out.stderr.decode()
    assert out.returncode == 1 and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("owner, mode, euid, verdict", [
    (1000, 0o700, 1000, "ok"),
    (1000, 0o755, 1000, "tighten"),
    (0, 0o777, 0, "tighten"),
    (0, 0o700, 1000, "ok"),        # made by root for the service, nothing for others
    (0, 0o770, 1000, "warn"),      # root:nekzusd 0770, the administrator's choice
    (0, 0o755, 1000, "refuse"),    # others may read, and nekzusd cannot change that
    (0, 0o703, 1000, "refuse"),
    (1001, 0o700, 1000, "refuse"),  # another user's: could replace the secret
    (1000, 0o700, 0, "refuse"),
])
def test_what_is_done_with_an_existing_directory(owner, mode, euid, verdict):
    assert judge(owner, mode, euid) == verdict
