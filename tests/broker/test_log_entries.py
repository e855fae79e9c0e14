"""How the broker cuts executors' log lines into entries: each entry within the limit to the
byte, the pieces making up the line, full pieces, timestamps in order (no server)."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from colonyos.broker import reports
from colonyos.broker.reports import log_entries
from colonyos.errors import RecordTooLargeError
from colonyos.limits import HEADROOM_BYTES
from colonyos.models import LogEntry

# A cut that never ends fails here, not at the suite's minute.
pytestmark = pytest.mark.timeout(10)

_encode = msgspec.json.Encoder().encode

# A clock reading in nanoseconds, odd, as wide as today's (19 digits).
STAMP = 1_764_633_600_123_456_789

# Characters by the bytes each takes in a JSON string: ASCII, a control character (\u0001),
# and ones between (two and three bytes of UTF-8, a quote escaped, four bytes for an emoji).
ASCII = "a"
CONTROL = "\x01"
MIXED = 'ab\x01é"€\\😀\n' * 3


def blank(stamp: int = STAMP) -> LogEntry:
    return LogEntry(
        process_id="p" * 32, colony_name="dev", executor_name="exec-1", message="", timestamp=stamp
    )


def size(entry: LogEntry) -> int:
    return len(_encode(entry))


def entries(lines: list[str], limit: int, stamp: int = STAMP) -> list[LogEntry]:
    """At most a thousand entries, so that a cut that never ends fails instead of hanging."""
    max_payload = limit + HEADROOM_BYTES  # the server whose records may have ``limit`` bytes
    return list(itertools.islice(log_entries(blank(stamp), lines, max_payload), 1000))


def fitting(message: str, stamp: int = STAMP) -> int:
    """The smallest limit that takes ``message`` in one entry."""
    return size(msgspec.structs.replace(blank(stamp), message=message))


def pieces_of(line: str, limit: int) -> list[str]:
    got = entries([line], limit)
    assert "".join(e.message for e in got) == line
    assert all(e.message for e in got), "an empty piece"
    assert all(size(e) <= limit for e in got), [size(e) - limit for e in got]
    return [e.message for e in got]


def test_a_line_that_fits_to_the_byte_is_one_entry_and_one_byte_more_splits_it() -> None:
    for line in (ASCII * 40, CONTROL * 7, CONTROL * 2, MIXED):
        limit = fitting(line)
        assert entries([line], limit)[0].message == line
        assert len(pieces_of(line, limit - 1)) == 2


def test_a_limit_without_room_for_one_character_is_refused_not_cut_for_ever() -> None:
    # One character of six bytes fits to the byte; a byte less and no line could be cut.
    assert [e.message for e in entries([CONTROL * 3], fitting(CONTROL))] == [CONTROL] * 3
    for line in (CONTROL, ASCII):
        with pytest.raises(RecordTooLargeError) as refused:
            entries([line], fitting(CONTROL) - 1)
        assert refused.value.size == fitting(CONTROL)
        assert refused.value.limit == fitting(CONTROL) - 1
        assert "a log entry of one character would be" in refused.value.message


def test_lines_of_every_width_are_cut_within_the_limit_and_make_up_the_line() -> None:
    # Limits from one character's room to several pieces', around the fast path's edge
    # (six bytes a character and the quotes) for each length.
    for char in (ASCII, CONTROL, "é", "😀", '"', MIXED):
        for n in range(1, 13):
            line = char * n
            whole = fitting(line)
            for limit in range(fitting(CONTROL), whole + 8):
                pieces = pieces_of(line, limit)
                assert len(pieces) == 1 or limit < whole, (line, limit)


def test_a_long_line_is_cut_where_the_limit_falls_however_far_into_it() -> None:
    for line in (ASCII * 3000, CONTROL * 700, MIXED * 40, ASCII * 1500 + CONTROL * 400):
        for limit in (fitting(CONTROL) + 5, fitting("") + 97, fitting("") + 1000):
            pieces_of(line, limit)


def test_the_pieces_of_an_even_line_are_full_but_for_less_than_two_characters() -> None:
    for char, width in ((ASCII, 1), (CONTROL, 6), ("😀", 4), ("é", 2)):
        for room in (8, 9, 100, 101, 500, 501):
            limit = fitting("") + room
            pieces = pieces_of(char * 600, limit)
            assert len(pieces) > 1
            for piece in pieces[:-1]:
                short = limit - fitting(piece)
                assert 0 <= short < 2 * width, (char, room, short)


def test_timestamps_count_up_one_a_piece_from_the_blanks_across_lines() -> None:
    lines = ["first", CONTROL * 50, "last"]
    got = entries(lines, fitting(CONTROL * 20))
    assert len(got) > 4
    assert [e.timestamp for e in got] == [STAMP + i for i in range(len(got))]
    assert got[0].message == "first" and got[-1].message == "last"


@pytest.mark.parametrize("stamp", [STAMP, 10**18 - 3, 0])
def test_no_entry_outgrows_the_limit_whatever_its_timestamp(stamp: int) -> None:
    # Measured with the blank's own timestamp, the entries past 10**18 - 1 would take one digit
    # more than measured (the lines of 21 characters, one too many, would go whole); measured
    # with timestamp 0, every entry 18 or 19 more.
    limit = fitting(ASCII * 20, STAMP)
    lines = [ASCII * 200, *[ASCII * 21] * 6]
    got = entries(lines, limit, stamp)
    assert len(got) > 12
    assert all(size(e) <= limit for e in got), [size(e) - limit for e in got]
    assert "".join(e.message for e in got) == "".join(lines)


def test_the_cut_estimates_from_the_size_rather_than_a_character_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two encodings a piece (too long, then its estimate) and the blank's measure; shrinking a
    # piece one character a pass would encode half a megabyte some 400,000 times.
    calls = most = 0

    def counted(value: object) -> bytes:
        nonlocal calls
        calls += 1
        assert calls <= most, f"more than {most} encodings"
        return _encode(value)

    for char in (ASCII, CONTROL, "😀", "é"):
        for room in (10_000, 500_000):
            line = char * 1_000_000
            pieces_at_most = len(_encode(line)) // (room - 12) + 1
            most, calls = 1 + 2 * pieces_at_most, 0
            with monkeypatch.context() as patch:
                patch.setattr(reports, "_encode", counted)
                pieces = pieces_of(line, fitting("") + room)
            assert 1 < len(pieces) <= pieces_at_most
