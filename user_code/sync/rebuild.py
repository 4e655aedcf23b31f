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

from user_code.sync.existing_table import existing_table
from user_code.sync.load import StepResult
from user_code.sync.prepare import beside, create_table, drop_table, swap_in
from user_code.sync.table import Session, Table
from user_code.sync.table_sync import new_records, snapshot, updates
from user_code.sync.target_table import TargetTable
from user_code.sync.watermark import Cursor, earliest, latest

STAGING_SUFFIX = "__pg2ch_staging"
REBUILD_SUFFIX = "__pg2ch_rebuild"


def _fresh_table_beside(session: Session, target: TargetTable, suffix: str) -> TargetTable:
    loaded = beside(target, suffix)
    drop_table(session.clickhouse, loaded)  # what a load cut short left behind
    create_table(session.clickhouse, loaded)
    return loaded


def replace_whole(session: Session, table: Table) -> StepResult:
    """The whole table, swapped in for the one readers use: they see the old content or the
    new, never an empty or partial table."""
    staging = _fresh_table_beside(session, table.target, STAGING_SUFFIX)
    result = snapshot(session, table, staging)
    swap_in(session.clickhouse, table.target, staging)
    return result


def rebuild(session: Session, table: Table, lookback: timedelta) -> StepResult:
    """A snapshot into a new table, caught up by the incremental steps, swapped in. The
    result holds the watermarks of the rows it read, the catch-up's included."""
    rebuilt = _fresh_table_beside(session, table.target, REBUILD_SUFFIX)
    steps = [snapshot(session, table, rebuilt)]
    first = steps[0]
    spec = table.spec
    if spec.created_at:
        cursor = Cursor(spec.created_at, first.created_at, lookback, first.open_since)
        steps.append(new_records(session, table, cursor, rebuilt))
    if spec.updated_at:
        cursor = Cursor(spec.updated_at, first.updated_at, lookback, first.open_since)
        created_up_to = latest(*(step.created_at for step in steps))
        steps.append(updates(session, table, cursor, created_up_to, rebuilt))
    swap_in(session.clickhouse, table.target, rebuilt)
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
        unseen=first.unseen,
    )


def drop_leftovers(session: Session, table: Table) -> None:
    """A rebuild killed after its exchange leaves the old table under the rebuild's name: drop
    it once the table needs no rebuild."""
    leftover = beside(table.target, REBUILD_SUFFIX)
    if existing_table(session.clickhouse, leftover) is not None:
        drop_table(session.clickhouse, leftover)
