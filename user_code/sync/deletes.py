"""Hard deletes: keys ClickHouse still serves that Postgres no longer has become tombstones."""

from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from user_code.sync.keys import Key, PrimaryKey
from user_code.sync.table import Session, Table
from user_code.sync.target_table import DELETED_COLUMN, quote_ch_name


@dataclass(frozen=True)
class Reconciliation:
    keys_checked: int
    tombstones_written: int


def reconcile_deletes(session: Session, table: Table) -> Reconciliation:
    """Walk ClickHouse's live keys in chunks; write a tombstone for each one Postgres lacks."""
    primary_key = PrimaryKey(table.source, table.target)
    client = session.clickhouse
    checked = deleted = 0
    for keys in primary_key.live_key_chunks(client):
        missing = primary_key.missing_in_postgres(session.postgres, keys)
        if missing:
            write_tombstones(client, primary_key, missing)
        checked += len(keys)
        deleted += len(missing)
        session.progress(
            f"{table.spec.source}: {checked} keys checked, {deleted} deleted in Postgres"
        )
    return Reconciliation(checked, deleted)


def write_tombstones(client: Client, primary_key: PrimaryKey, keys: list[Key]) -> None:
    """Copy each row with `_is_deleted = 1`, one microsecond newer, so `FINAL` hides it.

    A key inserted again in Postgres later comes back with its newer `updated_at`.
    """
    target = primary_key.target
    assert target.version_column, "a table replaced whole has no tombstones"
    version = quote_ch_name(target.version_column)
    client.command(
        f"INSERT INTO {target.qualified_name} SELECT * REPLACE "
        f"(1 AS {quote_ch_name(DELETED_COLUMN)}, {version} + toIntervalMicrosecond(1) "
        f"AS {version}) FROM {target.qualified_name} FINAL "
        f"WHERE {primary_key.clickhouse_key} IN %(keys)s",
        parameters={"keys": [primary_key.bind(key) for key in keys]},
    )
