"""One table's sync steps, each a read loaded into a given ClickHouse table.

The initial snapshot, new records (by `created_at`) and updates (by `updated_at`, among the
rows created up to the new-records watermark, so rows just read as new are not read twice).
Each returns what it loaded and where its read started; storing the cursors it reached is the
caller's (user_code/steps.py), so is choosing the table to write: the table readers use, or a
new one beside it (rebuild.py).
"""

from datetime import datetime

from user_code.sync.load import StepResult, load
from user_code.sync.reads import cursor_read, snapshot_read
from user_code.sync.table import Session, Table
from user_code.sync.target_table import TargetTable
from user_code.sync.watermark import Cursor


def snapshot(session: Session, table: Table, into: TargetTable) -> StepResult:
    """The whole table at one instant."""
    return load(session, table.spec, snapshot_read(session, table), into)


def new_records(session: Session, table: Table, cursor: Cursor, into: TargetTable) -> StepResult:
    """Rows created since the cursor (the whole table where it has no start)."""
    return load(session, table.spec, cursor_read(session, table, cursor), into)


def updates(
    session: Session,
    table: Table,
    cursor: Cursor,
    created_up_to: datetime | None,
    into: TargetTable,
) -> StepResult:
    """Rows changed since the cursor, among those created up to `created_up_to`."""
    return load(session, table.spec, cursor_read(session, table, cursor, created_up_to), into)
