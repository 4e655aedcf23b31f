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

from datetime import datetime

import dagster as dg

from user_code.config import TableSpec
from user_code.state import (
    CREATED_AT_WATERMARK,
    UPDATED_AT_WATERMARK,
    StoredCursor,
    TableKeys,
    cursors_of,
    lag,
    latest_materializations,
    step_metadata,
    stored_row_count,
    table_metadata,
)
from user_code.sync.ddl import add_cursor_index_sql, materialize_cursor_index_sql
from user_code.sync.postgres import latest_timestamps
from user_code.sync.prepare import Prepared
from user_code.sync.rebuild import drop_leftovers, rebuild, replace_whole
from user_code.sync.table_sync import StepResult, TableSync
from user_code.sync.watermark import Cursor
from user_code.sync.window import Window

# A step's result: no value (the data is in ClickHouse), only metadata.
Materialization = dg.MaterializeResult[None]


class TableSteps:
    def __init__(
        self, instance: dg.DagsterInstance, spec: TableSpec, keys: TableKeys, table: TableSync
    ):
        self.spec = spec
        self.keys = keys
        self.table = table
        self.events = latest_materializations(instance, [keys])
        self.created, self.updated = cursors_of(self.events, keys)
        self.row_count = stored_row_count(instance, self.events, keys)
        self.empty = False  # whether the table holds no row yet
        # The versions the last step read, for the parity check; None until a step read.
        self.window: Window | None = None
        self._newest: dict[str, datetime | None] = {}

    def prepare(self) -> Prepared:
        """The ClickHouse table made ready for the steps (see user_code/sync/prepare.py)."""
        prepared = self.table.prepare()
        if prepared.rebuild is None and self.spec.mode != "replace":
            drop_leftovers(self.table)
        target = self.table.target
        for column in prepared.unindexed:
            self.table.progress(
                f"{self.spec.source}: no skip index on `{column}` in your ClickHouse table "
                f"{target.name}: each run reads that column whole; add one: "
                f"{add_cursor_index_sql(target, column)}; "
                f"{materialize_cursor_index_sql(target, column)}"
            )
        if prepared.created:
            self.row_count, self.empty = 0, True
        return prepared

    def was_loaded(self, prepared: Prepared) -> bool:
        """Whether the table holds an initial load already."""
        return not prepared.created and self.events.get(self.keys.initial_load) is not None

    def initial_load(self, rebuild_because: str | None = None) -> Materialization:
        """The snapshot into the table readers use, or, given a reason, a rebuild beside it."""
        if rebuild_because is None:
            result = self.table.snapshot()
        else:
            result = rebuild(self.table, self.spec.lookback)
            self.row_count, self.empty = 0, True  # into a new table
        self._count(result)
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
        result = self.table.new_records(self._cursor(self.spec.created_at, self.created))
        self._count(result)
        self.created = self.created.advanced(result.created_at, result)
        if self.spec.mode == "append":
            self.window = Window(self.spec.created_at, result.read_from, self.created.watermark)
        stored = {CREATED_AT_WATERMARK: self.created.watermark}
        return self._materialization(self.keys.new_records, result, **stored)

    def updates(self) -> Materialization:
        assert self.spec.updated_at, "changed rows are found by updated_at"
        cursor = self._cursor(self.spec.updated_at, self.updated)
        result = self.table.updates(cursor, self.created.watermark)
        self._count(result)
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
        self.row_count, self.empty = 0, True
        result = replace_whole(self.table)
        self._count(result)
        return self._materialization(self.keys.snapshot, result)

    def _count(self, result: StepResult) -> None:
        """The table's live rows after a step (see the module's docstring)."""
        if result.read_from is None:  # a whole read: exact into an empty table only
            self.row_count = result.rows_added if self.empty else None
        elif self.row_count is not None and result.rows_added is not None:
            self.row_count += result.rows_added
        self.empty = self.empty and result.rows_written == 0

    @property
    def watermark(self) -> datetime | None:
        """How far the table is synced: the version column's stored watermark."""
        return self.updated.watermark if self.spec.updated_at else self.created.watermark

    def newest_in_source(self, column: str) -> datetime | None:
        """The newest value of `column` in the source (through its index), read once a run."""
        if column not in self._newest:
            (self._newest[column],) = latest_timestamps(
                self.table.postgres, self.spec.source, [column]
            )
        return self._newest[column]

    def read_window(self) -> Window:
        """The versions the last step of this run read; where no step read, those the next
        read would start from, up to the watermark."""
        if self.window is not None:
            return self.window
        column = self.spec.updated_at or self.spec.created_at
        if column is None:
            return Window(None, None, None)
        stored = self.updated if self.spec.updated_at else self.created
        return Window(column, self._cursor(column, stored).start, stored.watermark)

    def _cursor(self, column: str, stored: StoredCursor) -> Cursor:
        return Cursor(column, stored.watermark, self.spec.lookback, stored.open_since)

    def _materialization(
        self, key: dg.AssetKey, result: StepResult, **stored: datetime | float | str | None
    ) -> Materialization:
        metadata = step_metadata(result, self.table.target.qualified_name, **stored)
        return dg.MaterializeResult(
            asset_key=key, metadata={**metadata, **table_metadata(self.table, self.row_count)}
        )
