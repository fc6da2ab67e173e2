"""LogParser, option parsing and message encoding as plain functions (the streams themselves are tested
against the real dockerd in test_logs.py)."""

from __future__ import annotations

import json
import struct

import pytest

from nekzusd.errors import ApiError
from nekzusd.logs import LineEncoder, Options, parse_options
from nekzusd.runtimes.logparse import (MAX_FRAME, MAX_LINE, LogCursor, LogParser, line_time, stamp_key,
                                       stamped_lines)
from nekzusd.runtimes import LogLine


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def feed_all(parser: LogParser, chunks: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.flush()


def test_frames_keep_streams_apart_and_in_order():
    data = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"out 2\nout 3\n") + frame(2, b"err 2\n")
    assert feed_all(LogParser(True), [data]) == [
        ("stdout", "out 1"), ("stderr", "err 1"), ("stdout", "out 2"), ("stdout", "out 3"), ("stderr", "err 2")]


def test_every_split_point_gives_the_same_lines():
    """Headers and payloads cut anywhere (byte by byte included) across reads."""
    data = (frame(1, b"alpha\r\nbe") + frame(2, b"warn\n") + frame(1, b"ta\n") + frame(1, "caf\u00e9\n".encode())
            + frame(2, b"partial"))
    expected = [("stdout", "alpha"), ("stderr", "warn"), ("stdout", "beta"), ("stdout", "caf\u00e9"),
                ("stderr", "partial")]
    for cut in range(1, len(data)):
        assert feed_all(LogParser(True), [data[:cut], data[cut:]]) == expected, cut
    assert feed_all(LogParser(True), [bytes([b]) for b in data]) == expected


def test_a_line_split_across_frames_is_joined_per_stream():
    data = frame(1, b"hel") + frame(2, b"other\n") + frame(1, b"lo\n")
    assert feed_all(LogParser(True), [data]) == [("stderr", "other"), ("stdout", "hello")]


def test_invalid_utf8_is_replaced_and_crlf_removed():
    data = frame(1, b"bad \xff\xfe byte\r\n") + frame(1, b"split \xc3") + frame(1, b"\xa9\n")
    assert feed_all(LogParser(True), [data]) == [("stdout", "bad \ufffd\ufffd byte"), ("stdout", "split \u00e9")]


def test_an_oversized_frame_is_skipped_and_later_lines_survive():
    parser = LogParser(True)
    big = frame(1, b"x" * (MAX_FRAME + 1))
    data = frame(1, b"before\n") + big + frame(2, b"after\n") + frame(1, b"still here\n")
    # fed in 32 KiB reads, as the runtime does
    chunks = [data[i:i + 32768] for i in range(0, len(data), 32768)]
    assert feed_all(parser, chunks) == [("stdout", "before"), ("stderr", "after"), ("stdout", "still here")]
    assert parser.skipped_frames == 1


def test_a_frame_of_exactly_the_limit_is_kept():
    line = b"y" * (MAX_FRAME - 1) + b"\n"
    assert feed_all(LogParser(True), [frame(1, line)]) == [("stdout", "y" * (MAX_FRAME - 1))]


def test_raw_tty_stream():
    parser = LogParser(False)
    assert feed_all(parser, [b"one\r\ntw", b"o\r\n\r\nthree"]) == [
        ("stdout", "one"), ("stdout", "two"), ("stdout", ""), ("stdout", "three")]


def test_an_endless_line_is_handed_out_in_bounded_pieces():
    parser = LogParser(False)
    out = []
    for _ in range(MAX_LINE * 2 // 32768 + 3):
        out += parser.feed(b"z" * 32768)
        assert len(parser._partial["stdout"]) <= MAX_LINE
    out += parser.feed(b"\n")
    assert [len(text) for _, text in out][:2] == [MAX_LINE, MAX_LINE]
    assert sum(len(text) for _, text in out) == (MAX_LINE * 2 // 32768 + 3) * 32768


def test_a_line_longer_than_the_limit_inside_one_block_is_cut():
    long_line = b"a" * (MAX_LINE + 10)
    out = feed_all(LogParser(False), [long_line[: MAX_LINE - 5], long_line[MAX_LINE - 5:] + b"\nnext\n"])
    assert [len(t) for _, t in out] == [MAX_LINE, 10, 4]


def test_empty_frames_and_empty_lines():
    data = frame(1, b"") + frame(1, b"\n\n") + frame(2, b"")
    assert feed_all(LogParser(True), [data]) == [("stdout", ""), ("stdout", "")]


@pytest.mark.parametrize("data, expected", [
    ({}, Options(100, True, False, False)),
    ({"tail": 5, "follow": False, "timestamps": True, "batch": True}, Options(5, False, True, True)),
    ({"tail": 0}, Options(0)),
    ({"tail": 5000}, Options(1000)),
    ({"tail": 20.0}, Options(20)),
])
def test_options(data, expected):
    assert parse_options(data) == expected


@pytest.mark.parametrize("tail", [-1, "10", None, True, 2.5, [], float("nan")])
def test_invalid_tail(tail):
    with pytest.raises(ApiError) as info:
        parse_options({"tail": tail})
    assert info.value.code == "INVALID_TAIL"


@pytest.mark.parametrize("field", ["follow", "timestamps", "batch"])
def test_flags_must_be_booleans(field):
    with pytest.raises(ApiError) as info:
        parse_options({field: "yes"})
    assert info.value.code == "INVALID_MESSAGE" and field in info.value.message


def test_encoder_matches_json_dumps():
    encoder = LineEncoder('ab"c')
    line = LogLine("stderr", 'quote " backslash \\ tab \t caf\u00e9 \u2028 \x00', None)
    assert json.loads(encoder.line(line, 1700000000)) == {"type": "container.logs", "data": {
        "containerId": 'ab"c', "stream": "stderr", "message": line.message, "timestamp": 1700000000}}
    lines = [LogLine("stdout", "a", 1700000005.7), LogLine("stderr", "b", None)]
    assert json.loads(encoder.batch(lines, 1700000009)) == {"type": "container.logs.batch", "data": {
        "containerId": 'ab"c', "lines": [{"stream": "stdout", "message": "a", "timestamp": 1700000005},
                                        {"stream": "stderr", "message": "b", "timestamp": 1700000009}]}}


def test_line_time():
    assert line_time("2023-11-14T22:13:20.123456789Z hello") == 1700000000
    assert line_time("2023-11-14T22:13:20Z hello") == 1700000000
    assert line_time("hello world, no timestamp here") is None
    assert line_time("short") is None


STAMP = "2023-11-14T22:13:20.123456789Z"
LATER = "2023-11-14T22:13:20.987654321Z"


def stamped_frame(stream: int, stamp: str, payload: bytes) -> bytes:
    return frame(stream, f"{stamp} ".encode() + payload)


def test_a_line_in_several_stamped_frames_keeps_only_the_first_stamp():
    """dockerd stores a long line as several entries, each stamped; the continuation stamps go, whatever they
    say and wherever the reads cut the stream (inside a stamp included)."""
    data = (stamped_frame(1, STAMP, b"a" * 100) + stamped_frame(2, LATER, b"err\n")
            + stamped_frame(1, LATER, b"b" * 100) + stamped_frame(1, STAMP, b"c\n") + stamped_frame(1, LATER, b"d\n"))
    expected = [("stderr", f"{LATER} err"), ("stdout", f"{STAMP} {'a' * 100}{'b' * 100}c"), ("stdout", f"{LATER} d")]
    for cut in range(1, len(data)):
        assert feed_all(LogParser(True, stamped=True), [data[:cut], data[cut:]]) == expected, cut
    assert feed_all(LogParser(True, stamped=True), [bytes([b]) for b in data]) == expected
    # unstamped parsing leaves text alone (no stamp was asked for, so a space is just a space)
    assert feed_all(LogParser(True), [frame(1, b"a b"), frame(1, b"c d\n")]) == [("stdout", "a bc d")]


def test_a_raw_stamped_line_drops_the_repeats_of_its_own_stamp():
    """TTY text shows no entry boundaries; dockerd stamps every piece of a line with the first piece's stamp."""
    data = f"{STAMP} {'x' * 50}{STAMP} {'y' * 50}{STAMP} z\r\n{LATER} says {STAMP} inside\r\n".encode()
    expected = [("stdout", f"{STAMP} {'x' * 50}{'y' * 50}z"), ("stdout", f"{LATER} says {STAMP} inside")]
    for cut in range(1, len(data)):
        assert feed_all(LogParser(False, stamped=True), [data[:cut], data[cut:]]) == expected, cut


@pytest.mark.parametrize("multiplexed", [True, False])
def test_stamped_long_lines_are_cut_by_their_text_and_every_piece_is_stamped(multiplexed):
    def entries(*pieces: bytes) -> list[bytes]:
        """As the engine sends a line stored in pieces: each stamped (multiplexed: one frame each)."""
        stamped = [f"{STAMP} ".encode() + piece for piece in pieces]
        return [frame(1, entry) for entry in stamped] if multiplexed else stamped

    piece = 16 * 1024
    whole = entries(*[b"w" * piece] * (MAX_LINE // piece - 1), b"w" * piece + b"\n")  # exactly the limit
    assert feed_all(LogParser(multiplexed, stamped=True), whole) == [("stdout", f"{STAMP} {'w' * MAX_LINE}")]
    parser = LogParser(multiplexed, stamped=True)
    out = []
    count = MAX_LINE * 2 // piece + 3
    for entry in entries(*[b"z" * piece] * count):  # an endless line
        out += parser.feed(entry)
        assert len(parser._partial["stdout"]) <= MAX_LINE + len(STAMP) + 1
    out += parser.feed(entries(b"\n")[0])
    assert all(text.startswith(f"{STAMP} z") and STAMP not in text[len(STAMP):] for _, text in out)
    assert [len(text) - len(STAMP) - 1 for _, text in out][:2] == [MAX_LINE, MAX_LINE]
    assert sum(len(text) - len(STAMP) - 1 for _, text in out) == count * piece


def test_stamped_lines_cut_the_stamp_unless_it_is_wanted():
    pairs = [("stdout", f"{STAMP} hello world"), ("stderr", f"{STAMP} "), ("stdout", f"{STAMP}  two spaces")]
    assert stamped_lines(pairs, False) == [
        LogLine("stdout", "hello world"), LogLine("stderr", ""), LogLine("stdout", " two spaces")]
    assert stamped_lines(pairs[:1], True) == [LogLine("stdout", f"{STAMP} hello world", 1700000000)]


def test_stamp_key_orders_stamps_of_any_width_and_zone():
    assert stamp_key(STAMP) == (1700000000, 123456789)
    assert stamp_key("2023-11-14T22:13:20Z") == (1700000000, 0)
    assert stamp_key("2023-11-14T23:13:20.5+01:00") == (1700000000, 500000000)
    assert stamp_key("2023-11-14T22:13:20.4Z") > stamp_key("2023-11-14T22:13:20.39Z")  # not so as text
    assert stamp_key("hello") is None and stamp_key("2023-11-14T22:13:20.1234567891Z") is None


def lines_at(*stamps: str) -> list[tuple[str, str]]:
    return [("stdout", f"{stamp} line {i}") for i, stamp in enumerate(stamps)]


def test_cursor_counts_the_lines_that_share_the_last_stamp():
    def place(cursor: LogCursor, stream: str = "stdout") -> tuple[str, int, bool]:
        run = cursor.runs[stream]
        return run.stamp, run.same, run.whole_run

    cursor = LogCursor()
    assert cursor.since is None
    cursor.passed([])
    assert cursor.runs == {}
    cursor.passed(lines_at(LATER))
    assert place(cursor) == (LATER, 1, False)  # the run may have begun earlier
    cursor.passed(lines_at(LATER, LATER))  # the run goes on across reads
    assert place(cursor) == (LATER, 3, False)
    cursor.passed(lines_at(LATER, STAMP))  # a new last stamp starts a new run, seen whole
    assert place(cursor) == (STAMP, 1, True)
    assert cursor.since == "1700000000.123456789"
    cursor = LogCursor()
    cursor.passed(lines_at(STAMP))
    cursor.passed(lines_at(LATER, LATER))  # another stamp in an earlier read
    assert place(cursor) == (LATER, 2, True)
    cursor = LogCursor(from_start=True)  # the stream began at the log's start: every run is whole
    cursor.passed(lines_at(STAMP, STAMP))
    assert place(cursor) == (STAMP, 2, True)
    # each output stream has its own place (their stamps are in log order only within one stream);
    # the catch-up starts at the earliest
    cursor = LogCursor()
    cursor.passed([("stdout", f"{STAMP} a"), ("stdout", f"{LATER} b"), ("stderr", f"{STAMP} c")])
    assert place(cursor) == (LATER, 1, True) and place(cursor, "stderr") == (STAMP, 1, False)
    assert cursor.since == "1700000000.123456789"


def catch_up(cursor: LogCursor, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    fresh = cursor.fresh_filter()
    return [pair for pair in pairs if fresh(pair)]


def test_catch_up_hands_out_only_what_was_not_handed_out():
    handed_out = lines_at(STAMP, LATER, LATER)
    cursor = LogCursor()
    cursor.passed(handed_out)
    # a read from ``since`` gives the lines at the cursor's stamp again, then the missed ones (one shares it)
    read = handed_out[1:] + [("stdout", f"{LATER} missed 1"), ("stderr", f"{LATER} missed 2"),
                             ("stdout", f"{STAMP} stamped earlier, stored later")]
    assert catch_up(cursor, read) == read[2:]
    assert catch_up(cursor, handed_out) == []  # a read holding nothing new
    assert catch_up(LogCursor(), read) == read  # nothing handed out, from the log's start: all of it


def test_catch_up_after_a_run_not_seen_whole_gives_only_later_stamps():
    """Whole-second stamps (Podman): the stream began inside a second whose earlier lines it never saw,
    so counting cannot place it; lines of that second are not repeated, later ones come."""
    second, next_second = "2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z"
    cursor = LogCursor()
    cursor.passed(lines_at(second, second))
    read = lines_at(second, second, second, second, next_second)  # two before the stream, two handed out
    assert catch_up(cursor, read) == read[4:]


def engine_log(entries: list[tuple[int, str, bytes]], since: str | None = None) -> bytes:
    """A stamped multiplexed log read as dockerd gives it: the stored entries in file order, from ``since``
    on (inclusive, by each entry's own stamp, not by its place in the file)."""
    floor = None if since is None else tuple(int(part) for part in since.split("."))
    return b"".join(stamped_frame(stream, stamp, payload) for stream, stamp, payload in entries
                    if floor is None or stamp_key(stamp) >= floor)


def follow_then_catch_up(entries: list[tuple[int, str, bytes]], seen: int) -> list[tuple[str, str]]:
    """What a client gets when the follow stream (from the log's start) ends after ``seen`` entries and a
    catch-up read from the cursor follows."""
    parser = LogParser(True, stamped=True)
    cursor = LogCursor(from_start=True)
    handed_out = parser.feed(engine_log(entries[:seen]))
    cursor.passed(handed_out)
    catch_up_read = LogParser(True, stamped=True)
    read = catch_up_read.feed(engine_log(entries, cursor.since)) + catch_up_read.flush()
    return handed_out + catch_up(cursor, read)


T0, T1, T2 = "2023-11-14T22:13:20.100000000Z", "2023-11-14T22:13:20.200000000Z", "2023-11-14T22:13:20.300000000Z"


def test_a_stderr_line_stamped_before_a_stdout_line_but_stored_after_it_is_not_repeated():
    """dockerd stamps each stream in its own goroutine and then stores the line: under load ``err-after`` was
    stamped first and stored last. A cursor taken as one place in the log (the last line's stamp) read
    ``after`` again: the full-suite failure [2097152, 5, 5]."""
    entries = [(1, T0, b"x" * 100 + b"\n"), (1, T2, b"after\n"), (2, T1, b"err-after\n")]
    whole = [("stdout", f"{T0} {'x' * 100}"), ("stdout", f"{T2} after"), ("stderr", f"{T1} err-after")]
    assert follow_then_catch_up(entries, len(entries)) == whole  # the stream got all: the catch-up adds nothing
    for seen in range(len(entries)):  # the stream ended early
        got = follow_then_catch_up(entries, seen)
        assert len(got) == len(set(got)), (seen, got)


def test_a_line_of_one_stream_stored_among_the_pieces_of_a_long_line_is_not_repeated():
    """Measured under load: dockerd stores ``err-after`` among the 16 KiB pieces of the long stdout line, and
    every piece carries the first piece's stamp, earlier than the stderr line's."""
    entries = [(1, T0, b"x" * 100), (2, T1, b"err-after\n"), (1, T0, b"y" * 100), (1, T0, b"\n"),
               (1, T2, b"after\n")]
    for seen in range(len(entries) + 1):
        got = follow_then_catch_up(entries, seen)
        assert len(got) == len(set(got)), (seen, [(stream, text[:40]) for stream, text in got])


def test_a_line_the_follow_lost_does_not_make_the_catch_up_repeat_the_last_one():
    """Podman 4's follow loses a line now and then (seen once in 14 suite runs: ``n86``), and its stamps are
    whole seconds: counting alone then placed the catch-up a line early, and ``n87`` came twice."""
    second, next_second = "2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z"
    stored = [("stdout", f"{stamp} n{i}") for i, stamp in enumerate([second] * 5 + [next_second] * 2)]
    for lost in range(4):
        cursor = LogCursor(from_start=True)
        cursor.passed(stored[:lost] + stored[lost + 1:5])
        assert catch_up(cursor, stored) == stored[5:], lost
    cursor = LogCursor(from_start=True)
    cursor.passed(stored[:4])  # the run's last line lost: the catch-up gives it
    assert catch_up(cursor, stored) == stored[4:]
    # repeated text is placed by counting, as before
    same = [("stdout", f"{second} tick")] * 4 + [("stdout", f"{next_second} tick")]
    cursor = LogCursor(from_start=True)
    cursor.passed(same[:3])
    assert catch_up(cursor, same) == same[3:]
