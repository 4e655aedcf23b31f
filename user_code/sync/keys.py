"""One table's primary key as both engines spell it: ClickHouse's live keys walked in chunks,
and the same keys looked up in Postgres.

Memory holds one chunk whatever the table size. Keys travel to Postgres as one JSON parameter,
typed there by the key columns' own types, so the lookup uses the index.
"""

import json
from collections.abc import Iterator
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
from clickhouse_connect.driver.client import Client

from user_code.sync.postgres import fetch_all
from user_code.sync.postgres_names import quote_pg_name, quote_pg_table
from user_code.sync.source_table import SourceTable
from user_code.sync.target_table import LIVE_ROWS, TargetTable, quote_ch_name

KEY_CHUNK_ROWS = 50_000

Key = tuple[Any, ...]


class PrimaryKey:
    def __init__(self, source: SourceTable, target: TargetTable):
        self.source = source
        self.target = target
        self.key_types = [source.column(name).declared_type for name in target.primary_key]
        columns = ", ".join(quote_ch_name(name) for name in target.primary_key)
        self.clickhouse_key = columns if len(target.primary_key) == 1 else f"({columns})"

    def bind(self, key: Key) -> object:
        """A key as a ClickHouse query parameter: a scalar, or a tuple for composite keys."""
        return key[0] if len(key) == 1 else key

    def live_key_chunks(
        self, client: Client, chunk_rows: int = KEY_CHUNK_ROWS
    ) -> Iterator[list[Key]]:
        """ClickHouse's live keys in order, `chunk_rows` at a time (keyset pagination)."""
        order = ", ".join(quote_ch_name(name) for name in self.target.primary_key)
        last: Key | None = None
        while True:
            after = "" if last is None else f" AND {self.clickhouse_key} > %(last)s"
            rows = client.query(
                f"SELECT {order} FROM {self.target.qualified_name} FINAL "
                f"WHERE {LIVE_ROWS}{after} ORDER BY {order} LIMIT {int(chunk_rows)}",
                parameters=None if last is None else {"last": self.bind(last)},
            ).result_rows
            if rows:
                yield [tuple(row) for row in rows]
            if len(rows) < chunk_rows:
                return
            last = tuple(rows[-1])

    def in_range(self) -> str:
        """ClickHouse's condition for keys from %(first)s to %(last)s (see `range_bounds`)."""
        return f"{self.clickhouse_key} >= %(first)s AND {self.clickhouse_key} <= %(last)s"

    def range_bounds(self, keys: list[Key]) -> dict[str, object]:
        return {"first": self.bind(keys[0]), "last": self.bind(keys[-1])}

    def in_postgres(self, keys: list[Key], table: str) -> tuple[str, str]:
        """A condition true for the rows of `table` (a name or alias) whose key is among
        `keys`, and the JSON parameter ($1) it reads them from."""
        condition = f"EXISTS (SELECT 1 FROM {self._keys_relation()} WHERE {self._matches(table)})"
        return condition, self._keys_json(keys)

    def missing_in_postgres(self, connection: adbc.Connection, keys: list[Key]) -> list[Key]:
        sql = (
            f"SELECT k.i FROM {self._keys_relation()} WHERE NOT EXISTS "
            f"(SELECT 1 FROM {quote_pg_table(self.source.source)} AS s WHERE {self._matches('s')})"
        )
        rows = fetch_all(connection, sql, (self._keys_json(keys),))
        return [keys[i] for (i,) in sorted(rows)]

    def _keys_relation(self) -> str:
        """`$1` (a JSON array of {"i": n, "k0": ..., ...}) as rows typed like the key columns."""
        fields = ", ".join(
            [quote_pg_name("i") + " bigint"]
            + [f"{quote_pg_name(f'k{n}')} {t}" for n, t in enumerate(self.key_types)]
        )
        return f"jsonb_to_recordset($1::jsonb) AS k({fields})"

    def _matches(self, table: str) -> str:
        return " AND ".join(
            f"{table}.{quote_pg_name(name)} = k.{quote_pg_name(f'k{n}')}"
            for n, name in enumerate(self.target.primary_key)
        )

    @staticmethod
    def _keys_json(keys: list[Key]) -> str:
        documents = [
            {"i": i, **{f"k{n}": _json_value(value) for n, value in enumerate(key)}}
            for i, key in enumerate(keys)
        ]
        return json.dumps(documents)


def _json_value(value: object) -> object:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
