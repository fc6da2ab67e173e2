"""Who is calling: the client address (§5), local trust, JWT verification and scopes.

Local clients need no token. Everyone else sends ``Authorization: Bearer <JWT>`` (HS256 with the
daemon's secret, ``iss``/``aud``/``exp`` checked). Handlers declare the scope they need with
``@requires("write")``; the default for routes under /api/ is "read".
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import jwt
from aiohttp import web

from .config import AuthConfig, IPNetwork
from .errors import ApiError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LEEWAY = 30  # seconds of clock skew tolerated on exp/nbf/iat
READ, WRITE = "read", "write"
_ALL_SCOPES = frozenset({"*"})


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    local: bool

    def allows(self, need: str) -> bool:
        s = self.scopes
        if "*" in s or "write:*" in s or "write:containers" in s:
            return True
        return need == READ and ("read:*" in s or "read:containers" in s)


def parse_ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in_any(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)


def client_address(peer: str | None, forwarded_for: list[str], trusted_proxies: Iterable[IPNetwork]) -> IPAddress | None:
    """The TCP peer, or with a trusted proxy as peer, the right-most X-Forwarded-For hop that is not a proxy."""
    addr = parse_ip(peer) if peer else None
    trusted = tuple(trusted_proxies)
    if addr is None or not trusted or not _in_any(addr, trusted):
        return addr
    hops = [h for header in forwarded_for for h in header.split(",")]
    for hop in reversed(hops):
        hop_addr = parse_ip(hop)
        if hop_addr is None:
            return addr  # a garbled header is not believed
        if not _in_any(hop_addr, trusted):
            return hop_addr
        addr = hop_addr
    return addr


def is_local(addr: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    return addr is not None and _in_any(addr, networks)


def load_or_create_secret(path: Path) -> bytes:
    """The HMAC secret; created with 0600 and 48 random bytes on first start."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = secrets.token_hex(48).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data + b"\n")
    if len(data) < 32:
        raise ValueError(f"{path}: JWT secret must be at least 32 bytes")
    return data


class Tokens:
    def __init__(self, secret: bytes, issuer: str, audience: str) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience

    def create(self, subject: str, scopes: list[str], ttl: float, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims = {"sub": subject, "scopes": list(scopes), "iss": self.issuer, "aud": self.audience,
                  "iat": int(now), "exp": int(now + ttl)}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=self.issuer,
                                audience=self.audience, leeway=LEEWAY,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise unauthorized("Token expired") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"Invalid token: {exc}") from None
        scopes = claims.get("scopes", [])
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise unauthorized("Invalid token: scopes must be a list of strings")
        return Principal(str(claims.get("sub", "")), frozenset(scopes), local=False)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": 'Bearer realm="nekzusd"'})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def requires(need: str | None) -> Callable[[Any], Any]:
    """Declare the scope a handler needs ("read", "write", or None when it authenticates itself)."""
    def mark(handler: Any) -> Any:
        handler.required_scope = need
        return handler
    return mark


def require(request: web.Request, need: str) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise unauthorized("Authentication required")
    if not principal.allows(need):
        raise ApiError(403, "INSUFFICIENT_SCOPE", f"Token lacks the {need} scope for this operation",
                       {"required": f"{need}:containers"})
    return principal


CLIENT = "nekzusd.client"        # request key: IPAddress | None
PRINCIPAL = "nekzusd.principal"  # request key: Principal | None


def authenticate(request: web.Request, tokens: Tokens, config: AuthConfig) -> Principal | None:
    """Resolve the caller; raises 401 for a bad token from a non-local client."""
    addr = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), config.trusted_proxies)
    request[CLIENT] = addr
    token = bearer_token(request)
    if is_local(addr, config.local_networks):
        subject = "local"
        if token:
            try:
                subject = tokens.verify(token).subject or "local"
            except ApiError:
                pass  # a local caller's bad token is ignored, not refused
        return Principal(subject, _ALL_SCOPES, local=True)
    if token is None:
        if "Authorization" in request.headers:
            raise unauthorized("Malformed Authorization header; expected Bearer <token>")
        return None
    return tokens.verify(token)


def setup(app: web.Application, config: AuthConfig) -> None:
    from .keys import TOKENS

    @web.middleware
    async def auth_middleware(request: web.Request, handler):
        try:
            principal = authenticate(request, request.app[TOKENS], config)
        except ApiError:
            if request.path.startswith("/api/"):
                raise
            principal = None  # pages outside the API decide for themselves
        request[PRINCIPAL] = principal
        if request.path.startswith("/api/"):
            need = getattr(request.match_info.handler, "required_scope", READ)
            if need is not None:
                require(request, need)
        return await handler(request)

    app.middlewares.append(auth_middleware)


async def load_tokens(config: Any) -> Tokens:
    secret = await asyncio.to_thread(load_or_create_secret, config.jwt_secret_path)
    return Tokens(secret, config.auth.issuer, config.auth.audience)
