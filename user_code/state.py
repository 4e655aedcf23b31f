"""What Dagster holds for each table: its asset and check keys, the metadata each step stores,
and the cursors read back from it.

Watermarks live in the metadata of each materialization, read back from the Dagster instance:
they survive restarts, show in the UI, and are stored only after ClickHouse acknowledged every
insert of the step. The metadata names below are stored state: renaming one loses the cursors.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from user_code.sync.load import StepResult
from user_code.sync.settings import TableSpec
from user_code.sync.table import Table
from user_code.sync.target_table import DELETED_COLUMN
from user_code.sync.watermark import from_text, latest, to_text

CREATED_AT_WATERMARK = "created_at_watermark"
UPDATED_AT_WATERMARK = "updated_at_watermark"
# When the oldest transaction open in the source began, as the step's read began: the next
# read starts there at the latest (see user_code/sync/watermark.py).
OPEN_SINCE = "oldest_open_transaction"
# Dagster's standard keys: the UI shows them on the asset's page without configuration.
ROW_COUNT = "dagster/row_count"
TABLE_NAME = "dagster/table_name"
COLUMN_SCHEMA = "dagster/column_schema"

# Checks: the first two in every sync run (cheap), the others in `verify_clickhouse`.
WINDOW_PARITY, FRESHNESS = "window_parity", "freshness"
ROW_COUNT_PARITY, CONTENT_CHECKSUM = "row_count_parity", "content_checksum"


# The sync steps of each mode, in order: each one's asset is `<clickhouse table>/<step>`.
STEPS = {
    "incremental": ("initial_load", "new_records", "updates"),
    "append": ("initial_load", "new_records"),
    "replace": ("snapshot",),
}


@dataclass(frozen=True)
class TableKeys:
    """The asset keys of one table: `<clickhouse table>/<step>`."""

    table: str
    steps: tuple[str, ...]

    @classmethod
    def of(cls, spec: TableSpec) -> "TableKeys":
        return cls(spec.target, STEPS[spec.mode])

    def step(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.table, name])

    @property
    def initial_load(self) -> dg.AssetKey:
        return self.step("initial_load")

    @property
    def new_records(self) -> dg.AssetKey:
        return self.step("new_records")

    @property
    def updates(self) -> dg.AssetKey:
        return self.step("updates")

    @property
    def snapshot(self) -> dg.AssetKey:
        return self.step("snapshot")

    @property
    def reconcile_deletes(self) -> dg.AssetKey:
        return self.step("reconcile_deletes")

    def sync_steps(self) -> list[dg.AssetKey]:
        return [self.step(name) for name in self.steps]

    @property
    def last_step(self) -> dg.AssetKey:
        return self.step(self.steps[-1])

    def check(self, name: str) -> dg.AssetCheckKey:
        """Every check of a table sits on its last sync step."""
        return dg.AssetCheckKey(self.last_step, name)


def _stored_time(event: dg.EventLogEntry | None, name: str) -> datetime | None:
    materialization = event.asset_materialization if event else None
    value = materialization.metadata.get(name) if materialization else None
    return from_text(value.value if isinstance(value, dg.TextMetadataValue) else None)


@dataclass(frozen=True)
class StoredCursor:
    """What the steps that read one cursor column stored: the watermark (the latest of their
    values) and the oldest transaction open when the most recent of their reads began."""

    watermark: datetime | None
    open_since: datetime | None

    def advanced(self, largest_read: datetime | None, result: StepResult) -> "StoredCursor":
        """The cursor after a step that read up to `largest_read`."""
        return StoredCursor(latest(self.watermark, largest_read), result.open_since)


def _stored_cursor(
    events: Mapping[dg.AssetKey, dg.EventLogEntry | None], name: str, steps: list[dg.AssetKey]
) -> StoredCursor:
    stored = [event for key in steps if (event := events.get(key))]
    last_read = max(stored, key=lambda event: event.timestamp, default=None)
    return StoredCursor(
        latest(*(_stored_time(event, name) for event in stored)),
        _stored_time(last_read, OPEN_SINCE),
    )


Cursors = tuple[StoredCursor, StoredCursor]  # created_at's and updated_at's
Materializations = Mapping[dg.AssetKey, dg.EventLogEntry | None]


def latest_materializations(
    instance: dg.DagsterInstance, tables: list[TableKeys]
) -> Materializations:
    """The latest materialization of every sync step of `tables`, in one storage query."""
    keys = [key for table in tables for key in table.sync_steps()]
    return instance.get_latest_materialization_events(keys) if keys else {}


def cursors_of(events: Materializations, keys: TableKeys) -> Cursors:
    """The created_at and updated_at cursors of one table, from its steps' materializations."""
    return (
        _stored_cursor(events, CREATED_AT_WATERMARK, [keys.initial_load, keys.new_records]),
        _stored_cursor(events, UPDATED_AT_WATERMARK, [keys.initial_load, keys.updates]),
    )


def stored_cursors(instance: dg.DagsterInstance, keys: TableKeys) -> Cursors:
    return cursors_of(latest_materializations(instance, [keys]), keys)


def stored_watermarks(
    instance: dg.DagsterInstance, keys: TableKeys
) -> tuple[datetime | None, datetime | None]:
    """(created_at, updated_at) watermarks: the latest of what the steps stored."""
    created_at, updated_at = stored_cursors(instance, keys)
    return created_at.watermark, updated_at.watermark


@dataclass(frozen=True)
class RowCount:
    """The live rows of a table as far as a run knows them (steps.py says how): None where
    unknown; `empty` while the table holds no row, so a whole read into it counts exactly."""

    value: int | None
    empty: bool = False

    def after(self, result: StepResult) -> "RowCount":
        """The count once `result` was loaded."""
        empty = self.empty and result.rows_written == 0
        if result.read_from is None:  # a whole read: exact into an empty table only
            return RowCount(result.rows_added if self.empty else None, empty)
        if self.value is None or result.rows_added is None:
            return RowCount(self.value, empty)
        return RowCount(self.value + result.rows_added, empty)


def stored_row_count(
    instance: dg.DagsterInstance, events: Materializations, keys: TableKeys
) -> int | None:
    """The table's live rows as last stored: by the latest step that knew them, or by a verify
    run's count (an observation of the last step), whichever came later."""
    counted = [
        event
        for key in keys.sync_steps()
        if (event := events.get(key)) and _stored_int(event, ROW_COUNT) is not None
    ]
    observed = instance.fetch_observations(keys.last_step, limit=1).records
    if observed:
        counted.append(observed[0].event_log_entry)
    latest_count = max(counted, key=lambda event: event.timestamp, default=None)
    return _stored_int(latest_count, ROW_COUNT) if latest_count else None


def _stored_int(event: dg.EventLogEntry, name: str) -> int | None:
    stored = event.asset_materialization or event.asset_observation
    value = stored.metadata.get(name) if stored else None
    return value.value if isinstance(value, dg.IntMetadataValue) else None


def lag(source_latest: datetime | None, watermark: datetime | None) -> timedelta:
    """How far the stored watermark is behind the source's newest value; never negative."""
    if source_latest is None or watermark is None:
        return timedelta(0)
    return max(source_latest - watermark, timedelta(0))


def step_metadata(
    result: StepResult, table_name: str, **stored: datetime | float | str | None
) -> dict[str, dg.MetadataValue]:
    """A step's figures for the UI's plots, and `stored` (watermarks as exact UTC text)."""
    metadata: dict[str, dg.MetadataValue] = {
        "rows_read": dg.MetadataValue.int(result.rows_read),
        "rows_written": dg.MetadataValue.int(result.rows_written),
        "duration_s": dg.MetadataValue.float(round(result.seconds, 3)),
        "rows_per_s": dg.MetadataValue.float(round(result.rows_per_second, 1)),
        "held_back_s": dg.MetadataValue.float(round(result.held_back.total_seconds(), 3)),
        "clickhouse_table": dg.MetadataValue.text(table_name),
    }
    for name, value in {**stored, OPEN_SINCE: result.open_since}.items():
        if isinstance(value, datetime):
            metadata[name] = dg.MetadataValue.text(str(to_text(value)))
        elif isinstance(value, str):
            metadata[name] = dg.MetadataValue.text(value)
        elif value is not None:
            metadata[name] = dg.MetadataValue.float(value)
    return metadata


def table_metadata(table: Table, row_count: int | None) -> dict[str, dg.MetadataValue]:
    """Dagster's standard table metadata: the ClickHouse table's name, its live rows where
    known (see steps.py), and its columns, each described by the Postgres column it comes
    from."""
    columns = [
        dg.TableColumn(m.name, m.clickhouse_type, description=f"Postgres: {c.declared_type}")
        for c, m in zip(table.source.columns, table.source.mappings, strict=True)
    ]
    columns.append(
        dg.TableColumn(DELETED_COLUMN, "UInt8", description="pg2ch: 1 marks a row deleted")
    )
    metadata: dict[str, dg.MetadataValue] = {
        TABLE_NAME: dg.MetadataValue.text(f"{table.target.database}.{table.target.name}"),
        COLUMN_SCHEMA: dg.MetadataValue.table_schema(dg.TableSchema(columns)),
    }
    if row_count is not None:
        metadata[ROW_COUNT] = dg.MetadataValue.int(row_count)
    return metadata
