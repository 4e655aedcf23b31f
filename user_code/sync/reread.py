"""Rows a read returns again (the lookback, ties) are left out when ClickHouse holds them
already at the same version, so a run with no change writes nothing."""

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.target_table import TargetTable, quote_ch_name
from user_code.sync.types import DATETIME

_KEY_SEPARATOR = "\x1f"


def row_keys(batch: pa.RecordBatch | pa.Table, key_columns: list[str], version: str) -> pa.Array:
    """`key1 \\x1f key2 \\x1f version-in-microseconds`, the same text ClickHouse builds below."""
    parts = [pc.cast(batch.column(name), pa.string()) for name in key_columns]
    parts.append(pc.cast(pc.cast(batch.column(version), pa.int64()), pa.string()))
    return pc.binary_join_element_wise(*parts, _KEY_SEPARATOR)


def loaded_row_keys(client: Client, target: TargetTable, since: datetime) -> pa.Array:
    """Keys and versions ClickHouse already holds from `since` on: a bounded set (the lookback)."""
    assert target.version_column, "a table without a version is never read again"
    parts = [f"toString({quote_ch_name(k)})" for k in target.primary_key]
    parts.append(f"toString(toUnixTimestamp64Micro({quote_ch_name(target.version_column)}))")
    separator = ", '\\x1f', "
    sql = (
        f"SELECT concat({separator.join(parts)}) AS row_key "
        f"FROM {target.qualified_name} "
        f"WHERE {quote_ch_name(target.version_column)} >= {{since:{DATETIME}}}"
    )
    table = client.query_arrow(sql, parameters={"since": since}, use_strings=True)
    return pc.cast(table.column("row_key"), pa.string()).combine_chunks()


def without_loaded_rows(
    batch: pa.RecordBatch, loaded: pa.Array, target: TargetTable
) -> pa.RecordBatch:
    """Drop rows ClickHouse already holds with the same version: a re-read writes nothing."""
    if len(loaded) == 0 or target.version_column is None:
        return batch
    keys = row_keys(batch, list(target.primary_key), target.version_column)
    return batch.filter(pc.invert(pc.is_in(keys, value_set=loaded)))
