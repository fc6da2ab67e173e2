"""Engines' log streams as lines: Docker's multiplexed framing (or raw TTY text), timestamps, and the
cursor that lets a stream catch up after the engine ended it early without repeating a line.

Runtime-neutral and free of I/O, so both runtimes (and the tests) use it without the WebSocket feature.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import AnyStr

from .base import LogLine

READ_SIZE = 32 * 1024  # bytes asked of the engine per read
MAX_FRAME = 1 << 20  # a multiplexed frame announcing more is skipped (memory abuse)
MAX_LINE = 2 << 20  # a longer line goes out in pieces of this size, so that an endless line stays bounded

_HEADER = struct.Struct(">BxxxL")
_STREAM_NAMES = {0: "stdout", 1: "stdout", 2: "stderr"}  # 0 is stdin, which logs never carry


class LogParser:
    """Bytes of a Docker log stream in, complete ``(stream, line)`` pairs out.

    Multiplexed streams are 8-byte headers (stream, size) each followed by a payload; a line may span
    frames and a frame may hold several lines, so stdout and stderr each keep their unfinished line.
    Lines end at ``\\n`` (a ``\\r`` before it is removed); bytes that are not UTF-8 become U+FFFD.

    ``stamped``: the engine was asked for timestamps, so every log entry starts with ``<stamp> ``. dockerd
    stores a long line (> 16 KiB) as several entries, each stamped; the joined line keeps only the first
    stamp. Multiplexed: a frame that continues a line drops its stamp. Raw (TTY) text shows no entry
    boundaries, so there a joined line drops the repeats of its own stamp (dockerd gives all the pieces of
    a line the first piece's). Every line, and every piece of a line cut at MAX_LINE, starts with the stamp.
    """

    def __init__(self, multiplexed: bool, stamped: bool = False) -> None:
        self.multiplexed = multiplexed
        self.stamped = stamped
        self.skipped_frames = 0
        self._head = b""  # an incomplete frame header
        self._left = 0  # payload bytes of the current frame not seen yet
        self._stream: str | None = None  # the current frame's stream; None while skipping an oversized frame
        self._unstamp = False  # the current frame continues a line: its stamp is dropped first
        self._repeats = stamped and not multiplexed  # joined raw lines may repeat their stamp
        self._partial = {"stdout": bytearray(), "stderr": bytearray()}

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self.multiplexed:
            self._payload("stdout", data, out)
            return out
        if self._head:
            data, self._head = self._head + data, b""
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                if self._unstamp:  # up to and with the first space (the stamp may span reads)
                    space = data.find(b" ", pos, pos + take)
                    self._unstamp = space < 0
                    take = take if space < 0 else space + 1 - pos
                elif self._stream is not None:
                    self._payload(self._stream, data[pos:pos + take], out)
                pos += take
                self._left -= take
                continue
            if end - pos < _HEADER.size:
                self._head = data[pos:]
                break
            kind, size = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            self._left = size
            if size > MAX_FRAME:
                self._stream = None
                self._unstamp = False
                self.skipped_frames += 1
            else:
                self._stream = _STREAM_NAMES.get(kind, "stdout")
                self._unstamp = self.stamped and bool(self._partial[self._stream])
        return out

    def flush(self) -> list[tuple[str, str]]:
        """The unfinished lines at the end of the stream."""
        out: list[tuple[str, str]] = []
        for stream, partial in self._partial.items():
            if partial:
                self._line(stream, bytes(partial), out)
                partial.clear()
        return out

    def _payload(self, stream: str, piece: bytes, out: list[tuple[str, str]]) -> None:
        partial = self._partial[stream]
        cut = piece.rfind(b"\n")
        if cut < 0:
            partial += piece
            if len(partial) > MAX_LINE:
                self._bound(stream, partial, out)
            return
        if partial:
            partial += piece[:cut]
            block = bytes(partial)
            partial.clear()
        else:
            block = piece[:cut]
        if len(block) > MAX_LINE:
            for raw in block.split(b"\n"):
                self._line(stream, raw, out)
        else:
            text = block.decode("utf-8", "replace")
            lines = text.split("\n")
            if "\r" in text:
                lines = [line.removesuffix("\r") for line in lines]
            if self._repeats:
                lines = [_one_stamp(line, " ") for line in lines]
            out.extend((stream, line) for line in lines)
        if cut + 1 < len(piece):
            partial += piece[cut + 1:]

    def _bound(self, stream: str, partial: bytearray, out: list[tuple[str, str]]) -> None:
        """Hand out an unfinished line's text in MAX_LINE pieces, so that an endless line stays bounded."""
        if self._repeats:
            partial[:] = _one_stamp(bytes(partial), b" ")
        stamp = partial[:partial.find(b" ") + 1] if self.stamped else b""
        while len(partial) > MAX_LINE + len(stamp):
            out.append((stream, _text(partial[:MAX_LINE + len(stamp)])))
            partial[:MAX_LINE + len(stamp)] = stamp

    def _line(self, stream: str, raw: bytes, out: list[tuple[str, str]]) -> None:
        """One whole line of any length: out as one line, or as MAX_LINE pieces each with the stamp."""
        text = _text(raw)
        stamp = ""
        if self.stamped:
            if self._repeats:
                text = _one_stamp(text, " ")
            stamp = text[:text.find(" ") + 1]
        if len(text) <= MAX_LINE + len(stamp):
            out.append((stream, text))
            return
        for start in range(len(stamp), len(text), MAX_LINE):
            out.append((stream, stamp + text[start:start + MAX_LINE]))


def _text(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "replace").removesuffix("\r")


def _one_stamp(line: AnyStr, space: AnyStr) -> AnyStr:
    """A line with the repeats of its leading ``<stamp> `` removed."""
    stamp = line[:line.find(space) + 1]
    if stamp and line.find(stamp, len(stamp)) >= 0:
        return stamp + line[len(stamp):].replace(stamp, space[:0])
    return line


@lru_cache(maxsize=64)
def _second_of(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp + "+00:00").timestamp()
    except ValueError:
        return None


def line_time(message: str) -> float | None:
    """The time of a line that starts with the engine's RFC 3339 UTC timestamp (``timestamps: true``),
    to the second; None when it does not."""
    return _second_of(message[:19]) if len(message) > 20 and message[19] in ".Z " else None


_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def stamp_key(stamp: str) -> tuple[int, int] | None:
    """An engine's RFC 3339 timestamp (any fraction, ``Z`` or an offset) as (Unix seconds, nanoseconds), so
    that stamps of any width compare in time order; None when it is not one."""
    match = _STAMP.fullmatch(stamp)
    if match is None:
        return None
    base, fraction, zone = match.groups()
    try:
        seconds = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    except ValueError:  # month 13, offset +25:00, digits of another script: not a time (a client typed it)
        return None
    return int(seconds), int((fraction or "").ljust(9, "0"))


def stamp_seconds(line: str) -> float | None:
    """The time (Unix seconds, as precise as a float holds) of a line that starts with an RFC 3339 stamp and a
    space; None when it does not."""
    key = stamp_key(line[:line.find(" ")]) if " " in line else None
    return None if key is None else key[0] + key[1] / 1e9


def _stamp_of(line: str) -> str:
    return line[:line.find(" ")]


def stamped_lines(pairs: list[tuple[str, str]], timestamps: bool) -> list[LogLine]:
    """Lines of a stamped stream as LogLines: the stamp kept in the text when the client asked for it."""
    if timestamps:
        return [LogLine(stream, line, line_time(line)) for stream, line in pairs]
    return [LogLine(stream, line[line.find(" ") + 1:]) for stream, line in pairs]


@dataclass
class _Run:
    """Where a cursor stands in one stream (stdout or stderr): the stamp of the last line handed out, how
    many lines in a row carried it, and whether that whole run was seen."""

    stamp: str
    same: int
    whole_run: bool
    last: str = ""


class LogCursor:
    """How far a stream got in a container's log, told by the engine's timestamps, per output stream: the
    stamp of the last line handed out and how many lines in a row carried it (lines can share a stamp:
    Podman's are whole seconds).

    dockerd can end a follow stream before the container's last line is stored, so after the stream a
    catch-up read from ``since`` gives what it missed; ``fresh_filter`` skips what was handed out already.
    Stamps follow the log's order only within one output stream: dockerd copies stdout and stderr each in
    its own goroutine, which stamps a line and then stores it, so a stderr line can be stored after a stdout
    line stamped later (under load, measured: often; and a long line keeps its first piece's stamp, so
    lines of the other stream stored among its pieces carry later stamps). Hence one place per stream, and
    ``since`` is the earliest of them.

    The count places a stream exactly only when the whole run of its stamp was seen: when a line of that
    stream with another stamp came before it, or the follow began at the log's start (``from_start``).
    Otherwise the catch-up gives only that stream's lines with a later stamp: never a line twice. A stream
    that handed out nothing takes the lines stamped from the latest stamp handed out on.

    The count is checked against the last line handed out: Podman 4's follow (k8s-file) can lose a line
    now and then (containers/podman#21914), and a run short of one line would place the stream a line early
    and repeat the last one. When the line at the counted place is not that line, the place is where that
    line comes next.
    """

    def __init__(self, from_start: bool = False) -> None:
        self.from_start = from_start
        self.runs: dict[str, _Run] = {}

    def passed(self, pairs: list[tuple[str, str]]) -> None:
        """These stamped lines (in log order) were handed out."""
        for stream in {stream for stream, _ in pairs}:
            lines = [line for name, line in pairs if name == stream]
            last = _stamp_of(lines[-1])
            before = self.runs.get(stream)
            whole_run = self.from_start if before is None else before.whole_run
            run = 0
            for line in reversed(lines):
                if _stamp_of(line) != last:
                    whole_run = True
                    break
                run += 1
            else:
                if before is not None and last == before.stamp:
                    run += before.same
                elif before is not None:
                    whole_run = True
            self.runs[stream] = _Run(last, run, whole_run, lines[-1])

    def _keys(self) -> list[tuple[int, int]]:
        return [key for run in self.runs.values() if (key := stamp_key(run.stamp)) is not None]

    @property
    def since(self) -> str | None:
        """The engine's ``since`` for a catch-up read (Unix seconds with nanoseconds): the earliest stream's
        place; None: from the start."""
        keys = self._keys()
        if not keys:
            return None
        key = min(keys)
        return f"{key[0]}.{key[1]:09d}"

    def fresh_filter(self) -> Callable[[tuple[str, str]], bool]:
        """For the stamped lines of a catch-up read, in log order: True, per stream, from the first line not
        handed out on."""
        keys = self._keys()
        latest = max(keys) if keys else None
        places: dict[str, tuple[tuple[int, int] | None, int | None]] = {}
        for stream, run in self.runs.items():
            # skip None: every line with the stream's stamp
            places[stream] = (stamp_key(run.stamp), run.same if run.whole_run else None)
        found: set[str] = set()

        def fresh(pair: tuple[str, str]) -> bool:
            stream = pair[0]
            if stream in found:
                return True
            key, skip = places.get(stream, (latest, 0))
            if key is not None:
                line_key = stamp_key(_stamp_of(pair[1]))
                if line_key is None or line_key < key:
                    return False
                if line_key == key and (skip is None or skip):
                    if skip == 1 and pair[1] != self.runs[stream].last:
                        return False  # the follow lost a line of this run: the last one handed out is later
                    places[stream] = (key, None if skip is None else skip - 1)
                    return False
            found.add(stream)
            return True
        return fresh
