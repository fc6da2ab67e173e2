"""The ``nekzusd`` command: serve, check-config, token create | revoke | rotate-secret."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import re
import signal
import sys
import time

from aiohttp import web

from . import __version__, config as config_mod, descriptors, listen, revocation, systemd
from .auth import MAX_TTL, MIN_TTL, SCOPES, Tokens, load_or_create_secret, new_token_id, replace_secret
from .keys import APPS, HEALTH, TOKEN_FILES
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
    if total < MIN_TTL:
        raise argparse.ArgumentTypeError(f"ttl {text!r} is too short: at least {MIN_TTL} s")
    if total > MAX_TTL:
        raise argparse.ArgumentTypeError(f"ttl {text!r} is too long: at most {MAX_TTL // 86400}d (a token is a "
                                         "standing credential; make a new one when it expires)")
    return total


def parse_scope(text: str) -> str:
    if text not in SCOPES:
        raise argparse.ArgumentTypeError(f"unknown scope {text!r}: use one of {', '.join(sorted(SCOPES))}")
    return text


_SUBJECT_RE = re.compile(r"[\w.@:+-]{1,128}")


def parse_subject(text: str) -> str:
    """Letters, digits and ``._@:+-``: a subject is written to the request log and shown as a device id."""
    if not _SUBJECT_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid subject {text[:40]!r}: 1 to 128 letters, digits or ._@:+-")
    return text


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
            app[TOKEN_FILES].poke()  # the secret and the revocation list are looked at again at once
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


def _revocations(config: config_mod.Config) -> revocation.RevocationList | None:
    path = revocation.path_in(config.state_path)
    try:
        return revocation.load(path)
    except (OSError, ValueError) as exc:
        print(f"nekzusd: {path} cannot be read ({exc}); fix or remove it first", file=sys.stderr)
        return None


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
    revoked = _revocations(config)
    if revoked is None:
        return 1
    # A subject revoked this very second refuses tokens issued in it (iat is in whole seconds): wait for the
    # next second, so that a token made right after a revocation is not refused with the old ones.
    revoked_at = revoked.subjects.get(args.subject)
    if revoked_at is not None and time.time() < revoked_at + 1:
        time.sleep(revoked_at + 1 - time.time())
    tokens = Tokens(secret, config.auth.issuer, config.auth.audience)
    now = time.time()
    token_id = new_token_id()
    token = tokens.create(args.subject, args.scope, args.ttl, now=now, token_id=token_id)
    expires = datetime.datetime.fromtimestamp(int(now + args.ttl), datetime.UTC).isoformat()
    if args.json:
        print(json.dumps({"token": token, "id": token_id, "subject": args.subject, "scopes": args.scope,
                          "expiresAt": expires}))
    else:
        print(token)
        print(f"token id {token_id} (revoke it alone with: nekzusd token revoke --id {token_id}); "
              f"expires {expires}", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    if args.subject is None and args.id is None:
        print("nekzusd: token revoke needs --subject and/or --id", file=sys.stderr)
        return 2
    path = revocation.path_in(config.state_path)
    try:
        revocation.revoke(path, subject=args.subject, token_id=args.id)
    except (OSError, ValueError) as exc:
        print(f"nekzusd: cannot update {path}: {exc}", file=sys.stderr)
        return 1
    if args.subject is not None:
        print(f"revoked every token of subject {args.subject!r} issued until now", file=sys.stderr)
    if args.id is not None:
        print(f"revoked token id {args.id!r}", file=sys.stderr)
    print("a running daemon applies this within a second (and ends the WebSocket sessions of those tokens)",
          file=sys.stderr)
    return 0


def cmd_token_rotate_secret(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    try:
        replace_secret(config.jwt_secret_path)
    except OSError as exc:
        print(f"nekzusd: cannot replace the JWT secret: {exc}", file=sys.stderr)
        return 1
    print(f"new secret in {config.jwt_secret_path}: every token issued so far is refused; a running daemon "
          "applies this within a second (and ends their WebSocket sessions)", file=sys.stderr)
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
    token = sub.add_parser(
        "token", help="manage API tokens",
        description="Tokens are JWTs signed with the daemon's secret (state directory). A lost device's token is "
                    "refused with `token revoke --subject NAME` (every token of that subject issued until now) or "
                    "`token revoke --id ID` (the id `token create` printed); `token rotate-secret` refuses every "
                    "token at once. A running daemon applies either within a second, no restart needed, and ends "
                    "the WebSocket sessions of the refused tokens.")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = with_config(token_sub.add_parser(
        "create", help="print a signed JWT",
        description="Print a token on stdout; its id and expiry go to stderr (or everything as JSON with --json)."))
    create.add_argument("--subject", required=True, type=parse_subject,
                        help="who holds the token (e.g. phone-of-ann): shown as the device id, used by revoke")
    create.add_argument("--scope", action="append", required=True, type=parse_scope,
                        help="read:containers, write:containers, read:*, write:* or *; repeatable")
    create.add_argument("--ttl", type=parse_ttl, default=parse_ttl("12h"),
                        help=f"lifetime, e.g. 30m, 12h, 30d (default 12h; from {MIN_TTL}s to {MAX_TTL // 86400}d)")
    create.add_argument("--json", action="store_true", help="print {token, id, subject, scopes, expiresAt}")
    create.set_defaults(func=cmd_token_create)
    revoke = with_config(token_sub.add_parser(
        "revoke", help="refuse tokens from now on (a lost device)",
        description="Refuse every token of a subject issued until now, and/or one token by its id. Stored in "
                    f"{revocation.FILE_NAME} in the state directory."))
    revoke.add_argument("--subject", type=parse_subject, help="every token of this subject issued until now")
    revoke.add_argument("--id", help="the token with this id (printed by token create)")
    revoke.set_defaults(func=cmd_token_revoke)
    rotate = with_config(token_sub.add_parser(
        "rotate-secret", help="replace the signing secret: every token is refused",
        description="Write a new JWT secret: every token issued so far stops verifying; make new ones after."))
    rotate.set_defaults(func=cmd_token_rotate_secret)
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
