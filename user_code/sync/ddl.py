"""The sync's ClickHouse DDL, in one place: the engine, the layout, the cursor columns' skip
indexes, and `ON CLUSTER`.

Every incremental run asks ClickHouse which rows it holds from the start of the run's read on
(`held.py`), by a range on a cursor column. The table is sorted by its key, not by time, so
without an index that range reads the column of every row. A `minmax` index per granule lets
ClickHouse skip the granules whose values all lie before the range: rows written by earlier
runs, in parts of their own, and rows of the initial load.

With CLICKHOUSE_CLUSTER set, every statement runs `ON CLUSTER` and tables are
`ReplicatedReplacingMergeTree` with the server's default replication path; in a database
whose engine is `Replicated` (ClickHouse Cloud shares tables on its own) plain DDL is kept
(prepare.py decides). Exchanges and drops follow the same rule.
"""

from user_code.sync.target_table import (
    DELETED_COLUMN,
    SettingValue,
    TargetTable,
    cursor_index_name,
    quote_ch_name,
)

# Marks the tables pg2ch created, as opposed to tables a user created for pg2ch to fill.
TABLE_COMMENT = "synced by pg2ch"


def on_cluster(cluster: str | None) -> str:
    return f" ON CLUSTER {quote_ch_name(cluster)}" if cluster else ""


def literal(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def engine(target: TargetTable) -> str:
    name = "ReplicatedReplacingMergeTree" if target.cluster else "ReplacingMergeTree"
    version = target.version_column
    args = f"{quote_ch_name(version)}, {quote_ch_name(DELETED_COLUMN)}" if version else ""
    return f"{name}({args})"


def create_database_sql(database: str, cluster: str | None) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_ch_name(database)}{on_cluster(cluster)}"


def _cursor_index(column: str) -> str:
    """`<name> <column> TYPE minmax GRANULARITY 1`: the min and max of every granule."""
    name = quote_ch_name(cursor_index_name(column))
    return f"{name} {quote_ch_name(column)} TYPE minmax GRANULARITY 1"


def create_table_sql(target: TargetTable, comment: str | None = TABLE_COMMENT) -> str:
    """The table's CREATE TABLE; without `comment`, a table pg2ch takes as the user's."""
    definitions = [f"{quote_ch_name(c.name)} {c.clickhouse_type}" for c in target.columns]
    definitions.append(f"{quote_ch_name(DELETED_COLUMN)} UInt8 DEFAULT 0")
    definitions += [f"INDEX {_cursor_index(column)}" for column in target.cursor_columns]
    layout = target.layout
    clauses = [f"ENGINE = {engine(target)}"]
    if layout.partition_by:
        clauses.append(f"PARTITION BY {layout.partition_by}")
    clauses.append(f"ORDER BY ({', '.join(quote_ch_name(c) for c in target.sorting_key)})")
    if layout.settings:
        settings = ", ".join(f"{name} = {literal(value)}" for name, value in layout.settings)
        clauses.append(f"SETTINGS {settings}")
    if comment is not None:
        clauses.append(f"COMMENT {literal(comment)}")
    return (
        f"CREATE TABLE IF NOT EXISTS {target.qualified_name}{on_cluster(target.cluster)} (\n  "
        + ",\n  ".join(definitions)
        + "\n)\n"
        + "\n".join(clauses)
    )


def add_column_sql(target: TargetTable, name: str, clickhouse_type: str) -> str:
    return (
        f"ALTER TABLE {target.qualified_name}{on_cluster(target.cluster)} "
        f"ADD COLUMN {quote_ch_name(name)} {clickhouse_type}"
    )


def add_cursor_index_sql(target: TargetTable, column: str) -> str:
    return (
        f"ALTER TABLE {target.qualified_name}{on_cluster(target.cluster)} "
        f"ADD INDEX IF NOT EXISTS {_cursor_index(column)}"
    )


def materialize_cursor_index_sql(target: TargetTable, column: str) -> str:
    """Builds the index for the parts written before it existed, as a background mutation."""
    return (
        f"ALTER TABLE {target.qualified_name}{on_cluster(target.cluster)} "
        f"MATERIALIZE INDEX {quote_ch_name(cursor_index_name(column))}"
    )


def drop_table_sql(target: TargetTable) -> str:
    return f"DROP TABLE IF EXISTS {target.qualified_name}{on_cluster(target.cluster)}"


def exchange_sql(target: TargetTable, other: TargetTable) -> str:
    return (
        f"EXCHANGE TABLES {target.qualified_name} AND {other.qualified_name}"
        f"{on_cluster(target.cluster)}"
    )
