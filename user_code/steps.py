"""One table's sync steps within a Dagster run: the stored cursors in, materializations out.

Each step reads from its cursor, and its materialization stores where the next read starts;
the cursors advance step by step, so new records start where the initial load ended and
updates stop at the rows new records just read. A table in `replace` mode has one step,
which reads it whole and swaps it in.

`dagster/row_count` is never counted by reading the table: a load into an empty table knows
it exactly (the live rows it wrote), each `verify_clickhouse` run counts it exactly (checks.py),
and in between new records add the live rows they wrote under new keys. Deletions, and rows
found only by `updates` (committed too late for `new_records`), show at the next verify run.
A whole read into a table that held rows leaves it unknown until then.
"""

from dataclasses import replace
from datetime import datetime

import dagster as dg

from user_code.state import (
    CREATED_AT_WATERMARK,
    UPDATED_AT_WATERMARK,
    RowCount,
    StoredCursor,
    TableKeys,
    cursors_of,
    lag,
    latest_materializations,
    step_metadata,
    stored_row_count,
    table_metadata,
)
from user_code.sync import table_sync
from user_code.sync.ddl import add_cursor_index_sql, materialize_cursor_index_sql
from user_code.sync.load import StepResult
from user_code.sync.postgres import latest_timestamps
from user_code.sync.prepare import Prepared, prepare
from user_code.sync.rebuild import drop_leftovers, rebuild, replace_whole
from user_code.sync.settings import Progress, TableSpec
from user_code.sync.table import Session, Table
from user_code.sync.watermark import Cursor
from user_code.sync.window import Window

# A step's result: no value (the data is in ClickHouse), only metadata.
Materialization = dg.MaterializeResult[None]


class TableSteps:
    """One table's steps in one run: its stored cursors and row count in, materializations
    out; what the steps read on the way, for the checks after them."""

    def __init__(
        self, instance: dg.DagsterInstance, keys: TableKeys, session: Session, table: Table
    ):
        self.keys, self.session, self.table, self.spec = keys, session, table, table.spec
        self.events = latest_materializations(instance, [keys])
        self.created, self.updated = cursors_of(self.events, keys)
        self.row_count = RowCount(stored_row_count(instance, self.events, keys))
        # The versions the last step read, for the parity check; None until a step read.
        self.window: Window | None = None
        self._newest: dict[str, datetime | None] = {}
        self._told_unseen = False

    def prepare(self) -> Prepared:
        """The ClickHouse table made ready for the steps (see user_code/sync/prepare.py)."""
        prepared = prepare(self.session.clickhouse, self.table)
        self.table = replace(self.table, target=prepared.target)
        if prepared.rebuild is None and self.spec.mode != "replace":
            drop_leftovers(self.session, self.table)
        _tell_unindexed(self.session.progress, self.spec, prepared)
        if prepared.created:
            self.row_count = RowCount(0, empty=True)
        return prepared

    def was_loaded(self, prepared: Prepared) -> bool:
        """Whether the table holds an initial load already."""
        return not prepared.created and self.events.get(self.keys.initial_load) is not None

    def initial_load(self, rebuild_because: str | None = None) -> Materialization:
        """The snapshot into the table readers use, or, given a reason, a rebuild beside it."""
        if rebuild_because is None:
            result = table_sync.snapshot(self.session, self.table, self.table.target)
        else:
            self.row_count = RowCount(0, empty=True)  # into a new table
            result = rebuild(self.session, self.table, self.spec.lookback)
        self.created = self.created.advanced(result.created_at, result)
        self.updated = self.updated.advanced(result.updated_at, result)
        stored = {CREATED_AT_WATERMARK: self.created.watermark}
        if self.spec.updated_at:
            stored[UPDATED_AT_WATERMARK] = self.updated.watermark
        return self._materialization(
            self.keys.initial_load, result, rebuilt_because=rebuild_because, **stored
        )

    def new_records(self) -> Materialization:
        assert self.spec.created_at, "new records are found by created_at"
        cursor = self._cursor(self.spec.created_at, self.created)
        result = table_sync.new_records(self.session, self.table, cursor, self.table.target)
        self.created = self.created.advanced(result.created_at, result)
        if self.spec.mode == "append":
            self.window = Window(self.spec.created_at, result.read_from, self.created.watermark)
        stored = {CREATED_AT_WATERMARK: self.created.watermark}
        return self._materialization(self.keys.new_records, result, **stored)

    def updates(self) -> Materialization:
        assert self.spec.updated_at, "changed rows are found by updated_at"
        cursor = self._cursor(self.spec.updated_at, self.updated)
        created_up_to = self.created.watermark
        result = table_sync.updates(
            self.session, self.table, cursor, created_up_to, self.table.target
        )
        self.updated = self.updated.advanced(result.updated_at, result)
        self.window = Window(self.spec.updated_at, result.read_from, self.updated.watermark)
        behind = lag(self.newest_in_source(self.spec.updated_at), self.updated.watermark)
        return self._materialization(
            self.keys.updates,
            result,
            **{UPDATED_AT_WATERMARK: self.updated.watermark},
            lag_s=round(behind.total_seconds(), 3),
        )

    def snapshot(self) -> Materialization:
        """The whole table, into a new table swapped in."""
        self.row_count = RowCount(0, empty=True)
        return self._materialization(self.keys.snapshot, replace_whole(self.session, self.table))

    @property
    def watermark(self) -> datetime | None:
        """How far the table is synced: the version column's stored watermark."""
        return self.updated.watermark if self.spec.updated_at else self.created.watermark

    def newest_in_source(self, column: str) -> datetime | None:
        """The newest value of `column` in the source (through its index), read once a run."""
        if column not in self._newest:
            (self._newest[column],) = latest_timestamps(
                self.session.postgres, self.spec.source, [column]
            )
        return self._newest[column]

    def read_window(self) -> Window:
        """The versions the last step of this run read; where no step read, those the next
        read would start from, up to the watermark."""
        if self.window is not None:
            return self.window
        column = self.spec.version_column
        if column is None:
            return Window(None, None, None)
        stored = self.updated if self.spec.updated_at else self.created
        return Window(column, self._cursor(column, stored).start, stored.watermark)

    def _cursor(self, column: str, stored: StoredCursor) -> Cursor:
        return Cursor(column, stored.watermark, self.spec.lookback, stored.open_since)

    def _materialization(
        self, key: dg.AssetKey, result: StepResult, **stored: datetime | float | str | None
    ) -> Materialization:
        self._told_unseen = _tell_read(self.session.progress, self.spec, result, self._told_unseen)
        self.row_count = self.row_count.after(result)
        metadata = step_metadata(result, self.table.target.qualified_name, **stored)
        table = table_metadata(self.table, self.row_count.value)
        return dg.MaterializeResult(asset_key=key, metadata={**metadata, **table})


def _tell_read(progress: Progress, spec: TableSpec, result: StepResult, told_unseen: bool) -> bool:
    """What a read met: an open transaction that moved its start back, or a source that does
    not show its open transactions (told once a run: returns whether it was)."""
    if result.held_back:
        progress(
            f"{spec.source}: a transaction open at the last read could still commit rows "
            f"stamped then: the read started at {result.read_from}, {result.held_back} before "
            "watermark - lookback"
        )
    if result.unseen and not told_unseen:
        progress(f"{spec.source}: {result.unseen}")
        return True
    return told_unseen


def _tell_unindexed(progress: Progress, spec: TableSpec, prepared: Prepared) -> None:
    """A table the user created without skip indexes on the cursor columns: how to add them."""
    target = prepared.target
    for column in prepared.unindexed:
        progress(
            f"{spec.source}: no skip index on `{column}` in your ClickHouse table "
            f"{target.name}: each run reads that column whole; add one: "
            f"{add_cursor_index_sql(target, column)}; "
            f"{materialize_cursor_index_sql(target, column)}"
        )
