"""Revoked tokens, and how a running daemon keeps up with the token files.

A JWT cannot be taken back once issued: until it expires, anyone holding it (a lost phone) is let in.
``nekzusd token revoke`` writes a small list next to the secret, ``revoked.json`` in the state directory
(mode 0600, replaced atomically):

- by subject: every token of that subject issued at or before the revocation (its ``iat``) is refused;
  this works for tokens that carry no id (made before ids existed). A token without ``iat`` of a revoked
  subject is refused too (it cannot show it is newer).
- by id: the token whose ``jti`` is given. The entry is kept for the longest lifetime a token may have
  (``auth.MAX_TTL``), after which no token it could name is still valid, and is then pruned.

``TokenFiles`` is the daemon's side: once a second it stats the secret and the list (in a worker thread,
so a slow disk never stalls the loop; a stat costs microseconds, a thread hop per second nothing), and
on SIGHUP at once. When either file changed, it is read again, the daemon's ``Tokens`` take the new state
(no restart), and the open WebSocket sessions are checked again (``on_change``). A file that cannot be
read or parsed makes the daemon refuse every token until it is fixed: failing open would let a revoked
token back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .statedir import give_to_directory_owner, write_private

log = logging.getLogger(__name__)

FILE_NAME = "revoked.json"
POLL_INTERVAL = 1.0  # seconds between two looks at the files (SIGHUP looks at once)
KEEP_IDS = 366 * 86400  # an id entry outlives every token it can name (auth.MAX_TTL, plus a day)


def path_in(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


@dataclass
class RevocationList:
    """subjects: subject → second (epoch) at or before which its tokens were issued are refused;
    ids: jti → second it was revoked at."""

    subjects: dict[str, int] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def refuses(self, claims: dict[str, Any]) -> str | None:
        """Why the token with these (verified) claims is revoked, or None."""
        jti = claims.get("jti")
        if isinstance(jti, str) and jti in self.ids:
            return "Token was revoked"
        subject = str(claims.get("sub", ""))
        if subject in self.subjects:
            iat = claims.get("iat")
            if not isinstance(iat, (int, float)) or isinstance(iat, bool) or iat <= self.subjects[subject]:
                return "Token was revoked (every token of its subject issued before the revocation)"
        return None

    def prune(self, now: float) -> None:
        self.ids = {jti: at for jti, at in self.ids.items() if at > now - KEEP_IDS}

    def to_json(self) -> str:
        return json.dumps({"version": 1, "subjects": self.subjects, "ids": self.ids}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RevocationList:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a version 1 revocation list")
        lists = []
        for name in ("subjects", "ids"):
            entries = data.get(name, {})
            if not isinstance(entries, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                    for k, v in entries.items()):
                raise ValueError(f"{name} must map strings to integer times")
            lists.append(dict(entries))
        return cls(*lists)


def load(path: Path) -> RevocationList:
    """The list in ``path`` (empty when there is none); ValueError/OSError when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RevocationList()
    return RevocationList.from_json(text)


def save(path: Path, revoked: RevocationList) -> None:
    """Write atomically, mode 0600, owned by the state directory's owner (``statedir``)."""
    write_private(path, (revoked.to_json() + "\n").encode())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two ``token revoke`` at once must not lose one another's entry."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        give_to_directory_owner(fd, path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def revoke(path: Path, subject: str | None = None, token_id: str | None = None,
           now: float | None = None) -> RevocationList:
    """Add a subject and/or a token id to the list in ``path`` (read, change, write under a lock)."""
    now = time.time() if now is None else now
    with _locked(path):
        revoked = load(path)
        if subject is not None:
            revoked.subjects[subject] = int(now)
        if token_id is not None:
            revoked.ids[token_id] = int(now)
        revoked.prune(now)
        save(path, revoked)
    return revoked


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is rewritten or replaced (inode, size, mtime, ctime); None if absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class TokenFiles:
    """Keeps the daemon's ``Tokens`` in step with the secret file and the revocation list.

    ``tokens`` needs ``use_secret(bytes)``, ``use_revocations(RevocationList)`` and ``refuse_all(reason)``;
    ``load_secret(path)`` reads (or makes) the secret. ``on_change`` runs after every change that was
    applied (the WebSocket sessions are verified again there).
    """

    def __init__(self, tokens: Any, secret_path: Path, revocation_path: Path,
                 load_secret: Callable[[Path], bytes], on_change: Callable[[], object] | None = None) -> None:
        self.tokens = tokens
        self.secret_path = secret_path
        self.revocation_path = revocation_path
        self.on_change = on_change
        self._load_secret = load_secret
        self._seen: tuple[Any, Any] | None = None
        self._secret_problem: str | None = None  # kept until the secret is read again successfully
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the list once (the secret was read already), then watch."""
        self._seen = await asyncio.to_thread(self._signatures)
        await self._apply(secret=False)
        self._task = asyncio.create_task(self._run(), name="token-files")

    def poke(self) -> None:
        """SIGHUP: look now."""
        self._poke.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _signatures(self) -> tuple[Any, Any]:
        return _signature(self.secret_path), _signature(self.revocation_path)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._poke.wait()
            self._poke.clear()
            try:
                await self.check()
            except Exception:  # never let the watcher die: it is what makes revocations take effect
                log.exception("checking the token files failed")

    async def check(self) -> bool:
        """Apply whatever changed since the last look; True if something did."""
        seen = await asyncio.to_thread(self._signatures)
        if seen == self._seen:
            return False
        secret_changed = self._seen is None or seen[0] != self._seen[0]
        self._seen = seen
        await self._apply(secret=secret_changed)
        if self.on_change is not None:
            self.on_change()
        return True

    async def _apply(self, secret: bool) -> None:
        if secret:
            try:
                self.tokens.use_secret(await asyncio.to_thread(self._load_secret, self.secret_path))
                self._secret_problem = None
                log.info("token secret %s loaded again", self.secret_path)
            except (OSError, ValueError) as exc:
                self._secret_problem = f"the JWT secret cannot be used: {exc}"
        problems = [self._secret_problem] if self._secret_problem else []
        try:
            revoked = await asyncio.to_thread(load, self.revocation_path)
            self.tokens.use_revocations(revoked)
            if revoked.subjects or revoked.ids:
                log.info("revocation list %s: %d subjects, %d token ids",
                         self.revocation_path, len(revoked.subjects), len(revoked.ids))
        except (OSError, ValueError) as exc:
            problems.append(f"{self.revocation_path} cannot be read ({exc}); fix or remove it")
        if problems:
            reason = "; ".join(problems)
            log.error("every token is refused until this is fixed: %s", reason)
            self.tokens.refuse_all(reason)
        else:
            self.tokens.refuse_all(None)
