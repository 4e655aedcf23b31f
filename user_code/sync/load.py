"""ClickHouse side: the ReplacingMergeTree table, schema drift, and Arrow inserts."""

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.errors import SyncError
from user_code.sync.types import DATETIME, ColumnMapping

DELETED_COLUMN = "_is_deleted"
_KEY_SEPARATOR = "\x1f"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(frozen=True)
class TargetTable:
    """One ClickHouse table per source table: one row per primary key, the newest version wins.

    `ReplacingMergeTree(updated_at, _is_deleted)` keeps, per primary key, the row with the
    largest `updated_at`; `_is_deleted = 1` marks a row deleted in the source. Merges run in
    the background, so readers use `FINAL` to see exactly one row per key.
    """

    database: str
    name: str
    columns: tuple[ColumnMapping, ...]
    primary_key: tuple[str, ...]
    version_column: str

    @property
    def qualified_name(self) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(self.name)}"

    def create_sql(self) -> str:
        columns = ",\n  ".join(
            f"{quote_identifier(c.name)} {c.clickhouse_type}" for c in self.columns
        )
        order_by = ", ".join(quote_identifier(k) for k in self.primary_key)
        version = quote_identifier(self.version_column)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.qualified_name} (\n  {columns},\n"
            f"  {quote_identifier(DELETED_COLUMN)} UInt8 DEFAULT 0\n)\n"
            f"ENGINE = ReplacingMergeTree({version}, {quote_identifier(DELETED_COLUMN)})\n"
            f"ORDER BY ({order_by})"
        )


def existing_columns(client: Client, target: TargetTable) -> dict[str, str]:
    rows = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": target.database, "t": target.name},
    ).result_rows
    return dict(rows)


def ensure_table(client: Client, target: TargetTable) -> bool:
    """Create the table, or bring it up to the source's columns. True when it was created.

    A column added in Postgres is added in ClickHouse (older rows read its default); a
    column dropped or retyped in Postgres stops the sync with a message, because guessing
    would silently change stored data.
    """
    databases = client.query(
        "SELECT count() FROM system.databases WHERE name = {db:String}",
        parameters={"db": target.database},
    ).result_rows[0][0]
    if not databases:  # a least-privileged user has its database already, and no CREATE DATABASE
        client.command(f"CREATE DATABASE {quote_identifier(target.database)}")
    existing = existing_columns(client, target)
    if not existing:
        client.command(target.create_sql(), settings={"enable_time_time64_type": 1})
        return True
    wanted = {column.name: column.clickhouse_type for column in target.columns}
    for name, clickhouse_type in wanted.items():
        if name not in existing:
            client.command(
                f"ALTER TABLE {target.qualified_name} ADD COLUMN {quote_identifier(name)} "
                f"{clickhouse_type}",
                settings={"enable_time_time64_type": 1},
            )
        elif existing[name] != clickhouse_type:
            raise SyncError(
                f"{target.name}.{name}: the source column now maps to {clickhouse_type}, "
                f"the ClickHouse column is {existing[name]}; migrate the ClickHouse table "
                "(or drop it for a fresh initial load)."
            )
    dropped = sorted(set(existing) - set(wanted) - {DELETED_COLUMN})
    if dropped:
        raise SyncError(
            f"{target.name}: column(s) {', '.join(dropped)} exist in ClickHouse but no longer in "
            "Postgres; drop them in ClickHouse (ALTER TABLE ... DROP COLUMN) to go on."
        )
    return False


def row_keys(batch: pa.RecordBatch | pa.Table, key_columns: list[str], version: str) -> pa.Array:
    """`key1 \\x1f key2 \\x1f version-in-microseconds`, the same text ClickHouse builds below."""
    parts = [pc.cast(batch.column(name), pa.string()) for name in key_columns]
    parts.append(pc.cast(pc.cast(batch.column(version), pa.int64()), pa.string()))
    return pc.binary_join_element_wise(*parts, _KEY_SEPARATOR)


def loaded_row_keys(client: Client, target: TargetTable, since: datetime) -> pa.Array:
    """Keys and versions ClickHouse already holds from `since` on: a bounded set (the lookback)."""
    parts = [f"toString({quote_identifier(k)})" for k in target.primary_key]
    parts.append(f"toString(toUnixTimestamp64Micro({quote_identifier(target.version_column)}))")
    separator = ", '\\x1f', "
    sql = (
        f"SELECT concat({separator.join(parts)}) AS row_key "
        f"FROM {target.qualified_name} "
        f"WHERE {quote_identifier(target.version_column)} >= {{since:{DATETIME}}}"
    )
    table = client.query_arrow(sql, parameters={"since": since}, use_strings=True)
    return pc.cast(table.column("row_key"), pa.string()).combine_chunks()


def without_loaded_rows(
    batch: pa.RecordBatch, loaded: pa.Array, target: TargetTable
) -> pa.RecordBatch:
    """Drop rows ClickHouse already holds with the same version: a re-read writes nothing."""
    if len(loaded) == 0:
        return batch
    keys = row_keys(batch, list(target.primary_key), target.version_column)
    return batch.filter(pc.invert(pc.is_in(keys, value_set=loaded)))


def deleted_flags(batch: pa.RecordBatch, soft_delete_column: str | None) -> pa.Array:
    """`_is_deleted`: a true boolean, or any non-NULL value (a `deleted_at`), marks a deletion."""
    if soft_delete_column is None:
        return pa.nulls(batch.num_rows, pa.uint8()).fill_null(0)
    values = batch.column(soft_delete_column)
    flags = values.fill_null(False) if pa.types.is_boolean(values.type) else values.is_valid()
    return pc.cast(flags, pa.uint8())


# ClickHouse would otherwise run ReplacingMergeTree's merge over each inserted block, to drop
# keys repeated within it: an extra pass and copy that cost about as much as the rest of the
# insert. A block comes from one Postgres query, which returns each key once, so there is
# nothing to drop; versions of a key across blocks are resolved by merges and FINAL as before.
_INSERT_SETTINGS = {"optimize_on_insert": 0}


def insert_batch(
    client: Client, target: TargetTable, batch: pa.RecordBatch, soft_delete_column: str | None
) -> None:
    table = pa.Table.from_batches([batch]).append_column(
        DELETED_COLUMN, deleted_flags(batch, soft_delete_column)
    )
    client.insert_arrow(target.name, table, database=target.database, settings=_INSERT_SETTINGS)


def count_live_rows(client: Client, target: TargetTable) -> int:
    """Rows ClickHouse serves: one per key (`FINAL`), deletions left out."""
    live = f"{quote_identifier(DELETED_COLUMN)} = 0"
    sql = f"SELECT count() FROM {target.qualified_name} FINAL WHERE {live}"
    return client.query(sql).result_rows[0][0]
