"""The live rows of the window a read covered, counted by each engine on its own.

A run's parity check compares the rows whose version lies between where its read started and
the watermark it reached: Postgres counts them by a range on the version column (its index),
ClickHouse by the newest version of each key with a row in the range (its minmax index skips
the rest). Neither reads the table whole, so the check costs what the run read. The whole
table is counted by `verify_clickhouse`, on its own schedule.
"""

from dataclasses import dataclass
from datetime import datetime

from user_code.sync.load import count_live_rows
from user_code.sync.postgres import count_rows, fetch_all
from user_code.sync.table import Session, Table
from user_code.sync.target_table import DELETED_COLUMN, TargetTable, quote_ch_name
from user_code.sync.types import DATETIME


@dataclass(frozen=True)
class Window:
    """Versions from `start` to `end`, both included; without either, the whole table."""

    column: str | None  # the version column; None in a table replaced whole
    start: datetime | None
    end: datetime | None

    def __str__(self) -> str:
        if self.column is None or self.start is None or self.end is None:
            return "the whole table"
        return f"`{self.column}` from {self.start} to {self.end}"


@dataclass(frozen=True)
class WindowCounts:
    postgres_rows: int
    clickhouse_rows: int


def clickhouse_window_sql(target: TargetTable) -> str:
    """Keys whose newest version lies in the window and is not a deletion."""
    version = quote_ch_name(target.version_column or "")
    keys = ", ".join(quote_ch_name(name) for name in target.primary_key)
    return (
        f"SELECT count() FROM (SELECT argMax({quote_ch_name(DELETED_COLUMN)}, {version}) AS "
        f"deleted, max({version}) AS newest FROM {target.qualified_name} "
        f"WHERE {version} >= {{start:{DATETIME}}} GROUP BY {keys}) "
        f"WHERE deleted = 0 AND newest <= {{end:{DATETIME}}}"
    )


def count_window(session: Session, table: Table, window: Window) -> WindowCounts:
    """The live rows of `window` in Postgres and in ClickHouse."""
    connection, client = session.postgres, session.clickhouse
    source, target = table.source, table.target
    live_rows = source.live_row_filter(table.spec.soft_delete)
    if window.column is None or window.start is None or window.end is None:
        return WindowCounts(
            count_rows(connection, source.source, live_rows), count_live_rows(client, target)
        )
    bounds = (source.bind(window.column, window.start), source.bind(window.column, window.end))
    ((postgres_rows,),) = fetch_all(
        connection, source.window_count_sql(window.column, live_rows), bounds
    )
    parameters = {"start": window.start, "end": window.end}
    clickhouse_rows = client.query(clickhouse_window_sql(target), parameters=parameters)
    return WindowCounts(int(postgres_rows), int(clickhouse_rows.result_rows[0][0]))
