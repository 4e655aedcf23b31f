"""Postgres against ClickHouse, one key range at a time: hard deletes and exact equality.

Both walk ClickHouse's live keys in primary-key order, a chunk at a time, and look those keys
up in Postgres, so memory holds one chunk whatever the table size. Keys travel to Postgres as
one JSON parameter, typed there by the key columns' own types so the lookup uses the index.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from user_code.sync.extract import SourceTable, fetch_all, quote_identifier, quote_table
from user_code.sync.load import DELETED_COLUMN, TargetTable, insert_batch
from user_code.sync.load import quote_identifier as quote_clickhouse

KEY_CHUNK_ROWS = 50_000

_KEY_TYPES_SQL = """
SELECT attname::text, format_type(atttypid, atttypmod)
FROM pg_catalog.pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
"""

Key = tuple


class KeyRanges:
    """The primary key of one table, as both engines spell it."""

    def __init__(self, connection: adbc.Connection, source: SourceTable, target: TargetTable):
        self.source = source
        self.target = target
        types = dict(fetch_all(connection, _KEY_TYPES_SQL, (quote_table(source.source),)))
        self.key_types = [types[name] for name in target.primary_key]
        columns = ", ".join(quote_clickhouse(name) for name in target.primary_key)
        self.clickhouse_key = columns if len(target.primary_key) == 1 else f"({columns})"

    def bind(self, key: Key) -> object:
        """A key as a ClickHouse query parameter: a scalar, or a tuple for composite keys."""
        return key[0] if len(key) == 1 else key

    def chunks(self, client: Client, chunk_rows: int = KEY_CHUNK_ROWS) -> Iterator[list[Key]]:
        """ClickHouse's live keys in order, `chunk_rows` at a time (keyset pagination)."""
        order = ", ".join(quote_clickhouse(name) for name in self.target.primary_key)
        live = f"{quote_clickhouse(DELETED_COLUMN)} = 0"
        last: Key | None = None
        while True:
            after = "" if last is None else f" AND {self.clickhouse_key} > %(last)s"
            rows = client.query(
                f"SELECT {order} FROM {self.target.qualified_name} FINAL "
                f"WHERE {live}{after} ORDER BY {order} LIMIT {int(chunk_rows)}",
                parameters=None if last is None else {"last": self.bind(last)},
            ).result_rows
            if rows:
                yield [tuple(row) for row in rows]
            if len(rows) < chunk_rows:
                return
            last = tuple(rows[-1])

    def _keys_relation(self) -> str:
        """`$1` (a JSON array of {"i": n, "k0": ..., ...}) as rows typed like the key columns."""
        fields = ", ".join(
            [quote_identifier("i") + " bigint"]
            + [f"{quote_identifier(f'k{n}')} {t}" for n, t in enumerate(self.key_types)]
        )
        return f"jsonb_to_recordset($1::jsonb) AS k({fields})"

    def _matches(self, table: str) -> str:
        return " AND ".join(
            f"{table}.{quote_identifier(name)} = k.{quote_identifier(f'k{n}')}"
            for n, name in enumerate(self.target.primary_key)
        )

    @staticmethod
    def _keys_json(keys: list[Key]) -> str:
        documents = [
            {"i": i, **{f"k{n}": _json_value(value) for n, value in enumerate(key)}}
            for i, key in enumerate(keys)
        ]
        return json.dumps(documents)

    def missing_in_postgres(self, connection: adbc.Connection, keys: list[Key]) -> list[Key]:
        sql = (
            f"SELECT k.i FROM {self._keys_relation()} WHERE NOT EXISTS "
            f"(SELECT 1 FROM {quote_table(self.source.source)} AS s WHERE {self._matches('s')})"
        )
        rows = fetch_all(connection, sql, (self._keys_json(keys),))
        return [keys[i] for (i,) in sorted(rows)]

    def write_tombstones(self, client: Client, keys: list[Key]) -> None:
        """Copy each row with `_is_deleted = 1`, one microsecond newer, so `FINAL` hides it.

        A key inserted again in Postgres later comes back with its newer `updated_at`.
        """
        version = quote_clickhouse(self.target.version_column)
        client.command(
            f"INSERT INTO {self.target.qualified_name} SELECT * REPLACE "
            f"(1 AS {quote_clickhouse(DELETED_COLUMN)}, {version} + toIntervalMicrosecond(1) "
            f"AS {version}) FROM {self.target.qualified_name} FINAL "
            f"WHERE {self.clickhouse_key} IN %(keys)s",
            parameters={"keys": [self.bind(key) for key in keys]},
        )

    def source_rows(self, connection: adbc.Connection, keys: list[Key]) -> Iterator[pa.RecordBatch]:
        """The Postgres rows of `keys`, read exactly as a sync reads them."""
        table = quote_table(self.source.source)
        where = f"EXISTS (SELECT 1 FROM {self._keys_relation()} WHERE {self._matches(table)})"
        return self.source.read(connection, self.source.select_sql(where), (self._keys_json(keys),))


def _json_value(value: object) -> object:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


@dataclass(frozen=True)
class Reconciliation:
    keys_checked: int
    tombstones_written: int


def reconcile_deletes(
    connection: adbc.Connection, client: Client, ranges: KeyRanges, log=lambda message: None
) -> Reconciliation:
    """Write tombstones for keys ClickHouse serves that Postgres no longer has."""
    checked = deleted = 0
    for keys in ranges.chunks(client):
        missing = ranges.missing_in_postgres(connection, keys)
        if missing:
            ranges.write_tombstones(client, missing)
        checked += len(keys)
        deleted += len(missing)
        log(f"{ranges.source.source}: {checked} keys checked, {deleted} deleted in Postgres")
    return Reconciliation(checked, deleted)


@dataclass(frozen=True)
class Comparison:
    clickhouse_rows: int  # live rows, each compared with its Postgres row
    postgres_rows: int
    differing_ranges: list[tuple[Key, Key]]  # (first key, last key) of each range that differs

    @property
    def equal(self) -> bool:
        return self.postgres_rows == self.clickhouse_rows and not self.differing_ranges


def compare_content(
    connection: adbc.Connection,
    client: Client,
    ranges: KeyRanges,
    soft_delete: str | None,
    postgres_rows: int,
) -> Comparison:
    """Count plus an order-independent checksum over every column, one key range at a time.

    Each range's Postgres rows are loaded, the way a sync loads them, into a scratch
    ClickHouse table; the sums of row hashes of the scratch table and of the target's range
    (read `FINAL`) must agree. The counts of live rows on both sides must agree as well,
    which catches rows ClickHouse never received.
    """
    target = ranges.target
    scratch = replace(target, name=f"{target.name}__compare")
    columns = ", ".join(quote_clickhouse(c.name) for c in target.columns)
    live = f"{quote_clickhouse(DELETED_COLUMN)} = 0"
    client.command(
        f"CREATE TABLE IF NOT EXISTS {scratch.qualified_name} AS {target.qualified_name} "
        "ENGINE = Memory"
    )
    compared = 0
    differing: list[tuple[Key, Key]] = []
    try:
        for keys in ranges.chunks(client):
            client.command(f"TRUNCATE TABLE {scratch.qualified_name}")
            for batch in ranges.source_rows(connection, keys):
                insert_batch(client, scratch, batch, soft_delete)
            in_range = (
                f"{ranges.clickhouse_key} >= %(first)s AND {ranges.clickhouse_key} <= %(last)s"
            )
            bounds = {"first": ranges.bind(keys[0]), "last": ranges.bind(keys[-1])}
            checksum = f"count(), sum(cityHash64({columns}))"
            expected = client.query(
                f"SELECT {checksum} FROM {scratch.qualified_name} WHERE {live}"
            ).result_rows[0]
            actual = client.query(
                f"SELECT {checksum} FROM {target.qualified_name} FINAL WHERE {live} AND {in_range}",
                parameters=bounds,
            ).result_rows[0]
            compared += len(keys)
            if tuple(expected) != tuple(actual):
                differing.append((keys[0], keys[-1]))
    finally:
        client.command(f"DROP TABLE IF EXISTS {scratch.qualified_name}")
    return Comparison(compared, postgres_rows, differing)
