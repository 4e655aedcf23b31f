"""Rows into ClickHouse: a read loaded into a table as one streaming INSERT, its batches with
their deletion flag, and the rows a table serves."""

import os
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.reads import Read
from user_code.sync.reread import HeldRows, held_rows, newer_than_held
from user_code.sync.settings import Progress, TableSpec
from user_code.sync.table import Session
from user_code.sync.target_table import DELETED_COLUMN, LIVE_ROWS, TargetTable, quote_ch_name
from user_code.sync.watermark import as_utc, latest

# A long load says how far it got this often; a short one only in its step's metadata (each
# log line is an event Dagster stores, and a run of many tables has many short steps).
PROGRESS_EVERY_S = 5.0

# ClickHouse would otherwise run ReplacingMergeTree's merge over each inserted block, to drop
# keys repeated within it: an extra pass and copy that cost about as much as the rest of the
# insert. A read returns each key once (a snapshot's partitions are disjoint), so there is
# nothing to drop; versions of a key across blocks are resolved by merges and FINAL as before.
# The rows arrive as one stream: more threads only squashed more blocks at once (peak memory
# of an 8M-row load 2.0-2.2 GB with chDB's default, 1.5 GB with one).
_INSERT_SETTINGS = {"optimize_on_insert": 0, "max_threads": 1}
# ClickHouse's own `min_insert_block_size_rows`: a load's parts hold about this many rows, or
# fewer where the table's `insert_block_mb` fills first.
INSERT_BLOCK_ROWS = 1_048_449
# The end of an Arrow IPC stream: a message of length 0.
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def deleted_flags(batch: pa.RecordBatch, soft_delete_column: str | None) -> pa.Array:
    """`_is_deleted`: a true boolean, or any non-NULL value (a `deleted_at`), marks a deletion."""
    if soft_delete_column is None:
        return pa.nulls(batch.num_rows, pa.uint8()).fill_null(0)
    values = batch.column(soft_delete_column)
    flags = values.fill_null(False) if pa.types.is_boolean(values.type) else values.is_valid()
    return pc.cast(flags, pa.uint8())


def insert_batches(
    client: Client,
    target: TargetTable,
    batches: Iterable[pa.RecordBatch],
    soft_delete_column: str | None,
    block_mb: int,
) -> None:
    """Every batch of one read in one INSERT, streamed to ClickHouse as the batches arrive.

    ClickHouse squashes the stream into blocks of INSERT_BLOCK_ROWS rows or `block_mb`, whichever
    fills first, and writes each block as one part, as it does for its own `INSERT … SELECT FROM
    postgresql()`: memory holds one block, whatever the table's size.
    An INSERT per batch made parts a third that size, which background merges re-read while the
    load still ran. The blocks are committed one by one: a read that fails leaves those written
    before it, which a rerun writes again at the same version (ReplacingMergeTree keeps one).
    """
    rows = (
        batch.append_column(DELETED_COLUMN, deleted_flags(batch, soft_delete_column))
        for batch in batches
        if batch.num_rows
    )
    first = next(rows, None)
    if first is None:
        return
    settings = {
        **_INSERT_SETTINGS,
        "min_insert_block_size_rows": INSERT_BLOCK_ROWS,
        "min_insert_block_size_bytes": block_mb << 20,
    }
    failures: list[Exception] = []
    stream = _failures_kept(chain([first], rows), failures)
    in_process = urlsplit(client.uri).scheme == "chdb"
    insert = insert_in_process if in_process else insert_over_http
    try:
        insert(client, target, first.schema, stream, settings)
    except Exception:
        if failures:  # the read's own error, not ClickHouse's report that its input broke off
            raise failures[0] from None
        raise


def _failures_kept(
    batches: Iterator[pa.RecordBatch], failures: list[Exception]
) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    except Exception as error:
        failures.append(error)
        raise


def insert_in_process(
    client: Client,
    target: TargetTable,
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    settings: dict[str, int],
) -> None:
    """chDB reads the batches itself through its `Python()` table function, which pulls them
    from an Arrow stream on its own thread; clickhouse-connect would spool the whole input to a
    file first. A second connection to the engine the client opened costs nothing."""
    import chdb

    # Read by name from this frame by `Python(pg2ch_rows)` below, unseen by linters.
    pg2ch_rows = pa.RecordBatchReader.from_batches(schema, batches)  # noqa: F841
    columns = ", ".join(quote_ch_name(name) for name in schema.names)
    options = ", ".join(f"{name} = {value}" for name, value in settings.items())
    connection = chdb.connect(os.path.realpath(urlsplit(client.uri).path))
    try:
        connection.query(
            f"INSERT INTO {target.qualified_name} ({columns}) "
            f"SELECT {columns} FROM Python(pg2ch_rows) SETTINGS {options}"
        )
    finally:
        connection.close()


def insert_over_http(
    client: Client,
    target: TargetTable,
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    settings: dict[str, int],
) -> None:
    """One HTTP request whose body is an Arrow IPC stream, sent chunk by chunk as the batches
    arrive (clickhouse-connect never replays such a body: a broken request fails the step)."""
    client.raw_insert(
        target.qualified_name, schema.names, arrow_stream(schema, batches), settings, "ArrowStream"
    )


def arrow_stream(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> Generator[bytes, None, None]:
    """The Arrow IPC stream format: the schema, each batch, the end marker."""
    yield schema.serialize().to_pybytes()
    for batch in batches:
        yield batch.serialize().to_pybytes()
    yield _END_OF_STREAM


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
        fresh = tally.fresh(read.batches)
        insert_batches(session.clickhouse, target, fresh, spec.soft_delete, spec.insert_block_mb)
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
