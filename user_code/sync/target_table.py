"""The ClickHouse table of one source table: its name, columns, key, version and layout."""

from dataclasses import dataclass, field

from user_code.sync.types import ColumnMapping

# The column pg2ch adds to every table: 1 marks a row deleted in the source.
DELETED_COLUMN = "_is_deleted"

SettingValue = int | float | str | bool


def quote_ch_name(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# Rows ClickHouse serves: read with FINAL, deletions left out.
LIVE_ROWS = f"{quote_ch_name(DELETED_COLUMN)} = 0"


@dataclass(frozen=True)
class Layout:
    """How the user wants the table stored. Columns in `order_by` and `partition_by` must never
    change for a row: ReplacingMergeTree replaces a row's versions only within one sorting key
    and one partition, so a row whose key columns change is kept twice."""

    order_by: tuple[str, ...] = ()  # the sorting key; () is the primary key alone
    partition_by: str | None = None  # a ClickHouse expression
    settings: tuple[tuple[str, SettingValue], ...] = ()  # table-level MergeTree settings


@dataclass(frozen=True)
class TargetTable:
    """One ClickHouse table per source table: one row per primary key, the newest version wins.

    `ReplacingMergeTree(updated_at, _is_deleted)` keeps, per primary key, the row with the
    largest `updated_at`; `_is_deleted = 1` marks a row deleted in the source. Merges run in
    the background, so readers use `FINAL` to see exactly one row per key. A table replaced
    whole on every run has no version: its rows are never read twice.
    """

    database: str
    name: str
    columns: tuple[ColumnMapping, ...]
    primary_key: tuple[str, ...]
    version_column: str | None
    layout: Layout = field(default_factory=Layout)
    cluster: str | None = None  # DDL ON CLUSTER, replicated engine
    # Read by range on every incremental run: each has a minmax skip index (see ddl.py).
    cursor_columns: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{quote_ch_name(self.database)}.{quote_ch_name(self.name)}"

    @property
    def sorting_key(self) -> tuple[str, ...]:
        return self.layout.order_by or self.primary_key


def cursor_index_name(column: str) -> str:
    """The skip index pg2ch gives a cursor column."""
    return f"pg2ch_minmax_{column}"
