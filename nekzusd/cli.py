"""The ``nekzusd`` command: serve, check-config, token create."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys

from aiohttp import web

from . import __version__, config as config_mod, descriptors, listen, systemd
from .auth import Tokens, load_or_create_secret
from .keys import APPS, HEALTH
from .statedir import StateDirError, ensure_state_dir
from .systemd import Watchdog

log = logging.getLogger("nekzusd")

BACKLOG = 512  # pending connections the kernel queues while the loop is busy
HANDLER_GRACE = 2.0  # seconds requests still running at shutdown get, after operations were drained
_TTL_RE = re.compile(r"(\d+)([smhd])")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """"90s", "15m", "12h", "30d", or "1d12h" → seconds."""
    pos, total = 0, 0
    for match in _TTL_RE.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _TTL_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise argparse.ArgumentTypeError(f"invalid ttl {text!r}: use e.g. 30m, 12h, 7d")
    return total


def _load_config(path: str) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"{path}: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from None


async def reload_config_apps(app: web.Application, path: str) -> bool:
    """SIGHUP: take the apps list from the config file again, keeping every connection. Other keys need a
    restart. A broken file changes nothing (and says why)."""
    try:
        config = await asyncio.to_thread(config_mod.load, path)
    except config_mod.ConfigError as exc:
        log.error("reload: %s is invalid, keeping the current apps: %s", path, "; ".join(exc.problems))
        return False
    app[APPS].set_config_apps(config.apps)
    app[HEALTH].poke()
    log.info("reload: %d apps from %s", len(config.apps), path)
    return True


async def _serve(config: config_mod.Config, config_path: str) -> None:
    from .app import create_app
    from .descriptors import Budget
    from .tls import ssl_context

    loop = asyncio.get_running_loop()
    listen.install_loop_exception_handler(loop)
    ssl = await asyncio.to_thread(ssl_context, config)
    server = config.server
    host, port = server.host_port
    socks = listen.open_sockets(host, port, BACKLOG)  # before the app opens anything: a busy port fails fast
    budget = Budget.current()
    app = create_app(config, budget)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=HANDLER_GRACE, handle_signals=False,
                           **listen.runner_kwargs(server.keepalive_timeout))
    await runner.setup()
    assert runner.server is not None
    limits = listen.ConnectionLimits(server.max_connections_per_client, budget.connections,
                                     server.connection_cap_exempt + config.auth.trusted_proxies)
    listener = listen.Listener(socks, runner.server, limits, head_timeout=server.head_timeout,
                               ssl_context=ssl, backlog=BACKLOG)
    watchdog: Watchdog | None = None
    reloads: set[asyncio.Task[bool]] = set()
    try:
        listener.start()
        scheme = "https" if ssl else "http"
        where = ", ".join(f"{scheme}://{h}:{p}" if ":" not in h else f"{scheme}://[{h}]:{p}"
                          for h, p in listener.addresses)
        log.info("nekzusd %s listening on %s", __version__, where)
        log.info("open files limit %d: up to %d capped client connections, %d log streams, %d pooled engine "
                 "connections", budget.limit, budget.connections, budget.log_streams, budget.engine_pool)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            task = asyncio.create_task(reload_config_apps(app, config_path), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        systemd.notify(f"READY=1\nSTATUS=listening on {where}")
        interval = systemd.watchdog_interval()
        if interval is not None:
            watchdog = Watchdog(interval)
            watchdog.start()
        await stop.wait()
        log.info("shutting down")
        systemd.notify("STOPPING=1\nSTATUS=shutting down")
    finally:
        await asyncio.gather(*reloads, return_exceptions=True)
        await listener.close()
        await runner.cleanup()
        if watchdog is not None:  # pings go on while shutting down, which may take a few seconds
            await watchdog.stop()
    log.info("stopped")


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    descriptors.raise_limit()
    try:
        asyncio.run(_serve(config, args.config))
    except StateDirError as exc:
        print(f"nekzusd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"nekzusd: cannot serve on {config.server.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    _load_config(args.config)
    print(f"{args.config}: OK")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    try:
        if config.jwt_secret_path.parent == config.state_path:
            ensure_state_dir(config.state_path)
        secret = load_or_create_secret(config.jwt_secret_path)
    except StateDirError as exc:
        print(f"nekzusd: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"nekzusd: cannot read the JWT secret: {exc}", file=sys.stderr)
        return 1
    tokens = Tokens(secret, config.auth.issuer, config.auth.audience)
    print(tokens.create(args.subject, args.scope, args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nekzusd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nekzusd {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", default=config_mod.default_path(),
                       help="config file (default: $NEKZUSD_CONFIG or /etc/nekzusd/nekzusd.yaml)")
        return p

    with_config(sub.add_parser("serve", help="run the daemon")).set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check-config", help="validate the config file")).set_defaults(
        func=cmd_check_config)
    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = with_config(token_sub.add_parser("create", help="print a signed JWT"))
    create.add_argument("--subject", required=True)
    create.add_argument("--scope", action="append", required=True,
                        help="read:containers, write:containers, read:*, write:* or *; repeatable")
    create.add_argument("--ttl", type=parse_ttl, default=parse_ttl("12h"))
    create.set_defaults(func=cmd_token_create)
    return parser


_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """For stderr read by journald: a ``<priority>`` prefix carries the level; journald adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def _stderr_is_journal() -> bool:
    """systemd sets $JOURNAL_STREAM to the device:inode of the journal stream it gave us."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
