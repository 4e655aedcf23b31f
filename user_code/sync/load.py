"""Rows into ClickHouse: Arrow batches with their deletion flag, and the rows a table serves."""

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.target_table import DELETED_COLUMN, LIVE_ROWS, TargetTable

# ClickHouse would otherwise run ReplacingMergeTree's merge over each inserted block, to drop
# keys repeated within it: an extra pass and copy that cost about as much as the rest of the
# insert. A block comes from one Postgres query, which returns each key once, so there is
# nothing to drop; versions of a key across blocks are resolved by merges and FINAL as before.
_INSERT_SETTINGS = {"optimize_on_insert": 0}


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
