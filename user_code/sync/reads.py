"""The two reads of a table, each a stream of Arrow batches and where it started: the snapshot
(the whole table at one instant, in `snapshot_partitions` page ranges side by side) and the
cursor read (rows whose cursor column is at or past the cursor's start).

Each read first records the oldest transaction open in the source, before its own snapshot
is taken: the next read of the same cursor starts there at the latest (watermark.py). The
batches are read lazily; a read's Postgres transaction begins with its first batch and ends
with its last, or when the stream is closed.
"""

from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from user_code.sync.catalog import relation_pages
from user_code.sync.errors import SyncError
from user_code.sync.open_transactions import OpenTransactions, open_transactions
from user_code.sync.postgres import connect
from user_code.sync.snapshot import page_ranges, share_snapshot
from user_code.sync.streaming import Batches, read_ahead
from user_code.sync.table import Session, Table
from user_code.sync.watermark import Cursor


@dataclass(frozen=True)
class Read:
    batches: Batches
    cursor: Cursor | None  # where the read started, in the column's terms; None: the table
    transactions: OpenTransactions  # the oldest open as it began, if Postgres shows it


def snapshot_read(session: Session, table: Table) -> Read:
    """The whole table at one instant. Partitions read on connections of their own, all in
    the snapshot the first one exports (snapshot.py)."""
    partitions = table.spec.snapshot_partitions
    if partitions > 1 and session.postgres_url is None:
        raise SyncError(
            f"{table.spec.source}: snapshot_partitions = {partitions} needs the Postgres URL "
            "to open a connection per partition."
        )
    transactions = open_transactions(session.postgres)
    conditions = page_ranges(relation_pages(session.postgres, table.spec.source), partitions)
    return Read(_partitions(session, table, conditions), None, transactions)


def _partitions(session: Session, table: Table, conditions: list[str]) -> Batches:
    with ExitStack() as stack:
        connections = [session.postgres]
        connections += [
            stack.enter_context(connect(str(session.postgres_url))) for _ in conditions[1:]
        ]
        share_snapshot(connections)
        source = table.source
        yield from read_ahead(
            *(
                source.read(connection, source.select_sql(condition))
                for connection, condition in zip(connections, conditions, strict=True)
            )
        )


def cursor_read(
    session: Session, table: Table, cursor: Cursor, created_up_to: datetime | None = None
) -> Read:
    """Rows whose `cursor.column` is at or past the cursor's start; with `created_up_to`,
    only rows created up to it (updates stop at the rows new records just read). A cursor
    with no start reads the whole table."""
    cursor = _in_column_terms(session, table, cursor)
    if cursor.start is None:
        return snapshot_read(session, table)
    source, spec = table.source, table.spec
    parameters: tuple[Any, ...] = (source.bind(cursor.column, cursor.start),)
    sql = source.cursor_sql(cursor.column)
    if created_up_to is not None and spec.created_at is not None:
        sql = source.cursor_sql(cursor.column, spec.created_at)
        parameters += (source.bind(spec.created_at, created_up_to),)
    transactions = open_transactions(session.postgres)
    batches = read_ahead(source.read(session.postgres, sql, parameters))
    return Read(batches, cursor, transactions)


def _in_column_terms(session: Session, table: Table, cursor: Cursor) -> Cursor:
    """The cursor with its stored open-transaction time as the column's values express it."""
    if cursor.open_since is None:
        return cursor
    since = table.source.in_column_terms(session.postgres, cursor.column, cursor.open_since)
    return replace(cursor, open_since=since)
