"""LogParser, option parsing and message encoding as plain functions (the streams themselves are tested
against the real dockerd in test_logs.py)."""

from __future__ import annotations

import json
import struct

import pytest

from nekzusd.errors import ApiError
from nekzusd.logs import MAX_FRAME, MAX_LINE, LineEncoder, LogParser, Options, line_time, parse_options
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
