"""SQLite storage of apps approved through the API.

sqlite3 blocks, so every statement runs on one dedicated worker thread; WAL with synchronous=FULL
means an acknowledged approval survives `kill -9` and power loss.

The database is created 0600 before SQLite opens it: SQLite gives the -wal and -shm files it creates the
database file's mode, so all three stay private without touching the process-wide umask (which other
threads share). Files left looser by an older version are tightened at open.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .statedir import create_private, ensure_state_dir, tighten_file

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    containers TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL
)
"""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nekzusd-store")
        self._db: sqlite3.Connection | None = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        def connect() -> None:
            ensure_state_dir(self.path.parent)
            create_private(self.path)
            for suffix in ("-wal", "-shm"):
                tighten_file(self.path.with_name(self.path.name + suffix))
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            self._db = db
        await self._run(connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def apps(self) -> list[dict[str, Any]]:
        def query() -> list[dict[str, Any]]:
            rows = self._conn.execute("SELECT id, name, containers FROM apps ORDER BY created, id").fetchall()
            return [{"id": r[0], "name": r[1], "containers": json.loads(r[2])} for r in rows]
        return await self._run(query)

    async def add_app(self, app_id: str, name: str, containers: list[str], created: float) -> bool:
        """Insert an app; False if the id exists already."""
        def insert() -> bool:
            try:
                self._conn.execute("INSERT INTO apps (id, name, containers, created) VALUES (?, ?, ?, ?)",
                                 (app_id, name, json.dumps(containers), created))
            except sqlite3.IntegrityError:
                return False
            return True
        return await self._run(insert)

    async def delete_app(self, app_id: str) -> bool:
        def delete() -> bool:
            return self._conn.execute("DELETE FROM apps WHERE id = ?", (app_id,)).rowcount > 0
        return await self._run(delete)
