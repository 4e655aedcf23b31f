"""The incremental cursor: where a read starts and which value is stored next.

Postgres' `now()` is the transaction's start time, so a transaction that commits late can
write rows whose timestamp is already behind the stored watermark. Each read therefore also
records when the oldest transaction then open in the source began (`open_since`): rows the
read could not see carry that time or later, however long their transaction stays open. The
next read starts at the earlier of that time and `watermark - lookback`; `lookback` covers
rows stamped by another clock than the database's (an application's), and is all there is
where Postgres does not show other sessions' transactions. Reads use `>=`, so ties at the
boundary are read again, never lost, and ReplacingMergeTree, versioned by `updated_at`, makes
re-read rows harmless. The next watermark is the largest value among the rows actually read,
never the wall clock.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Cursor:
    column: str
    watermark: datetime | None  # the largest value read so far, None before the first read
    lookback: timedelta
    open_since: datetime | None = None  # oldest open transaction at the last read, if known

    @property
    def start(self) -> datetime | None:
        """The lower bound of the next read, or None to read everything."""
        if self.watermark is None:
            return None
        return earliest(self.watermark - self.lookback, self.open_since)

    @property
    def held_back(self) -> timedelta:
        """How much earlier than `watermark - lookback` an open transaction makes the start."""
        if self.watermark is None or self.open_since is None:
            return timedelta(0)
        return max(self.watermark - self.lookback - self.open_since, timedelta(0))


def to_text(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat(timespec="microseconds")


def from_text(text: str | None) -> datetime | None:
    return None if not text else as_utc(datetime.fromisoformat(text))


def as_utc(value: datetime) -> datetime:
    """Naive values (Postgres `timestamp`) are wall times read as UTC, as ClickHouse stores them."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def latest(*values: datetime | None) -> datetime | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def earliest(*values: datetime | None) -> datetime | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None
