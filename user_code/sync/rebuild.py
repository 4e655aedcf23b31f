"""Whole tables loaded beside the one readers use, then swapped in at once.

`replace` (a table without cursors) does it on every run. `rebuild` does it when the table
itself must change (a `full_refresh`, a new `order_by` or `partition_by`, a column dropped or
retyped with `on_schema_change: rebuild`): the snapshot loads into `<table>__pg2ch_rebuild`
with the wanted columns and layout, the incremental steps then catch it up from the
snapshot's watermarks, and the two tables are exchanged. Until the exchange, readers keep the
old table, complete, as of the last sync before the rebuild began. A load cut short at any
point leaves its table unused; the next one drops it and starts again, so a partial table is
never exchanged in.
"""

from datetime import timedelta

from user_code.sync.prepare import beside, create_table, drop_table, existing_table, swap_in
from user_code.sync.table_sync import StepResult, TableSync
from user_code.sync.target_table import TargetTable
from user_code.sync.watermark import Cursor, earliest, latest

STAGING_SUFFIX = "__pg2ch_staging"
REBUILD_SUFFIX = "__pg2ch_rebuild"


def _fresh_table_beside(table: TableSync, suffix: str) -> TargetTable:
    loaded = beside(table.target, suffix)
    drop_table(table.clickhouse, loaded)  # what a load cut short left behind
    create_table(table.clickhouse, loaded)
    return loaded


def replace_whole(table: TableSync) -> StepResult:
    """The whole table, swapped in for the one readers use: they see the old content or the
    new, never an empty or partial table."""
    staging = _fresh_table_beside(table, STAGING_SUFFIX)
    result = table.snapshot(into=staging)
    swap_in(table.clickhouse, table.target, staging)
    return result


def rebuild(table: TableSync, lookback: timedelta) -> StepResult:
    """A snapshot into a new table, caught up by the incremental steps, swapped in. The result
    holds the watermarks of the rows it read, the catch-up's included."""
    rebuilt = _fresh_table_beside(table, REBUILD_SUFFIX)
    steps = [table.snapshot(into=rebuilt)]
    snapshot = steps[0]
    created_at, updated_at = table.settings.created_at, table.settings.updated_at
    if created_at:
        cursor = Cursor(created_at, snapshot.created_at, lookback, snapshot.open_since)
        steps.append(table.new_records(cursor, into=rebuilt))
    if updated_at:
        cursor = Cursor(updated_at, snapshot.updated_at, lookback, snapshot.open_since)
        created_up_to = latest(*(step.created_at for step in steps))
        steps.append(table.updates(cursor, created_up_to, into=rebuilt))
    swap_in(table.clickhouse, table.target, rebuilt)
    return StepResult(
        rows_read=sum(step.rows_read for step in steps),
        rows_written=sum(step.rows_written for step in steps),
        seconds=sum(step.seconds for step in steps),
        created_at=latest(*(step.created_at for step in steps)),
        updated_at=latest(*(step.updated_at for step in steps)),
        open_since=earliest(*(step.open_since for step in steps[1:] or steps)),
        held_back=max(step.held_back for step in steps),
        read_from=None,
        rows_added=sum(step.rows_added or 0 for step in steps),
    )


def drop_leftovers(table: TableSync) -> None:
    """A rebuild killed after its exchange leaves the old table under the rebuild's name: drop
    it once the table needs no rebuild."""
    leftover = beside(table.target, REBUILD_SUFFIX)
    if existing_table(table.clickhouse, leftover) is not None:
        drop_table(table.clickhouse, leftover)
