"""Postgres against ClickHouse, one key range at a time: counts and checksums of every column."""

from dataclasses import dataclass, replace

import adbc_driver_postgresql.dbapi as adbc
from clickhouse_connect.driver.client import Client

from user_code.sync.keys import Key, PrimaryKey
from user_code.sync.load import insert_batch
from user_code.sync.target_table import LIVE_ROWS, quote_ch_name


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
    primary_key: PrimaryKey,
    soft_delete: str | None,
    postgres_rows: int,
) -> Comparison:
    """Count plus an order-independent checksum over every column, one key range at a time.

    Each range's Postgres rows are loaded, the way a sync loads them, into a scratch
    ClickHouse table; the sums of row hashes of the scratch table and of the target's range
    (read `FINAL`) must agree. The counts of live rows on both sides must agree as well,
    which catches rows ClickHouse never received.
    """
    target = primary_key.target
    scratch = replace(target, name=f"{target.name}__compare")
    columns = ", ".join(quote_ch_name(c.name) for c in target.columns)
    checksum = f"count(), sum(cityHash64({columns}))"
    client.command(
        f"CREATE TABLE IF NOT EXISTS {scratch.qualified_name} AS {target.qualified_name} "
        "ENGINE = Memory"
    )
    compared = 0
    differing: list[tuple[Key, Key]] = []
    try:
        for keys in primary_key.live_key_chunks(client):
            client.command(f"TRUNCATE TABLE {scratch.qualified_name}")
            for batch in primary_key.source_rows(connection, keys):
                insert_batch(client, scratch, batch, soft_delete)
            expected = client.query(
                f"SELECT {checksum} FROM {scratch.qualified_name} WHERE {LIVE_ROWS}"
            ).result_rows[0]
            actual = client.query(
                f"SELECT {checksum} FROM {target.qualified_name} FINAL "
                f"WHERE {LIVE_ROWS} AND {primary_key.in_range()}",
                parameters=primary_key.range_bounds(keys),
            ).result_rows[0]
            compared += len(keys)
            if tuple(expected) != tuple(actual):
                differing.append((keys[0], keys[-1]))
    finally:
        client.command(f"DROP TABLE IF EXISTS {scratch.qualified_name}")
    return Comparison(compared, postgres_rows, differing)
