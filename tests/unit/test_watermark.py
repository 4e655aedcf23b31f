"""The cursor's arithmetic: where a read starts, how far an open transaction holds it back."""

from datetime import UTC, datetime, timedelta, timezone

from user_code.sync.watermark import Cursor, as_utc, earliest, from_text, latest, to_text

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def test_first_read_has_no_start():
    assert Cursor("updated_at", None, MINUTE).start is None
    assert Cursor("updated_at", None, MINUTE, open_since=T).held_back == timedelta(0)


def test_read_starts_lookback_before_the_watermark():
    assert Cursor("updated_at", T, MINUTE).start == T - MINUTE


def test_an_older_open_transaction_moves_the_start_back():
    cursor = Cursor("updated_at", T, MINUTE, open_since=T - 10 * MINUTE)
    assert cursor.start == T - 10 * MINUTE
    assert cursor.held_back == 9 * MINUTE


def test_a_newer_open_transaction_changes_nothing():
    cursor = Cursor("updated_at", T, MINUTE, open_since=T - timedelta(seconds=5))
    assert cursor.start == T - MINUTE
    assert cursor.held_back == timedelta(0)


def test_watermark_text_keeps_microseconds_and_the_instant():
    plus_two = T.astimezone(timezone(timedelta(hours=2)))
    assert to_text(plus_two) == "2026-03-01T12:00:00.123456+00:00"
    assert from_text(to_text(plus_two)) == T
    assert to_text(None) is None and from_text(None) is None and from_text("") is None


def test_naive_values_are_wall_times_read_as_utc():
    assert as_utc(datetime(2026, 3, 1, 12, 0)) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_latest_and_earliest_skip_missing_values():
    assert latest(None, T, T - MINUTE) == T
    assert earliest(None, T, T - MINUTE) == T - MINUTE
    assert latest(None, None) is None and earliest() is None
