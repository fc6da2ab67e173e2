"""File descriptors: raise the soft limit at start, and share what there is between clients and engines.

Every client connection, engine connection, log stream and database file costs one descriptor. When they
run out, ``accept()`` fails and, worse, a call to the engine fails to connect and looks like the engine is
down. So the daemon decides up front how many descriptors each consumer may hold (``Budget``), sized from
the limit it actually got: the documented caps (1,024 log streams, 100 pooled engine connections) apply
when there is room for them, and shrink with the limit otherwise, so that the cap is what a client meets
(a clear error), never an exhausted table.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Descriptors kept out of every share: stderr, epoll, the signal pipe, SQLite's database, WAL and shm, the
# state files, the listening sockets, the Kubernetes client, the threads' files, and headroom for a burst
# of accepts that are refused right away.
RESERVE = 64
ENGINE_POOL_MAX = 100  # aiohttp's default pool size, the engine pool's size when descriptors allow
LOG_STREAMS_MAX = 1024  # the documented daemon-wide cap on followed log streams
_CEILING = 1 << 20  # never ask for more than Linux's default fs.nr_open, whatever "unlimited" says


def raise_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the 1,024 soft default is a relic of select());
    return (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. a hard limit above fs.nr_open
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def _in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 16


@dataclass(frozen=True)
class Budget:
    """How many descriptors each consumer may hold.

    ``connections``: client connections from peers the per-client cap applies to (exempt peers, the host
    itself and trusted proxies, live on the reserve); ``engine_pool``: the pool of short engine calls;
    ``log_streams``: followed log streams, daemon-wide (each holds an engine connection). The engine pool is
    applied on a unix socket (see ``DockerRuntime.open``)."""

    limit: int
    connections: int
    engine_pool: int
    log_streams: int

    @classmethod
    def for_limit(cls, limit: int, in_use: int = 0) -> Budget:
        spare = max(limit - in_use - RESERVE, 16)
        engine_pool = max(4, min(ENGINE_POOL_MAX, spare // 8))
        log_streams = max(4, min(LOG_STREAMS_MAX, spare // 4))
        # Sampler streams (one per container whose stats are watched) and the event stream come out of
        # the connections' share: an eighth of it, at least.
        connections = max(8, (spare - engine_pool - log_streams) * 7 // 8)
        return cls(limit, connections, engine_pool, log_streams)

    @classmethod
    def current(cls) -> Budget:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = _CEILING if soft == resource.RLIM_INFINITY else soft
        return cls.for_limit(limit, _in_use())
