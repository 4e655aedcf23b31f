"""Rows into ClickHouse: a read loaded into a table, its batches with their deletion flag, and
the rows a table serves."""

import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.reads import Read
from user_code.sync.reread import HeldRows, held_rows, newer_than_held
from user_code.sync.settings import Progress, TableSpec
from user_code.sync.table import Session
from user_code.sync.target_table import DELETED_COLUMN, LIVE_ROWS, TargetTable
from user_code.sync.watermark import as_utc, latest

# A long load says how far it got this often; a short one only in its step's metadata (each
# log line is an event Dagster stores, and a run of many tables has many short steps).
PROGRESS_EVERY_S = 5.0

# ClickHouse would otherwise run ReplacingMergeTree's merge over each inserted block, to drop
# keys repeated within it: an extra pass and copy that cost about as much as the rest of the
# insert. A block comes from one Postgres query, which returns each key once, so there is
# nothing to drop; versions of a key across blocks are resolved by merges and FINAL as before.
_INSERT_SETTINGS = {"optimize_on_insert": 0}


def deleted_flags(batch: pa.RecordBatch, soft_delete_column: str | None) -> pa.Array:
    """`_is_deleted`: a true boolean, or any non-NULL value (a `deleted_at`), marks a deletion."""
    if soft_delete_column is None:
        return pa.nulls(batch.num_rows, pa.uint8()).fill_null(0)
    values = batch.column(soft_delete_column)
    flags = values.fill_null(False) if pa.types.is_boolean(values.type) else values.is_valid()
    return pc.cast(flags, pa.uint8())


def insert_batch(
    client: Client, target: TargetTable, batch: pa.RecordBatch, soft_delete_column: str | None
) -> None:
    table = pa.Table.from_batches([batch]).append_column(
        DELETED_COLUMN, deleted_flags(batch, soft_delete_column)
    )
    client.insert_arrow(target.name, table, database=target.database, settings=_INSERT_SETTINGS)


@dataclass(frozen=True)
class StepResult:
    """What one read loaded: its counts, the largest cursor values among its rows, and where
    it started."""

    rows_read: int
    rows_written: int
    seconds: float
    created_at: datetime | None  # the largest created_at among the rows read
    updated_at: datetime | None
    open_since: datetime | None  # the oldest transaction open as the read began, if known
    held_back: timedelta  # how much earlier an open transaction made the read start
    read_from: datetime | None  # where the cursor read started; None: the whole table
    # Live rows written under keys the target did not hold; None where a read cannot tell (a
    # read by the version finds keys whose older versions lie before its window).
    rows_added: int | None
    unseen: str | None = None  # why Postgres did not show its open transactions, if it did not

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def load(session: Session, spec: TableSpec, read: Read, target: TargetTable) -> StepResult:
    """`read` into `target`, leaving out rows ClickHouse holds at the same version or a newer
    one. The result is returned (and its watermarks may be stored) only once ClickHouse
    acknowledged every insert."""
    started = time.monotonic()
    cursor = read.cursor
    held = HeldRows.nothing()
    if cursor is not None and cursor.start is not None:
        held = held_rows(session.clickhouse, target, cursor.column, cursor.start)
    tally = _Tally(spec, target, held, session.progress, started)
    with closing(read.batches):
        for batch in tally.fresh(read.batches):
            insert_batch(session.clickhouse, target, batch, spec.soft_delete)
    counts_keys = cursor is None or cursor.column == spec.created_at
    return StepResult(
        tally.rows_read,
        tally.rows_written,
        time.monotonic() - started,
        tally.created_at,
        tally.updated_at,
        read.transactions.since,
        held_back=cursor.held_back if cursor else timedelta(0),
        read_from=cursor.start if cursor else None,
        rows_added=tally.rows_added if counts_keys else None,
        unseen=read.transactions.unseen,
    )


@dataclass
class _Tally:
    """What passes through one load: rows read, written and added, the cursor maxima."""

    spec: TableSpec
    target: TargetTable
    held: HeldRows
    progress: Progress
    started: float
    rows_read: int = 0
    rows_written: int = 0
    rows_added: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    _reported: float = field(default=0.0, repr=False)

    def fresh(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The batches' rows that are new to ClickHouse, counted on the way."""
        for batch in batches:
            self.rows_read += batch.num_rows
            self.created_at = latest(self.created_at, _max_time(batch, self.spec.created_at))
            self.updated_at = latest(self.updated_at, _max_time(batch, self.spec.updated_at))
            fresh, key_was_held = newer_than_held(batch, self.held, self.target)
            if fresh.num_rows:
                self.rows_written += fresh.num_rows
                self.rows_added += _live_rows(fresh.filter(pc.invert(key_was_held)), self.spec)
                yield fresh
            self._report()

    def _report(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed >= self._reported + PROGRESS_EVERY_S:
            self._reported = elapsed
            self.progress(
                f"{self.spec.source}: {self.rows_read:,} rows read, {self.rows_written:,} "
                f"written ({self.rows_read / elapsed:,.0f} rows/s)"
            )


def _live_rows(batch: pa.RecordBatch, spec: TableSpec) -> int:
    return int(batch.num_rows - (pc.sum(deleted_flags(batch, spec.soft_delete)).as_py() or 0))


def _max_time(batch: pa.RecordBatch, column: str | None) -> datetime | None:
    if column is None:
        return None
    value = pc.max(batch.column(column)).as_py()
    return None if value is None else as_utc(value)


def count_live_rows(client: Client, target: TargetTable) -> int:
    """Rows ClickHouse serves: one per key (`FINAL`), deletions left out."""
    sql = f"SELECT count() FROM {target.qualified_name} FINAL WHERE {LIVE_ROWS}"
    count: Any = client.query(sql).result_rows[0][0]
    return int(count)
