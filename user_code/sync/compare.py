"""Postgres against ClickHouse, one key range at a time, each engine hashing its own values.

ClickHouse's live keys are walked in chunks. For each chunk, each engine renders every column
of its own rows in that chunk as canonical text (canonical.py), hashes it together with the
row's key, and sums the hashes per column; only the counts and the sums cross between the
engines. A column whose sums differ holds a value that differs for some key of the range;
differing counts mean rows missing on one side. The live rows of the whole table are counted
on both sides as well, which catches Postgres rows whose keys ClickHouse never received.
"""

from collections import Counter
from dataclasses import dataclass, field

import adbc_driver_postgresql.dbapi as adbc
from clickhouse_connect.driver.client import Client

from user_code.sync.canonical import column_text, rendering_session
from user_code.sync.keys import Key, PrimaryKey
from user_code.sync.postgres import count_rows, fetch_all
from user_code.sync.postgres_names import quote_pg_name, quote_pg_table
from user_code.sync.table import Session, Table
from user_code.sync.target_table import LIVE_ROWS, quote_ch_name


@dataclass(frozen=True)
class RangeDifference:
    first: Key
    last: Key
    postgres_rows: int
    clickhouse_rows: int
    columns: tuple[str, ...]  # whose values differ for some key of the range

    def __str__(self) -> str:
        what = ", ".join(self.columns) if self.columns else "rows only"
        counts = f"{self.postgres_rows} rows in Postgres, {self.clickhouse_rows} in ClickHouse"
        return f"{self.first} .. {self.last}: {what} ({counts})"


@dataclass(frozen=True)
class Comparison:
    clickhouse_rows: int  # live rows, each compared with its Postgres row
    postgres_rows: int
    differing_ranges: list[RangeDifference]
    # Keys ClickHouse serves more than once (FINAL): a row whose `order_by` or `partition_by`
    # columns changed is kept under its old sorting key or partition as well as its new one.
    duplicate_keys: list[Key] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return (
            self.postgres_rows == self.clickhouse_rows
            and not self.differing_ranges
            and not self.duplicate_keys
        )

    @property
    def differing_columns(self) -> list[str]:
        return sorted({column for r in self.differing_ranges for column in r.columns})


class _RangeHashes:
    """The two queries of one comparison: count and per-column hash sums of a key range."""

    def __init__(self, primary_key: PrimaryKey, postgres_live_rows: str):
        source = primary_key.source
        texts = {
            column.name: column_text(source.source, column, mapping)
            for column, mapping in zip(source.columns, source.mappings, strict=True)
        }
        self.columns = list(texts)
        key = [texts[name] for name in primary_key.target.primary_key]
        pg_key = " || chr(31) || ".join(
            _on(text.postgres, f"s.{quote_pg_name(name)}")
            for text, name in zip(key, primary_key.target.primary_key, strict=True)
        )
        ch_key = ", char(31), ".join(
            _on(text.clickhouse, quote_ch_name(name))
            for text, name in zip(key, primary_key.target.primary_key, strict=True)
        )
        pg_sums = ", ".join(
            f"sum(('x' || left(md5({pg_key} || chr(31) || "
            f"{_on(text.postgres, f's.{quote_pg_name(name)}')}), 16))::bit(64)::bigint)"
            for name, text in texts.items()
        )
        ch_sums = ", ".join(
            f"sum(toInt128(reinterpretAsInt64(reverse(unhex(left(hex(MD5(concat({ch_key}, "
            f"char(31), {_on(text.clickhouse, quote_ch_name(name))}))), 16))))))"
            for name, text in texts.items()
        )
        self.primary_key = primary_key
        self.postgres_sql = (
            f"SELECT count(*), {pg_sums} FROM {quote_pg_table(source.source)} AS s "
            f"WHERE ({postgres_live_rows}) AND "
        )
        self.clickhouse_sql = (
            f"SELECT count(), {ch_sums} FROM {primary_key.target.qualified_name} FINAL "
            f"WHERE {LIVE_ROWS} AND {primary_key.in_range()}"
        )

    def postgres(self, connection: adbc.Connection, keys: list[Key]) -> tuple[int, ...]:
        condition, parameter = self.primary_key.in_postgres(keys, "s")
        (row,) = fetch_all(connection, self.postgres_sql + condition, (parameter,))
        return tuple(int(value or 0) for value in row)

    def clickhouse(self, client: Client, keys: list[Key]) -> tuple[int, ...]:
        bounds = self.primary_key.range_bounds(keys)
        (row,) = client.query(self.clickhouse_sql, parameters=bounds).result_rows
        return tuple(int(value or 0) for value in row)


def _on(rendering_sql: str, column_sql: str) -> str:
    return rendering_sql.format(column_sql)


def compare_content(session: Session, table: Table) -> Comparison:
    """Live rows on both sides, compared column by column (counts and checksums)."""
    live_rows = table.source.live_row_filter(table.spec.soft_delete)
    postgres_rows = count_rows(session.postgres, table.spec.source, live_rows)
    hashes = _RangeHashes(PrimaryKey(table.source, table.target), live_rows)
    with rendering_session(session.postgres):
        return _compare_ranges(session.postgres, session.clickhouse, hashes, postgres_rows)


def _compare_ranges(
    connection: adbc.Connection, client: Client, hashes: _RangeHashes, postgres_rows: int
) -> Comparison:
    primary_key = hashes.primary_key
    compared = 0
    differing: list[RangeDifference] = []
    duplicates: list[Key] = []
    for keys in primary_key.live_key_chunks(client):
        duplicates += [key for key, times in Counter(keys).items() if times > 1]
        expected = hashes.postgres(connection, keys)
        actual = hashes.clickhouse(client, keys)
        compared += len(keys)
        if expected != actual:
            columns = tuple(
                name
                for name, want, got in zip(hashes.columns, expected[1:], actual[1:], strict=True)
                if want != got
            )
            differing.append(RangeDifference(keys[0], keys[-1], expected[0], actual[0], columns))
    return Comparison(compared, postgres_rows, differing, duplicates)
