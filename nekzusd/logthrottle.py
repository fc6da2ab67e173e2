"""Log lines an attacker can provoke, bounded: per key (a client address, an error kind) and in all.

Whatever a stranger sends (garbage request lines, a flood of refused requests, connections past a cap)
must not fill the journal. ``Throttle`` lets a short burst of lines through per key and then about one line
per ``interval``; the lines held back are counted and the count rides on the next line that passes
("… (37 similar lines suppressed)"). A global bucket bounds the sum over keys, so that many addresses (an
IPv6 /64 has plenty) cannot multiply the rate. Memory is bounded: the oldest keys are forgotten.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Hashable


class _Bucket:
    __slots__ = ("tokens", "stamp", "suppressed")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.suppressed = 0

    def take(self, now: float, burst: float, rate: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


class Throttle:
    def __init__(self, logger: logging.Logger, *, burst: int = 5, interval: float = 10.0,
                 global_burst: int = 50, global_interval: float = 1.0, max_keys: int = 4096) -> None:
        self.logger = logger
        self._burst, self._rate = float(burst), 1.0 / interval
        self._global_burst, self._global_rate = float(global_burst), 1.0 / global_interval
        self._max_keys = max_keys
        self._keys: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._global = _Bucket(float(global_burst), time.monotonic())
        self.suppressed = 0  # lines held back so far, for tests and metrics

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
            self.suppressed += 1
            return None
        if not self._global.take(now, self._global_burst, self._global_rate):
            bucket.suppressed += 1
            self.suppressed += 1
            return None
        held = bucket.suppressed + self._global.suppressed
        bucket.suppressed = self._global.suppressed = 0
        return held

    def log(self, key: Hashable, level: int, msg: str, *args: Any, **kw: Any) -> bool:
        """Log ``msg % args`` unless ``key`` (or everyone) has logged too much lately; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        held = self.allow(key)
        if held is None:
            return False
        self.logger.log(level, msg + suppressed_note(held), *args, **kw)
        return True


def suppressed_note(held: int) -> str:
    return f" ({held} similar lines suppressed)" if held else ""


def printable(text: str, limit: int = 120) -> str:
    """Attacker-supplied text made safe for one log line: no control characters, bounded length."""
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii", "replace")
    return text if len(text) <= limit else text[:limit] + "…"
