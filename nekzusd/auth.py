"""Who may do what (docs/api.md, Authentication): local trust, JWT verification and scopes.

Local clients (by the address ``realip`` resolved, with a ``Host`` that names this server, see
``hostnames``, and not sent by a page of another site) need no token. Everyone else sends
``Authorization: Bearer <JWT>``: HS256 with the daemon's secret, ``iss``/``aud``/``exp`` checked. Handlers
declare the scope they need with ``@requires(WRITE)``; routes under /api/ need READ unless they say
otherwise. Neither the secret nor a token is ever written to a log or echoed in a response.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from .config import AuthConfig
from .errors import ApiError
from .hostnames import ServerNames, learn
from .realip import CLIENT, in_networks
from .statedir import give_to_directory_owner, tighten_file, write_private

log = logging.getLogger(__name__)

LEEWAY = 30  # seconds of clock skew tolerated on exp/nbf/iat
READ, WRITE = "read", "write"
PUBLIC = "public"  # @requires(PUBLIC): anyone, e.g. the API description
_ALL_SCOPES = frozenset({"*"})
_GRANTS = {READ: {"*", "read:*", "read:containers", "write:*", "write:containers"},
           WRITE: {"*", "write:*", "write:containers"}}
SCOPES = frozenset(_GRANTS[READ] | _GRANTS[WRITE])  # every scope a token may carry
MIN_TTL = 60  # seconds: a shorter token would expire before it is copied to a device
MAX_TTL = 365 * 86400  # a token is a standing credential: at most a year (revocation ids are kept that long)
_TOKEN_ERRORS = [  # most specific first; fixed texts, so nothing of the token is echoed back
    (jwt.ExpiredSignatureError, "Token expired"),
    (jwt.InvalidSignatureError, "Token signature is invalid"),
    (jwt.InvalidAlgorithmError, "Token algorithm not allowed; only HS256 is accepted"),
    (jwt.InvalidAudienceError, "Token audience is not accepted"),
    (jwt.InvalidIssuerError, "Token issuer is not accepted"),
    (jwt.MissingRequiredClaimError, "Token lacks a required claim (exp, iss, aud)"),
    (jwt.ImmatureSignatureError, "Token is not valid yet"),
    (jwt.DecodeError, "Token is malformed"),
]

__all__ = ["CLIENT", "PRINCIPAL", "READ", "WRITE", "PUBLIC", "Principal", "Tokens", "requires", "require",
           "authenticate", "local_trust", "setup", "load_tokens", "load_or_create_secret", "replace_secret",
           "TokenRefused", "SCOPES", "MAX_TTL", "MIN_TTL"]


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    local: bool
    # A token's: the moment it stops being accepted (exp + leeway), so that a WebSocket session can end then.
    expires_at: float | None = field(default=None, compare=False)

    def allows(self, need: str) -> bool:
        """Whether the scopes grant ``need`` (READ or WRITE): a write scope implies read, ``*`` grants all."""
        return not self.scopes.isdisjoint(_GRANTS[need])


def load_or_create_secret(path: Path) -> bytes:
    """The HMAC secret: made on first start (48 random bytes, hex, mode 0600), then read back.

    It is written to a private temporary file and linked into place, so that a crash or a concurrent
    ``token create`` never leaves an empty or half-written secret behind.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)  # whatever the umask
                give_to_directory_owner(fh.fileno(), path.parent)  # `sudo nekzusd token create` before a start
                fh.write(secrets.token_hex(48).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # someone else made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    tighten_file(path)  # a secret copied in with a loose mode
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("JWT secret %s is readable by others (mode %o); run chmod 600 on it", path, mode)
    data = path.read_bytes().strip()
    if len(data) < 32:
        raise ValueError(f"{path}: JWT secret must be at least 32 bytes")
    return data


class TokenRefused(ApiError):
    """401 for a token that was sent but is not accepted; ``reason`` says which kind of refusal
    (``expired``, ``revoked``, ``invalid``) for callers that end a session because of it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(401, "UNAUTHORIZED", message,
                         headers={"WWW-Authenticate": 'Bearer realm="nekzusd", error="invalid_token"'})
        self.reason = reason


class Tokens:
    """Issues and verifies the daemon's JWTs.

    The secret and the revocation list can change while the daemon runs (``revocation.TokenFiles``);
    ``refuse_all`` is set while either of them cannot be read, so that a broken file fails closed.
    """

    def __init__(self, secret: bytes, issuer: str, audience: str, revoked: Any = None) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self._revoked = revoked  # a revocation.RevocationList, or None
        self._refuse_all: str | None = None

    def use_secret(self, secret: bytes) -> None:
        self._secret = secret

    def use_revocations(self, revoked: Any) -> None:
        self._revoked = revoked

    def refuse_all(self, reason: str | None) -> None:
        self._refuse_all = reason

    def __repr__(self) -> str:  # never show the secret, e.g. in a traceback's locals
        return f"Tokens(issuer={self.issuer!r}, audience={self.audience!r})"

    def create(self, subject: str, scopes: list[str], ttl: float, now: float | None = None,
               token_id: str | None = None) -> str:
        """A signed token; it carries an id (``jti``) by which it can be revoked alone."""
        now = time.time() if now is None else now
        claims = {"sub": subject, "scopes": list(scopes), "iss": self.issuer, "aud": self.audience,
                  "iat": int(now), "exp": int(now + ttl), "jti": token_id or new_token_id()}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        """The token's principal; 401 for anything but a current HS256 token of this daemon."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=self.issuer,
                                audience=self.audience, leeway=LEEWAY,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            message = next((text for kind, text in _TOKEN_ERRORS if isinstance(exc, kind)), "Token is invalid")
            reason = "expired" if isinstance(exc, jwt.ExpiredSignatureError) else "invalid"
            raise TokenRefused(reason, message) from None
        except (OverflowError, TypeError, ValueError):  # e.g. "exp": Infinity, which PyJWT lets through
            raise TokenRefused("invalid", "Token is malformed") from None
        if self._refuse_all is not None:
            raise TokenRefused("revoked", "Tokens are refused until the daemon's token files are fixed "
                                          "(see its log)")
        if self._revoked is not None:
            why = self._revoked.refuses(claims)
            if why is not None:
                raise TokenRefused("revoked", why)
        scopes = claims.get("scopes", [])
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise TokenRefused("invalid", "Token scopes must be a list of strings")
        exp = claims["exp"]
        return Principal(str(claims.get("sub", "")), frozenset(scopes), local=False,
                         expires_at=float(exp) + LEEWAY if isinstance(exp, (int, float)) else None)


def new_token_id() -> str:
    """A token's ``jti``: hex, so that it never starts with ``-`` (``token revoke --id -x…`` would be read as an
    option) and survives copying from a terminal."""
    return secrets.token_hex(12)


def unauthorized(message: str, invalid: bool = False) -> ApiError:
    """401 with the RFC 6750 challenge; ``invalid`` when a token was sent but refused."""
    challenge = 'Bearer realm="nekzusd"' + (', error="invalid_token"' if invalid else "")
    return ApiError(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": challenge})


def insufficient_scope(need: str) -> ApiError:
    scope = f"{need}:containers"
    return ApiError(403, "INSUFFICIENT_SCOPE", f"Token lacks the {scope} scope (or {need}:*) for this operation",
                    {"required": scope},
                    {"WWW-Authenticate": f'Bearer realm="nekzusd", error="insufficient_scope", scope="{scope}"'})


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def requires(need: str | None) -> Callable[[Any], Any]:
    """Declare the scope a handler needs: READ, WRITE, PUBLIC, or None when it authenticates itself
    (the WebSocket; a token sent on its upgrade must still carry READ)."""
    def mark(handler: Any) -> Any:
        handler.required_scope = need
        return handler
    return mark


PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("principal")


def require(request: web.Request, need: str) -> Principal:
    """The caller, if allowed ``need``; else 401 (nobody) or 403 (not enough scope). Handlers whose need
    depends on the body (an unsanitised export is a write) call this themselves."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise unauthorized("Authentication required: send Authorization: Bearer <token>")
    if not principal.allows(need):
        raise insufficient_scope(need)
    return principal


def cross_site(request: web.Request) -> bool:
    """A browser sent this on behalf of a page from another site (Fetch Metadata, else Origin vs Host).

    Local callers need no token, so without this check any web page open in a browser on the LAN could
    stop containers or read logs through the daemon. Clients that are not browsers send neither header.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin == "null" or origin.partition("://")[2].rstrip("/").lower() != request.host.lower()


def names_this_server(request: web.Request, names: ServerNames) -> bool:
    """The request's one ``Host`` header names this server, and so does an absolute-form target if any.

    The header is read as sent: ``request.host`` falls back to the socket's own address when Host is missing
    (HTTP/1.0), which would trust exactly the requests that name nothing. HTTP lets an absolute target
    (``GET http://name/ HTTP/1.1``) override Host, so that name must be ours too.
    """
    hosts = request.headers.getall("Host", ())
    if len(hosts) != 1 or not names.match(hosts[0]):
        return False
    return request.raw_path.startswith("/") or names.match(request.url.raw_authority)


def local_trust(request: web.Request, local_networks: tuple, names: ServerNames,
                containers: Callable[[Any], bool] | None = None) -> bool:
    """Whether the caller is trusted without a token: a local address that is not one of the host's own
    containers (``containers``: ``containernets``), a Host that names this server (else a web page could
    reach the daemon by DNS rebinding), and no browser acting for a page of another site."""
    client = request.get(CLIENT)
    return (in_networks(client, local_networks) and not (containers is not None and containers(client))
            and names_this_server(request, names) and not cross_site(request))


def authenticate(request: web.Request, tokens: Tokens, local_networks: tuple,
                 names: ServerNames, containers: Callable[[Any], bool] | None = None) -> Principal | None:
    """The caller: local (all scopes), a token's principal, or None. 401 for a bad token from a remote client;
    a local client's bad token is ignored (only its subject would have been used). A local address alone is
    not trust (see ``local_trust``): such a caller needs a token like a remote one."""
    token = bearer_token(request)
    if local_trust(request, local_networks, names, containers):
        subject = "local"
        if token:
            try:
                subject = tokens.verify(token).subject or "local"
            except ApiError:
                pass
        return Principal(subject, _ALL_SCOPES, local=True)
    if token is None:
        if "Authorization" in request.headers:
            raise unauthorized("Malformed Authorization header; expected: Bearer <token>", invalid=True)
        return None
    return tokens.verify(token)


def setup(app: web.Application, config: AuthConfig, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Install the auth middleware (after the client address and rate limit ones). The server's names are
    learnt once at start (the FQDN may need the resolver, off the loop); until then no Host is ours."""
    from .keys import CONTAINER_NETWORKS, TOKENS

    names = ServerNames(())

    async def learn_names(app: web.Application) -> None:
        nonlocal names
        names = await learn(allowed_hosts)

    app.on_startup.append(learn_names)

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        api = request.path.startswith("/api/")
        try:
            networks = request.app.get(CONTAINER_NETWORKS)
            principal = authenticate(request, request.app[TOKENS], config.local_networks, names,
                                     networks.contains if networks is not None else None)
        except ApiError:
            if api:
                raise
            principal = None  # pages outside the API decide for themselves
        request[PRINCIPAL] = principal
        if api:
            need = getattr(request.match_info.handler, "required_scope", READ)
            if need is None and principal is not None:
                need = READ  # the WebSocket upgrade with a token in the header
            if need not in (None, PUBLIC):
                require(request, need)
        return await handler(request)

    app.middlewares.append(auth_middleware)


async def load_tokens(config: Any) -> Tokens:
    secret = await asyncio.to_thread(load_or_create_secret, config.jwt_secret_path)
    return Tokens(secret, config.auth.issuer, config.auth.audience)


def replace_secret(path: Path) -> None:
    """A new secret in place of the old one (atomic rename, 0600, owned by the state directory's owner):
    every token issued so far stops verifying. A running daemon notices within a second
    (``revocation.TokenFiles``)."""
    write_private(path, secrets.token_hex(48).encode() + b"\n")
