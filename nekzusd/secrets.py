"""Secret detection for environment variables (DECISIONS §12).

Used by the compose export (to replace secret values with placeholders) and by the inspect endpoint
(to mask them). Names are judged by their parts, never by substrings, so that AUTHOR, PWD, PATH,
KEYBOARD_LAYOUT or MONKEY do not trigger; values are judged by shape (private keys, JWTs, credentials in
URLs, well-known token prefixes) because a secret can hide behind an innocent name. A secret value found
in the environment is also hunted in the fields that may repeat it (command, healthcheck, labels, …).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

__all__ = ["is_secret_name", "is_secret_value", "is_secret", "mask_env", "secret_env_values",
           "replace_repeated", "mask_inspect", "MIN_REPEATED_SECRET"]

MASK = "***"
# Secret values shorter than this are not hunted in other fields: they would match innocent text.
MIN_REPEATED_SECRET = 6

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


def mask_env(env: list[str] | None, mask: str = MASK) -> list[str] | None:
    """Docker-style "K=V" entries with secret values replaced by `mask`; order and non-secrets kept."""
    if env is None:
        return None
    masked = []
    for entry in env:
        name, sep, value = entry.partition("=")
        masked.append(f"{name}={mask}" if sep and is_secret(name, value) else entry)
    return masked


def secret_env_values(env: list[str] | None) -> list[str]:
    """The values of the secret entries of Docker-style "K=V" environment entries."""
    values = []
    for entry in env or []:
        name, sep, value = entry.partition("=")
        if sep and value and is_secret(name, value):
            values.append(value)
    return values


def _keep(text: str) -> str:
    return text


def replace_repeated(text: str, replacements: Mapping[str, str], between: Callable[[str], str] = _keep) -> str:
    """``text`` with each secret value of ``replacements`` (if at least MIN_REPEATED_SECRET long) replaced by
    its replacement, longest first so that a secret containing another is replaced whole; the text between
    them goes through ``between`` (the export escapes `$` there)."""
    hunted = sorted((v for v in replacements if len(v) >= MIN_REPEATED_SECRET), key=lambda v: (-len(v), v))
    if not hunted:
        return between(text)
    pieces = re.split("(" + "|".join(map(re.escape, hunted)) + ")", text)
    return "".join(replacements[p] if i % 2 else between(p) for i, p in enumerate(pieces))


def _mask_tree(value: Any, replacements: Mapping[str, str]) -> Any:
    """Every string in a JSON value masked (dict keys are names, kept)."""
    if isinstance(value, str):
        return replace_repeated(value, replacements)
    if isinstance(value, dict):
        return {k: _mask_tree(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_tree(v, replacements) for v in value]
    return value


# Where an inspect document's Config may repeat a secret of its Env (a password on the command line, in
# a healthcheck, in a label); the engine's top-level Args repeats Entrypoint and Cmd.
_REPEATING_CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "Healthcheck", "Labels")


def mask_inspect(doc: dict[str, Any], mask: str = MASK) -> dict[str, Any]:
    """A Docker inspect document with its secret Env values masked, and those values masked wherever
    Config or Args repeat them (the same rules as the export's placeholders). Returns a new document."""
    config = doc.get("Config") or {}
    if not config.get("Env"):
        return doc
    replacements = dict.fromkeys(secret_env_values(config["Env"]), mask)
    masked = {**config, "Env": mask_env(config["Env"], mask)}
    if not replacements:
        return {**doc, "Config": masked}
    for key in _REPEATING_CONFIG_KEYS:
        if masked.get(key) is not None:
            masked[key] = _mask_tree(masked[key], replacements)
    out = {**doc, "Config": masked}
    if doc.get("Args"):
        out["Args"] = _mask_tree(doc["Args"], replacements)
    return out
