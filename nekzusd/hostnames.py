"""Whether a request's ``Host`` names this server: the guard of local trust against DNS rebinding.

A web page on ``http://rebind.attacker.example:8443`` can make its own name resolve to the server's
address after it has loaded. The browser then talks to nekzusd from a local address, and the page is
"same-origin" with itself, so neither the address nor Origin/Sec-Fetch-Site tell it apart from the owner's
dashboard. Only the name the browser put in ``Host`` does: it is the attacker's. Local trust therefore also
needs a Host that names this server:

- an IP literal: a canonical dotted-quad IPv4 address or a bracketed IPv6 address, with or without a port.
  A page whose origin is an IP literal was served from that address, so no name was re-resolved. Forms that
  only some resolvers read as an address (``127.1``, ``0x7f.1``, ``0177.0.0.1``, ``2130706433``) are names
  here, and names that are not ours: browsers rewrite such URLs to the dotted quad before sending them, so
  only hand-made clients send them, and those can send the canonical form;
- ``localhost``, the machine's host name, its fully qualified name, the first label of either, and the first
  label plus ``.local`` (mDNS), learnt once at start;
- the names of ``server.allowed_hosts`` (e.g. the domain a reverse proxy serves nekzusd under).

Matching ignores case, one trailing dot and the port. Anything else is refused as a name of ours: a missing
or empty Host, userinfo (``user@host``), non-ASCII text (IDN names match only in their ``xn--`` form),
``127.0.0.1.attacker.example``, brackets around something that is not an IPv6 address, an IPv6 zone, a
port that is not digits. A request whose target is in absolute form (``GET http://host/ HTTP/1.1``) must
name this server there too, because HTTP says such a target overrides Host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable

log = logging.getLogger(__name__)

FQDN_TIMEOUT = 5.0  # seconds the start waits for the resolver to name the machine
CACHE_SIZE = 256  # Host values remembered with their answer; a client sends the same few again and again
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")  # DNS labels, after lower-casing (ASCII only)
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_MAX_NAME = 253
_MAX_PORT_DIGITS = 5
_MAX_HOST = _MAX_NAME + 2 + _MAX_PORT_DIGITS  # a name, its trailing dot, ":" and a port


def normalise(value: str) -> str | None:
    """The host a ``Host`` value (or an absolute target's authority) names: lower case, without port or
    trailing dot, IPv6 in brackets and compressed; None when the value is not a well-formed host."""
    if not value.isascii():
        return None
    if value.startswith("["):
        inside, closed, rest = value[1:].partition("]")
        if not closed or (rest and not _is_port(rest)) or "%" in inside:
            return None
        try:
            return f"[{ipaddress.IPv6Address(inside).compressed}]"
        except ValueError:
            return None
    name, colon, port = value.rpartition(":")
    if not colon:
        name = value
    elif not _is_port(colon + port):
        return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        return None
    return name


def _is_port(text: str) -> bool:
    """``:digits`` as written after a host."""
    digits = text[1:]
    return text[:1] == ":" and 0 < len(digits) <= _MAX_PORT_DIGITS and digits.isascii() and digits.isdigit()


def _is_ipv4_literal(name: str) -> bool:
    """A canonical dotted quad (Python's parser refuses short, octal, hex and decimal-integer forms)."""
    if not _DOTTED_QUAD.fullmatch(name):  # most names: no exception raised and caught
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def check_name(value: str) -> str:
    """A name for ``server.allowed_hosts``, normalised; ValueError says what is wrong with it."""
    if "*" in value:
        raise ValueError(f"{value!r}: wildcards are not supported; list each name")
    if not value.isascii():
        raise ValueError(f"{value!r}: write internationalised names in their xn-- form")
    name = normalise(value)
    if name is None or name != value.lower().rstrip(".") or name.startswith("["):
        raise ValueError(f"{value!r} is not a host name (no port, scheme, path or user; "
                         "IP addresses are always accepted and need not be listed)")
    return name


class ServerNames:
    """The names of this server, fixed at start; ``match`` is a set look-up, no resolver involved."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(n for n in (normalise(name) for name in names) if n)
        self._answers: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"ServerNames({sorted(self.names)!r})"

    def match(self, value: str | None) -> bool:
        """Whether a Host value (or absolute target authority) names this server.

        Answers are remembered for the few values clients repeat (a dictionary look-up on the hot path). The
        memory stays bounded whatever a client sends: values longer than any host are refused uncached, and
        the table is emptied when full, so a client varying its Host costs parsing time, never memory.
        """
        if value is None or len(value) > _MAX_HOST:
            return False
        answer = self._answers.get(value)
        if answer is None:
            if len(self._answers) >= CACHE_SIZE:
                self._answers.clear()
            answer = self._answers[value] = self._parse_and_match(value)
        return answer

    def _parse_and_match(self, value: str) -> bool:
        host = normalise(value)
        if host is None:
            return False
        return host[0] == "[" or host in self.names or _is_ipv4_literal(host)


def own_names(hostname: str, fqdn: str) -> set[str]:
    """``localhost``, the machine's names, their first labels and ``FIRST.local``."""
    names = {"localhost"}
    for name in (hostname, fqdn):
        name = name.strip().lower().rstrip(".")
        if not name:
            continue
        first = name.split(".", 1)[0]
        names.update({name, first, f"{first}.local"})
    return names


async def learn(allowed: Iterable[str]) -> ServerNames:
    """The server's names, asked of the system once (the FQDN lookup may block: it runs in a thread, bounded
    by FQDN_TIMEOUT; without an answer the host name alone is used)."""
    hostname = socket.gethostname()
    try:
        fqdn = await asyncio.wait_for(asyncio.to_thread(socket.getfqdn, hostname), FQDN_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        log.warning("could not learn this machine's FQDN (%s); Host %r and the allowed_hosts still work",
                    type(exc).__name__, hostname)
        fqdn = ""
    names = ServerNames([*own_names(hostname, fqdn), *allowed])
    log.info("local trust needs a Host of: IP literals, %s", ", ".join(sorted(names.names)))
    return names
