"""One table's sync steps: the initial snapshot, new records and updates, batch by batch."""

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from user_code.sync.compare import (
    Comparison,
    KeyRanges,
    Reconciliation,
    compare_content,
    reconcile_deletes,
)
from user_code.sync.errors import SyncError
from user_code.sync.extract import (
    OpenTransactions,
    SourceTable,
    connect,
    count_rows,
    has_unique_key,
    max_timestamp,
    open_transactions,
    read_ahead,
)
from user_code.sync.load import (
    TargetTable,
    ensure_table,
    insert_batch,
    loaded_row_keys,
    without_loaded_rows,
)
from user_code.sync.snapshot import page_ranges, relation_pages, share_snapshot
from user_code.sync.watermark import Cursor, latest

_TIMESTAMP_TYPES = {"timestamp", "timestamptz"}


@dataclass(frozen=True)
class TableSettings:
    """What the engine needs to know of one table, whatever configuration it came from."""

    source: str  # schema.table in Postgres
    target: str  # the ClickHouse table's name
    primary_key: tuple[str, ...]
    created_at: str
    updated_at: str
    soft_delete: str | None = None
    null_arrays_as_empty: bool = False  # nullable arrays as native Arrays, not JSON text
    snapshot_partitions: int = 1  # connections reading the initial snapshot side by side


@dataclass(frozen=True)
class StepResult:
    rows_read: int
    rows_written: int
    seconds: float
    created_at: datetime | None  # the largest created_at among the rows read
    updated_at: datetime | None
    open_since: datetime | None  # the oldest transaction open as the read began, if known
    held_back: timedelta  # how much earlier an open transaction made the read start

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


class TableSync:
    def __init__(
        self,
        spec: TableSettings,
        postgres: adbc.Connection,
        clickhouse: Client,
        database: str,
        log: Callable[[str], None] = lambda message: None,
        postgres_url: str | None = None,
    ):
        """`postgres_url` opens the connections of a partitioned snapshot's other partitions."""
        self.spec = spec
        self.postgres = postgres
        self.postgres_url = postgres_url
        self.clickhouse = clickhouse
        self.log = log
        self._told_unseen = False
        self.source = SourceTable.from_catalog(postgres, spec.source, spec.null_arrays_as_empty)
        self._check_columns()
        self.target = TargetTable(
            database=database,
            name=spec.target,
            columns=self.source.mappings,
            primary_key=spec.primary_key,
            version_column=spec.updated_at,
        )

    def _check_columns(self) -> None:
        for field in ("created_at", "updated_at"):
            column = self.source.column(getattr(self.spec, field))
            if column.type.name not in _TIMESTAMP_TYPES:
                raise SyncError(
                    f"{self.spec.source}.{column.name}: `{field}` must be a timestamp or "
                    f"timestamptz column, not {column.type.name}."
                )
        updated_at = self.source.column(self.spec.updated_at)
        if updated_at.nullable:
            raise SyncError(
                f"{self.spec.source}.{updated_at.name}: `updated_at` must be NOT NULL: it is the "
                "version that decides which copy of a row ClickHouse keeps."
            )
        for name in self.spec.primary_key:
            if self.source.column(name).nullable:
                raise SyncError(f"{self.spec.source}.{name}: primary key columns must be NOT NULL.")
        if not has_unique_key(self.postgres, self.spec.source, self.spec.primary_key):
            raise SyncError(
                f"{self.spec.source}: no primary key or unique index on "
                f"({', '.join(self.spec.primary_key)}); rows sharing a key would collapse into "
                "one in ClickHouse. Add one, or set `primary_key` to the table's real key."
            )
        if self.spec.soft_delete:
            self.source.column(self.spec.soft_delete)

    def prepare(self) -> bool:
        """Create or update the ClickHouse table; True when it did not exist."""
        return ensure_table(self.clickhouse, self.target)

    def snapshot(self) -> StepResult:
        """The whole table at one instant, read in `snapshot_partitions` ranges side by side.

        Batches are inserted one at a time, whichever partition they come from; the step
        returns (and its watermarks may be stored) only after every partition's last insert
        was acknowledged.
        """
        partitions = self.spec.snapshot_partitions
        if partitions > 1 and self.postgres_url is None:
            raise SyncError(
                f"{self.spec.source}: snapshot_partitions = {partitions} needs the Postgres URL "
                "to open a connection per partition."
            )
        transactions = self._open_transactions()
        conditions = page_ranges(relation_pages(self.postgres, self.spec.source), partitions)
        with ExitStack() as stack:
            connections = [self.postgres]
            for _ in conditions[1:]:
                connections.append(stack.enter_context(connect(self.postgres_url)))
            share_snapshot(connections)
            sources = [
                self.source.read(connection, self.source.select_sql(condition))
                for connection, condition in zip(connections, conditions, strict=True)
            ]
            return self._load(read_ahead(*sources), None, transactions)

    def new_records(self, cursor: Cursor) -> StepResult:
        cursor = self._in_column_terms(cursor)
        if cursor.start is None:
            return self.snapshot()
        sql = self.source.cursor_sql(cursor.column)
        return self._copy(sql, (self.source.bind(cursor.column, cursor.start),), cursor)

    def updates(self, cursor: Cursor, created_up_to: datetime | None) -> StepResult:
        """Rows changed since the cursor among those created up to the new-records watermark."""
        cursor = self._in_column_terms(cursor)
        if cursor.start is None:
            return self.snapshot()
        start = self.source.bind(cursor.column, cursor.start)
        if created_up_to is None:
            return self._copy(self.source.cursor_sql(cursor.column), (start,), cursor)
        sql = self.source.cursor_sql(cursor.column, self.spec.created_at)
        bound = self.source.bind(self.spec.created_at, created_up_to)
        return self._copy(sql, (start, bound), cursor)

    def _in_column_terms(self, cursor: Cursor) -> Cursor:
        """The cursor with its stored open-transaction time as the column's values express it."""
        if cursor.open_since is None:
            return cursor
        since = self.source.in_column_terms(self.postgres, cursor.column, cursor.open_since)
        cursor = replace(cursor, open_since=since)
        if cursor.held_back:
            self.log(
                f"{self.spec.source}: a transaction open since {since} at the last read could "
                f"still commit rows stamped then: `{cursor.column}` is read from there, "
                f"{cursor.held_back} before watermark - lookback"
            )
        return cursor

    def _open_transactions(self) -> OpenTransactions:
        transactions = open_transactions(self.postgres)
        if transactions.unseen and not self._told_unseen:
            self.log(f"{self.spec.source}: {transactions.unseen}")
            self._told_unseen = True
        return transactions

    def _copy(self, sql: str, parameters: tuple, cursor: Cursor) -> StepResult:
        """Read `sql` into ClickHouse from `cursor.start` on."""
        transactions = self._open_transactions()
        batches = read_ahead(self.source.read(self.postgres, sql, parameters))
        return self._load(batches, cursor, transactions)

    def _load(
        self,
        batches: Iterator[pa.RecordBatch],
        cursor: Cursor | None,
        transactions: OpenTransactions,
    ) -> StepResult:
        """Insert `batches`, leaving out rows ClickHouse already holds at the same version."""
        started = time.monotonic()
        loaded = (
            loaded_row_keys(self.clickhouse, self.target, cursor.start)
            if cursor is not None
            else pa.array([], pa.string())
        )
        rows_read = rows_written = 0
        created_at = updated_at = None
        with closing(batches):
            for batch in batches:
                rows_read += batch.num_rows
                created_at = latest(created_at, max_timestamp(batch, self.spec.created_at))
                updated_at = latest(updated_at, max_timestamp(batch, self.spec.updated_at))
                fresh = without_loaded_rows(batch, loaded, self.target)
                if fresh.num_rows:
                    insert_batch(self.clickhouse, self.target, fresh, self.spec.soft_delete)
                    rows_written += fresh.num_rows
                elapsed = time.monotonic() - started
                self.log(
                    f"{self.spec.source}: {rows_read} rows read, {rows_written} written "
                    f"({rows_read / elapsed:,.0f} rows/s), updated_at up to {updated_at}"
                )
        seconds = time.monotonic() - started
        return StepResult(
            rows_read,
            rows_written,
            seconds,
            created_at,
            updated_at,
            transactions.since,
            cursor.held_back if cursor else timedelta(0),
        )

    def reconcile_deletes(self) -> Reconciliation:
        """Tombstones for keys ClickHouse still serves but Postgres no longer has."""
        ranges = KeyRanges(self.postgres, self.source, self.target)
        return reconcile_deletes(self.postgres, self.clickhouse, ranges, self.log)

    def compare_content(self) -> Comparison:
        """Live rows on both sides, compared column by column (counts and checksums)."""
        live_rows = self.source.live_row_filter(self.spec.soft_delete)
        postgres_rows = count_rows(self.postgres, self.spec.source, live_rows)
        ranges = KeyRanges(self.postgres, self.source, self.target)
        return compare_content(
            self.postgres, self.clickhouse, ranges, self.spec.soft_delete, postgres_rows
        )
