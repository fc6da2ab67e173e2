"""Log lines an attacker can provoke, bounded: per key (a client address, an error kind) and in all.

Whatever a stranger sends (garbage request lines, a flood of refused requests, connections past a cap)
must not fill the journal. ``Throttle`` lets a short burst of lines through per key and then about one line
per ``interval``; the lines held back are counted, and a few seconds after the first of them one summary
line says how many and from whom ("1734 lines held back in the last 5s, most for 127.0.0.2, …"); without
a running event loop the count rides on the key's next line instead. A global bucket bounds the sum over
keys, so that many addresses (an IPv6 /64 has plenty) cannot multiply the rate. Memory is bounded: the
oldest keys are forgotten, and past ``max_keys`` the held-back counts are pooled as "other clients".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Hashable
from typing import Any


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, now: float, burst: float, rate: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Throttle:
    def __init__(self, logger: logging.Logger, *, burst: int = 5, interval: float = 10.0,
                 global_burst: int = 50, global_interval: float = 1.0, max_keys: int = 4096,
                 summary_after: float = 5.0) -> None:
        self.logger = logger
        self._burst, self._rate = float(burst), 1.0 / interval
        self._global_burst, self._global_rate = float(global_burst), 1.0 / global_interval
        self._max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._global = _Bucket(float(global_burst), time.monotonic())
        self.suppressed = 0  # lines held back so far, for tests and metrics
        self._summary_after = summary_after
        self._pending: Counter[Hashable] = Counter()  # held back and not yet reported, by key
        self._summary: asyncio.TimerHandle | None = None
        self._summary_level = logging.INFO

    def _hold(self, key: Hashable) -> None:
        self.suppressed += 1
        if key not in self._pending and len(self._pending) >= self._max_keys:
            key = "other clients"
        self._pending[key] += 1
        if self._summary is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._summary = loop.call_later(self._summary_after, self._report)

    def _report(self) -> None:
        self._summary = None
        if not self._pending:
            return
        total = sum(self._pending.values())
        most = ", ".join(_label(key) for key, _ in self._pending.most_common(3))
        self._pending.clear()
        self.logger.log(self._summary_level, "%d lines held back in the last %gs, most for %s", total,
                        self._summary_after, most)

    def allow(self, key: Hashable) -> int | None:
        """None if ``key`` (or everyone) has logged too much lately; else the count of lines held back
        since the last one that passed, to be mentioned on this one."""
        now = time.monotonic()
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = _Bucket(self._burst, now)
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if not bucket.take(now, self._burst, self._rate):
            self._hold(key)
            return None
        if not self._global.take(now, self._global_burst, self._global_rate):
            self._hold(key)
            return None
        return self._pending.pop(key, 0) if self._summary is None else 0

    def log(self, key: Hashable, level: int, msg: str, *args: Any, **kw: Any) -> bool:
        """Log ``msg % args`` unless ``key`` (or everyone) has logged too much lately; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        self._summary_level = level
        held = self.allow(key)
        if held is None:
            return False
        self.logger.log(level, msg + suppressed_note(held), *args, **kw)
        return True


def _label(key: Hashable) -> str:
    """A key as a person reads it: ("bad", IPv4Address("127.0.0.2")) → 127.0.0.2."""
    if isinstance(key, tuple) and key:
        key = key[-1]
    return str(key)


def suppressed_note(held: int) -> str:
    return f" ({held} similar lines suppressed)" if held else ""


def printable(text: str, limit: int = 100) -> str:
    """Attacker-supplied text made safe for one log line: no control characters, bounded length."""
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii", "replace")
    return text if len(text) <= limit else text[:limit] + "…"
