"""The application factory: one aiohttp app with the daemon's services in typed keys."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from aiohttp import web

from . import accesslog, auth, httplogs, livestats, logs, ratelimit, realip, revocation, validation, ws
from .apps import Apps, HealthTracker
from .bulk import Bulk
from .config import Config
from .containernets import ContainerNetworks
from .descriptors import Budget
from .errors import error_middleware
from .hub import Hub
from .keys import (APPS, BUDGET, BULK, CONFIG, CONTAINER_NETWORKS, HEALTH, HUB, LIVE_STATS, LOG_STREAMS, METRICS,
                   OPERATIONS, PROBE, RATE_LIMITER, RUNTIMES, STARTED_AT, STATE_CHANGES, STORE, TOKEN_FILES, TOKENS)
from .logs import LogStreams
from .metrics import Metrics
from .operations import Operations
from .routes import setup_routes
from .runtimes import Runtimes
from .state_changes import StateChanges
from .statedir import ensure_state_dir
from .status import RuntimeProbe
from .store import Store
from .views.status import setup_templates

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0  # seconds in-flight operations may take to finish at shutdown


async def services(app: web.Application) -> AsyncIterator[None]:
    """Open everything the handlers use; close it all, in reverse, at shutdown. Each close is registered
    as soon as its open succeeded, so that a step failing at start still closes what came before it."""
    config = app[CONFIG]
    await asyncio.to_thread(ensure_state_dir, config.state_path)  # 0700 before anything is written there
    app[TOKENS] = await auth.load_tokens(config)
    async with AsyncExitStack() as stack:
        store = app[STORE] = Store(config.state_path / "nekzusd.db")
        await store.open()
        stack.push_async_callback(store.close)
        apps = app[APPS] = Apps(config.apps, store, config.max_api_apps)
        await apps.load()
        budget = app[BUDGET]
        runtimes = app[RUNTIMES] = Runtimes(config.runtimes, engine_pool=budget.engine_pool)
        await runtimes.open()
        stack.push_async_callback(runtimes.close)
        networks = app[CONTAINER_NETWORKS] = ContainerNetworks(
            runtimes.all(), enabled=not config.auth.trust_container_networks)
        await networks.start()  # before the first request: a container is never taken for a local client
        app[RATE_LIMITER].not_local = networks.contains  # nor exempt from the rate limits
        stack.push_async_callback(networks.stop)
        app[PROBE] = RuntimeProbe(runtimes)
        hub = app[HUB] = Hub()
        log_streams = app[LOG_STREAMS] = LogStreams(max_subscriptions=budget.log_streams)
        stack.push_async_callback(log_streams.close)
        live_stats = app[LIVE_STATS] = livestats.LiveStats(runtimes, apps, config.live_stats)
        stack.push_async_callback(live_stats.close)
        health = app[HEALTH] = HealthTracker(apps, runtimes.all(), hub)
        app[OPERATIONS] = Operations(hub)
        app[OPERATIONS].listeners += [app[METRICS].observe_operation, lambda _operation: health.poke()]
        app[BULK] = Bulk(app[OPERATIONS], config.bulk.concurrency)
        stack.push_async_callback(health.stop)
        def changed() -> None:  # a listing that changed something: app health, and maybe a new network
            health.poke()
            networks.poke()

        state = app[STATE_CHANGES] = StateChanges(runtimes.all(), hub, on_flush=changed)
        state.start()
        stack.push_async_callback(state.stop)
        token_files = app[TOKEN_FILES] = revocation.TokenFiles(
            app[TOKENS], config.jwt_secret_path, revocation.path_in(config.state_path), auth.load_or_create_secret,
            on_change=lambda: (ws.recheck_sessions(hub, app[TOKENS]),
                               httplogs.recheck(log_streams, app[TOKENS].verify, auth.TokenRefused)))
        await token_files.start()
        stack.push_async_callback(token_files.stop)
        yield


async def _on_shutdown(app: web.Application) -> None:
    """Before the services close: finish in-flight operations (bounded), then say goodbye to clients."""
    await app[OPERATIONS].drain(SHUTDOWN_GRACE)
    await app[HUB].close_all(code=1001)
    await app[LOG_STREAMS].end_own()  # HTTP log streams, before aiohttp waits for its handlers


def create_app(config: Config, budget: Budget | None = None) -> web.Application:
    """``budget``: the descriptors' shares (by default from the current open files limit)."""
    app = web.Application(middlewares=[accesslog.observe, error_middleware], client_max_size=validation.MAX_BODY)
    app[CONFIG] = config
    app[BUDGET] = budget or Budget.current()
    app[STARTED_AT] = time.time()
    app[METRICS] = Metrics(app)
    setup_templates(app)
    realip.setup(app, config.auth.trusted_proxies)  # then rate limit, then auth: they use the address
    limiter = app[RATE_LIMITER] = ratelimit.RateLimiter(config.rate_limit, config.auth.local_networks)
    ratelimit.setup(app, limiter)
    validation.setup(app)  # bodies over the limit refused before anyone reads them
    auth.setup(app, config.auth, config.server.allowed_hosts)
    ws.setup(app, logs.MESSAGE_TYPES, livestats.MESSAGE_TYPES)
    app.cleanup_ctx.append(services)
    app.on_shutdown.append(_on_shutdown)
    setup_routes(app)
    return app
