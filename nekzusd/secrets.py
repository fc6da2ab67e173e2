"""Secret detection for environment variables (DECISIONS §12).

Used by the compose export (to replace secret values with placeholders) and by the inspect endpoint
(to mask them). Names are judged by their parts, never by substrings, so that AUTHOR, PWD, PATH,
KEYBOARD_LAYOUT or MONKEY do not trigger; values are judged by shape (private keys, JWTs, credentials in
URLs, well-known token prefixes) because a secret can hide behind an innocent name.
"""

from __future__ import annotations

import re

__all__ = ["is_secret_name", "is_secret_value", "is_secret", "mask_env"]

# A name part that alone makes the variable secret.
_SECRET_PARTS = frozenset({
    "PASSWORD", "PASSWD", "PASS", "PASSPHRASE", "SECRET", "TOKEN", "CREDENTIAL", "CREDENTIALS", "CREDS",
    # The same words written without a separator ("APIKEY") are common enough to name.
    "APIKEY", "ACCESSKEY", "SECRETKEY", "PRIVATEKEY", "AUTHTOKEN", "ACCESSTOKEN",
})
# KEY is secret only after one of these (API_KEY, TLS_PRIVATE_KEY, but not KEY_ID alone or SORT_KEY).
# §12 names API/ACCESS/PRIVATE/SECRET; the others are what users would expect to be hidden as well.
_KEY_QUALIFIERS = frozenset({"API", "ACCESS", "PRIVATE", "SECRET", "ENCRYPTION", "SIGNING", "MASTER", "SSH", "HMAC", "JWT"})

# Splits on _ - . and on camelCase boundaries, so that "dbPassword" and "db.password" are judged too.
_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

_PEM_PRIVATE_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# scheme://user:password@host — a database URL carries its password.
_URL_CREDENTIALS_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")
_TOKEN_PREFIX_RE = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|sk_live_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16})\b"
)


def _name_parts(name: str) -> list[str]:
    return [p.upper() for chunk in re.split(r"[_\-.\s]+", name) for p in _PART_RE.findall(chunk)]


def is_secret_name(name: str) -> bool:
    """True when a part of the name (split on _ - . and camelCase) marks it as holding a secret."""
    parts = _name_parts(name)
    for i, part in enumerate(parts):
        if part in _SECRET_PARTS:
            return True
        if part == "KEY" and i > 0 and parts[i - 1] in _KEY_QUALIFIERS:
            return True
    return False


def is_secret_value(value: str) -> bool:
    """True when the value looks like a secret whatever its name: private key, JWT, URL password, API token."""
    if not value:
        return False
    return any(rx.search(value) for rx in (_PEM_PRIVATE_RE, _JWT_RE, _URL_CREDENTIALS_RE, _TOKEN_PREFIX_RE))


def is_secret(name: str, value: str) -> bool:
    """True when either the name or the value says the variable holds a secret."""
    return is_secret_name(name) or is_secret_value(value or "")


def mask_env(env: list[str] | None, mask: str = "***") -> list[str] | None:
    """Docker-style "K=V" entries with secret values replaced by `mask`; order and non-secrets kept."""
    if env is None:
        return None
    masked = []
    for entry in env:
        name, sep, value = entry.partition("=")
        masked.append(f"{name}={mask}" if sep and is_secret(name, value) else entry)
    return masked
