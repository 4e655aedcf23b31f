"""Rows a read returns again (the lookback, ties) are left out when ClickHouse holds them
already, so a run with no change writes nothing; rows under keys ClickHouse did not hold are
told apart, for the table's row count.

ClickHouse is asked about the read's window only: the newest version of each key that has a
row whose cursor column is at or past the read's start. The cursor columns carry minmax skip
indexes (ddl.py), so the question costs about the rows written since the window began, not the
table. Asked on `created_at`, whose value a row keeps for life, a key missing from the answer
is a key ClickHouse does not hold at all; asked on the version, it may hold an older version
from before the window.
"""

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.target_table import TargetTable, quote_ch_name
from user_code.sync.types import DATETIME

_KEY_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class HeldRows:
    """The newest version ClickHouse holds of each key with a row in the window."""

    keys: pa.Array  # the key columns as one text: `key1 \x1f key2`
    versions: pa.Array  # microseconds since the epoch

    @classmethod
    def nothing(cls) -> "HeldRows":
        return cls(pa.array([], pa.string()), pa.array([], pa.int64()))


def row_keys(batch: pa.RecordBatch | pa.Table, key_columns: list[str]) -> pa.Array:
    """`key1 \\x1f key2`, the same text ClickHouse builds in `held_rows`."""
    parts = [pc.cast(batch.column(name), pa.string()) for name in key_columns]
    return pc.binary_join_element_wise(*parts, _KEY_SEPARATOR)


def held_rows(client: Client, target: TargetTable, column: str, since: datetime) -> HeldRows:
    """What ClickHouse holds of the keys with a row whose `column` is `since` or later."""
    assert target.version_column, "a table without a version is never read again"
    keys = ", '\\x1f', ".join(f"toString({quote_ch_name(k)})" for k in target.primary_key)
    sql = (
        f"SELECT concat({keys}) AS row_key, "
        f"max(toUnixTimestamp64Micro({quote_ch_name(target.version_column)})) AS version "
        f"FROM {target.qualified_name} "
        f"WHERE {quote_ch_name(column)} >= {{since:{DATETIME}}} GROUP BY row_key"
    )
    table = client.query_arrow(sql, parameters={"since": since}, use_strings=True)
    return HeldRows(
        pc.cast(table.column("row_key"), pa.string()).combine_chunks(),
        pc.cast(table.column("version"), pa.int64()).combine_chunks(),
    )


def newer_than_held(
    batch: pa.RecordBatch, held: HeldRows, target: TargetTable
) -> tuple[pa.RecordBatch, pa.Array]:
    """The rows of `batch` newer than what ClickHouse holds of their key (a re-read row is not
    written again), and for each of them whether ClickHouse held a version of its key."""
    if len(held.keys) == 0 or target.version_column is None:
        return batch, pa.nulls(batch.num_rows, pa.bool_()).fill_null(False)
    positions = pc.index_in(row_keys(batch, list(target.primary_key)), value_set=held.keys)
    held_version = pc.take(held.versions, positions)
    version = pc.cast(batch.column(target.version_column), pa.int64())
    newer = pc.or_kleene(pc.is_null(held_version), pc.greater(version, held_version))
    return batch.filter(newer), pc.is_valid(positions).filter(newer)
