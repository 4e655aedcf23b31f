"""The sync's ClickHouse DDL, in one place: the engine, the layout, and `ON CLUSTER`.

With CLICKHOUSE_CLUSTER set, every statement runs `ON CLUSTER` and tables are
`ReplicatedReplacingMergeTree` with the server's default replication path; in a database
whose engine is `Replicated` (ClickHouse Cloud shares tables on its own) plain DDL is kept
(TableSync decides). Exchanges and drops follow the same rule.
"""

from user_code.sync.target_table import DELETED_COLUMN, SettingValue, TargetTable, quote_ch_name

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


def create_table_sql(target: TargetTable, comment: str | None = TABLE_COMMENT) -> str:
    """The table's CREATE TABLE; without `comment`, a table pg2ch takes as the user's."""
    columns = ",\n  ".join(f"{quote_ch_name(c.name)} {c.clickhouse_type}" for c in target.columns)
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
        f"CREATE TABLE IF NOT EXISTS {target.qualified_name}{on_cluster(target.cluster)} (\n"
        f"  {columns},\n  {quote_ch_name(DELETED_COLUMN)} UInt8 DEFAULT 0\n)\n" + "\n".join(clauses)
    )


def add_column_sql(target: TargetTable, name: str, clickhouse_type: str) -> str:
    return (
        f"ALTER TABLE {target.qualified_name}{on_cluster(target.cluster)} "
        f"ADD COLUMN {quote_ch_name(name)} {clickhouse_type}"
    )


def drop_table_sql(target: TargetTable) -> str:
    return f"DROP TABLE IF EXISTS {target.qualified_name}{on_cluster(target.cluster)}"


def exchange_sql(target: TargetTable, other: TargetTable) -> str:
    return (
        f"EXCHANGE TABLES {target.qualified_name} AND {other.qualified_name}"
        f"{on_cluster(target.cluster)}"
    )
