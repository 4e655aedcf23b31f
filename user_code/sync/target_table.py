"""The ClickHouse table of one source table: its name, its columns and its DDL."""

from dataclasses import dataclass

from user_code.sync.types import ColumnMapping

# The column pg2ch adds to every table: 1 marks a row deleted in the source.
DELETED_COLUMN = "_is_deleted"


def quote_ch_name(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# Rows ClickHouse serves: read with FINAL, deletions left out.
LIVE_ROWS = f"{quote_ch_name(DELETED_COLUMN)} = 0"


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

    @property
    def qualified_name(self) -> str:
        return f"{quote_ch_name(self.database)}.{quote_ch_name(self.name)}"

    def create_sql(self) -> str:
        columns = ",\n  ".join(f"{quote_ch_name(c.name)} {c.clickhouse_type}" for c in self.columns)
        order_by = ", ".join(quote_ch_name(k) for k in self.primary_key)
        deleted = quote_ch_name(DELETED_COLUMN)
        version = f"{quote_ch_name(self.version_column)}, {deleted}" if self.version_column else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {self.qualified_name} (\n  {columns},\n"
            f"  {deleted} UInt8 DEFAULT 0\n)\n"
            f"ENGINE = ReplacingMergeTree({version})\n"
            f"ORDER BY ({order_by})"
        )
