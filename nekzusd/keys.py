"""Typed application keys: the daemon's services, reachable from any handler through request.app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .apps import Apps, HealthTracker
from .auth import Tokens
from .bulk import Bulk
from .config import Config
from .containernets import ContainerNetworks
from .descriptors import Budget
from .hub import Hub
from .operations import Operations
from .ratelimit import RateLimiter
from .revocation import TokenFiles
from .runtimes import Runtimes
from .state_changes import StateChanges
from .store import Store

if TYPE_CHECKING:
    # These modules read keys from this one at import time: the type is named for mypy only.
    from .livestats import LiveStats
    from .logs import LogStreams
    from .metrics import Metrics
    from .status import RuntimeProbe

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
APPS = web.AppKey("apps", Apps)
RUNTIMES = web.AppKey("runtimes", Runtimes)
HUB = web.AppKey("hub", Hub)
HEALTH = web.AppKey("health", HealthTracker)
OPERATIONS = web.AppKey("operations", Operations)
TOKENS = web.AppKey("tokens", Tokens)
TOKEN_FILES = web.AppKey("token_files", TokenFiles)  # watches the secret and the revocation list
STARTED_AT = web.AppKey("started_at", float)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
PROBE: web.AppKey[RuntimeProbe] = web.AppKey("probe")
BULK = web.AppKey("bulk", Bulk)  # holds the one semaphore of all bulk and batch requests
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
LOG_STREAMS: web.AppKey[LogStreams] = web.AppKey("log_streams")  # .lines_sent, .lines_dropped, .active
STATE_CHANGES = web.AppKey("state_changes", StateChanges)  # owns the engines' event streams
BUDGET = web.AppKey("budget", Budget)  # descriptors: each consumer's share of the open files limit
LIVE_STATS: web.AppKey[LiveStats] = web.AppKey("live_stats")  # WebSocket stats watches: .active, .tasks, .sent
CONTAINER_NETWORKS = web.AppKey("container_networks", ContainerNetworks)  # addresses that are the host's containers
