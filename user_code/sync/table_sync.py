"""One table's sync steps: the initial snapshot, new records and updates, batch by batch."""

import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.catalog import relation_pages
from user_code.sync.compare import Comparison, compare_content
from user_code.sync.deletes import Reconciliation, reconcile_deletes
from user_code.sync.errors import SyncError
from user_code.sync.keys import PrimaryKey
from user_code.sync.load import insert_batches
from user_code.sync.open_transactions import OpenTransactions, open_transactions
from user_code.sync.postgres import connect, count_rows
from user_code.sync.prepare import (
    Prepared,
    create_table,
    existing_table,
    prepare_table,
    replicated_database,
)
from user_code.sync.reread import loaded_row_keys, without_loaded_rows
from user_code.sync.settings import Progress, TableSettings, no_progress
from user_code.sync.snapshot import page_ranges, share_snapshot
from user_code.sync.source_table import SourceTable
from user_code.sync.streaming import Batches, read_ahead
from user_code.sync.target_table import TargetTable
from user_code.sync.validate import validate_source
from user_code.sync.watermark import Cursor, as_utc, latest

# A long load says how far it got this often; a short one only in its step's metadata (each
# log line is an event Dagster stores, and a run of many tables has many short steps).
PROGRESS_EVERY_S = 5.0


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


def target_table_for(
    settings: TableSettings, source: SourceTable, database: str, cluster: str | None = None
) -> TargetTable:
    """The ClickHouse table a source table syncs into."""
    return TargetTable(
        database=database,
        name=settings.target,
        columns=source.mappings,
        primary_key=settings.primary_key,
        version_column=settings.version_column,
        layout=settings.layout,
        cluster=cluster,
    )


class TableSync:
    def __init__(
        self,
        settings: TableSettings,
        postgres: adbc.Connection,
        clickhouse: Client,
        database: str,
        progress: Progress = no_progress,
        postgres_url: str | None = None,
        cluster: str | None = None,
    ):
        """`postgres_url` opens the connections of a partitioned snapshot's other partitions;
        `cluster` is the ClickHouse cluster DDL runs on (CLICKHOUSE_CLUSTER)."""
        self.settings = settings
        self.postgres = postgres
        self.postgres_url = postgres_url
        self.clickhouse = clickhouse
        self.progress = progress
        self._told_unseen = False
        self.source = SourceTable.from_catalog(
            postgres, settings.source, settings.null_arrays_as_empty
        )
        validate_source(postgres, settings, self.source)
        self.target = target_table_for(settings, self.source, database, cluster)

    def prepare(self) -> Prepared:
        """The ClickHouse table made ready for the steps (see prepare.py). A table replaced
        whole takes the source's columns and layout as they are at each replace."""
        cluster = self.target.cluster
        if cluster and replicated_database(self.clickhouse, self.target.database):
            self.target = replace(self.target, cluster=None)
        if self.settings.replaces:
            created = existing_table(self.clickhouse, self.target) is None
            if created:
                create_table(self.clickhouse, self.target)
            return Prepared(created=created)
        return prepare_table(self.clickhouse, self.target, self.settings.rebuild_on_schema_change)

    def snapshot(self, into: TargetTable | None = None) -> StepResult:
        """The whole table at one instant, read in `snapshot_partitions` ranges side by side,
        into the ClickHouse table (or `into`).

        Batches are inserted one at a time, whichever partition they come from; the step
        returns (and its watermarks may be stored) only after every partition's last insert
        was acknowledged.
        """
        partitions = self.settings.snapshot_partitions
        if partitions > 1 and self.postgres_url is None:
            raise SyncError(
                f"{self.settings.source}: snapshot_partitions = {partitions} needs the Postgres "
                "URL to open a connection per partition."
            )
        transactions = self._open_transactions()
        pages = relation_pages(self.postgres, self.settings.source)
        conditions = page_ranges(pages, partitions)
        with ExitStack() as stack:
            connections = [self.postgres]
            for _ in conditions[1:]:
                connections.append(stack.enter_context(connect(str(self.postgres_url))))
            share_snapshot(connections)
            sources = [
                self.source.read(connection, self.source.select_sql(condition))
                for connection, condition in zip(connections, conditions, strict=True)
            ]
            return self._load(read_ahead(*sources), None, transactions, into or self.target)

    def new_records(self, cursor: Cursor, into: TargetTable | None = None) -> StepResult:
        cursor = self._in_column_terms(cursor)
        if cursor.start is None:
            return self.snapshot(into)
        sql = self.source.cursor_sql(cursor.column)
        start = self.source.bind(cursor.column, cursor.start)
        return self._read_from(cursor, sql, (start,), into)

    def updates(
        self, cursor: Cursor, created_up_to: datetime | None, into: TargetTable | None = None
    ) -> StepResult:
        """Rows changed since the cursor among those created up to the new-records watermark."""
        cursor = self._in_column_terms(cursor)
        if cursor.start is None:
            return self.snapshot(into)
        start = self.source.bind(cursor.column, cursor.start)
        if created_up_to is None or self.settings.created_at is None:
            return self._read_from(cursor, self.source.cursor_sql(cursor.column), (start,), into)
        sql = self.source.cursor_sql(cursor.column, self.settings.created_at)
        bound = self.source.bind(self.settings.created_at, created_up_to)
        return self._read_from(cursor, sql, (start, bound), into)

    def _in_column_terms(self, cursor: Cursor) -> Cursor:
        """The cursor with its stored open-transaction time as the column's values express it."""
        if cursor.open_since is None:
            return cursor
        since = self.source.in_column_terms(self.postgres, cursor.column, cursor.open_since)
        cursor = replace(cursor, open_since=since)
        if cursor.held_back:
            self.progress(
                f"{self.settings.source}: a transaction open since {since} at the last read "
                f"could still commit rows stamped then: `{cursor.column}` is read from there, "
                f"{cursor.held_back} before watermark - lookback"
            )
        return cursor

    def _open_transactions(self) -> OpenTransactions:
        transactions = open_transactions(self.postgres)
        if transactions.unseen and not self._told_unseen:
            self.progress(f"{self.settings.source}: {transactions.unseen}")
            self._told_unseen = True
        return transactions

    def _read_from(
        self,
        cursor: Cursor,
        sql: str,
        parameters: tuple[Any, ...],
        into: TargetTable | None = None,
    ) -> StepResult:
        """Read the cursor query `sql` into ClickHouse, its start bound as a parameter."""
        transactions = self._open_transactions()
        batches = read_ahead(self.source.read(self.postgres, sql, parameters))
        return self._load(batches, cursor, transactions, into)

    def _load(
        self,
        batches: Batches,
        cursor: Cursor | None,
        transactions: OpenTransactions,
        target: TargetTable | None = None,
    ) -> StepResult:
        """Insert `batches` into `target` (default: the table's) as one INSERT, leaving out rows
        ClickHouse already holds at the same version. ClickHouse pulls the batches, so the
        counting below runs on its thread, as each batch is handed over."""
        target = target or self.target
        started = time.monotonic()
        loaded = pa.array([], pa.string())
        if cursor is not None and cursor.start is not None:
            loaded = loaded_row_keys(self.clickhouse, target, cursor.start)
        rows_read = rows_written = 0
        reported = 0.0
        created_at = updated_at = None

        def fresh_batches() -> Batches:
            nonlocal rows_read, rows_written, reported, created_at, updated_at
            for batch in batches:
                rows_read += batch.num_rows
                created_at = latest(created_at, _max_time(batch, self.settings.created_at))
                updated_at = latest(updated_at, _max_time(batch, self.settings.updated_at))
                fresh = without_loaded_rows(batch, loaded, target)
                rows_written += fresh.num_rows
                yield fresh
                elapsed = time.monotonic() - started
                if elapsed >= reported + PROGRESS_EVERY_S:
                    reported = elapsed
                    self.progress(
                        f"{self.settings.source}: {rows_read:,} rows read, {rows_written:,} "
                        f"written ({rows_read / elapsed:,.0f} rows/s)"
                    )

        with closing(batches):
            insert_batches(
                self.clickhouse,
                target,
                fresh_batches(),
                self.settings.soft_delete,
                self.settings.insert_block_mb,
            )
        held_back = cursor.held_back if cursor else timedelta(0)
        seconds = time.monotonic() - started
        return StepResult(
            rows_read, rows_written, seconds, created_at, updated_at, transactions.since, held_back
        )

    def reconcile_deletes(self) -> Reconciliation:
        """Tombstones for keys ClickHouse still serves but Postgres no longer has."""
        primary_key = PrimaryKey(self.source, self.target)
        return reconcile_deletes(self.postgres, self.clickhouse, primary_key, self.progress)

    def compare_content(self) -> Comparison:
        """Live rows on both sides, compared column by column (counts and checksums)."""
        live_rows = self.source.live_row_filter(self.settings.soft_delete)
        postgres_rows = count_rows(self.postgres, self.settings.source, live_rows)
        primary_key = PrimaryKey(self.source, self.target)
        return compare_content(
            self.postgres, self.clickhouse, primary_key, live_rows, postgres_rows
        )


def _max_time(batch: pa.RecordBatch, column: str | None) -> datetime | None:
    if column is None:
        return None
    value = pc.max(batch.column(column)).as_py()
    return None if value is None else as_utc(value)
