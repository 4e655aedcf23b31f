"""One table's sync steps within a Dagster run: the stored cursors in, materializations out.

Each step reads from its cursor, and its materialization stores where the next read starts;
the cursors advance step by step, so new records start where the initial load ended and
updates stop at the rows new records just read. A table in `replace` mode has one step,
which reads it whole and swaps it in.
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
    table_metadata,
)
from user_code.sync.load import count_live_rows
from user_code.sync.postgres import latest_timestamps
from user_code.sync.prepare import Prepared
from user_code.sync.rebuild import drop_leftovers, rebuild, replace_whole
from user_code.sync.table_sync import StepResult, TableSync
from user_code.sync.watermark import Cursor

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

    def prepare(self) -> Prepared:
        """The ClickHouse table made ready for the steps (see user_code/sync/prepare.py)."""
        prepared = self.table.prepare()
        if prepared.rebuild is None and self.spec.mode != "replace":
            drop_leftovers(self.table)
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
        self.created = self.created.advanced(result.created_at, result)
        stored = {CREATED_AT_WATERMARK: self.created.watermark}
        return self._materialization(self.keys.new_records, result, **stored)

    def updates(self) -> Materialization:
        assert self.spec.updated_at, "changed rows are found by updated_at"
        cursor = self._cursor(self.spec.updated_at, self.updated)
        result = self.table.updates(cursor, self.created.watermark)
        self.updated = self.updated.advanced(result.updated_at, result)
        (source_latest,) = latest_timestamps(
            self.table.postgres, self.spec.source, [self.spec.updated_at]
        )
        behind = lag(source_latest, self.updated.watermark)
        return self._materialization(
            self.keys.updates,
            result,
            **{UPDATED_AT_WATERMARK: self.updated.watermark},
            lag_s=round(behind.total_seconds(), 3),
        )

    def snapshot(self) -> Materialization:
        return self._materialization(self.keys.snapshot, replace_whole(self.table))

    def _cursor(self, column: str, stored: StoredCursor) -> Cursor:
        return Cursor(column, stored.watermark, self.spec.lookback, stored.open_since)

    def _materialization(
        self, key: dg.AssetKey, result: StepResult, **stored: datetime | float | str | None
    ) -> Materialization:
        target = self.table.target
        metadata = step_metadata(result, target.qualified_name, **stored)
        row_count = count_live_rows(self.table.clickhouse, target)
        return dg.MaterializeResult(
            asset_key=key, metadata={**metadata, **table_metadata(self.table, row_count)}
        )
