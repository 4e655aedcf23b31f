"""The incremental cursor: where a read starts and which value is stored next.

Postgres' `now()` is the transaction's start time, so a transaction that commits late can
write rows whose timestamp is already behind the stored watermark. Reads therefore start
`lookback` before the watermark (`>=`, so ties at the boundary are read again, never lost),
and ReplacingMergeTree, versioned by `updated_at`, makes the re-read rows harmless. The next
watermark is the largest value among the rows actually read, never the wall clock.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Cursor:
    column: str
    last_value: datetime | None
    lookback: timedelta

    @property
    def start(self) -> datetime | None:
        """The lower bound of the next read, or None to read everything."""
        return None if self.last_value is None else self.last_value - self.lookback


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
