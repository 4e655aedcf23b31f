"""Writes to ClickHouse: the table created or brought up to the source's columns, and inserts."""

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.errors import SyncError
from user_code.sync.target_table import DELETED_COLUMN, LIVE_ROWS, TargetTable, quote_ch_name

# Time64 columns (Postgres `time`) need this setting in DDL.
_DDL_SETTINGS = {"enable_time_time64_type": 1}

# ClickHouse would otherwise run ReplacingMergeTree's merge over each inserted block, to drop
# keys repeated within it: an extra pass and copy that cost about as much as the rest of the
# insert. A block comes from one Postgres query, which returns each key once, so there is
# nothing to drop; versions of a key across blocks are resolved by merges and FINAL as before.
_INSERT_SETTINGS = {"optimize_on_insert": 0}


def existing_columns(client: Client, target: TargetTable) -> dict[str, str]:
    rows = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": target.database, "t": target.name},
    ).result_rows
    return {name: clickhouse_type for name, clickhouse_type in rows}


def ensure_table(client: Client, target: TargetTable) -> bool:
    """Create the table, or bring it up to the source's columns. True when it was created.

    A column added in Postgres is added in ClickHouse (older rows read its default); a
    column dropped or retyped in Postgres stops the sync with a message, because guessing
    would silently change stored data.
    """
    existing = existing_columns(client, target)
    if not existing:
        create_table(client, target)
        return True
    wanted = {column.name: column.clickhouse_type for column in target.columns}
    for name, clickhouse_type in wanted.items():
        if name not in existing:
            client.command(
                f"ALTER TABLE {target.qualified_name} ADD COLUMN {quote_ch_name(name)} "
                f"{clickhouse_type}",
                settings=_DDL_SETTINGS,
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


def create_table(client: Client, target: TargetTable) -> None:
    """The table, if it does not exist; its database too, where the user may create one."""
    databases = client.query(
        "SELECT count() FROM system.databases WHERE name = {db:String}",
        parameters={"db": target.database},
    ).result_rows[0][0]
    if not databases:  # a least-privileged user has its database already, and no CREATE DATABASE
        client.command(f"CREATE DATABASE {quote_ch_name(target.database)}")
    client.command(target.create_sql(), settings=_DDL_SETTINGS)


def drop_table(client: Client, target: TargetTable) -> None:
    client.command(f"DROP TABLE IF EXISTS {target.qualified_name}")


def swap_in(client: Client, target: TargetTable, loaded: TargetTable) -> None:
    """`loaded` becomes `target` in one step, readers of `target` seeing the old table or the
    new one, never a mix (an Atomic database's EXCHANGE TABLES); the old one is dropped."""
    client.command(f"EXCHANGE TABLES {target.qualified_name} AND {loaded.qualified_name}")
    drop_table(client, loaded)


def deleted_flags(batch: pa.RecordBatch, soft_delete_column: str | None) -> pa.Array:
    """`_is_deleted`: a true boolean, or any non-NULL value (a `deleted_at`), marks a deletion."""
    if soft_delete_column is None:
        return pa.nulls(batch.num_rows, pa.uint8()).fill_null(0)
    values = batch.column(soft_delete_column)
    flags = values.fill_null(False) if pa.types.is_boolean(values.type) else values.is_valid()
    return pc.cast(flags, pa.uint8())


def insert_batch(
    client: Client, target: TargetTable, batch: pa.RecordBatch, soft_delete_column: str | None
) -> None:
    table = pa.Table.from_batches([batch]).append_column(
        DELETED_COLUMN, deleted_flags(batch, soft_delete_column)
    )
    client.insert_arrow(target.name, table, database=target.database, settings=_INSERT_SETTINGS)


def count_live_rows(client: Client, target: TargetTable) -> int:
    """Rows ClickHouse serves: one per key (`FINAL`), deletions left out."""
    sql = f"SELECT count() FROM {target.qualified_name} FINAL WHERE {LIVE_ROWS}"
    count: Any = client.query(sql).result_rows[0][0]
    return int(count)
