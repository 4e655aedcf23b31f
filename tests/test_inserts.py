"""How a read becomes INSERTs: one per read, whose rows ClickHouse gathers into parts of a
bounded size, in chDB and as the HTTP insert a server gets; a read that breaks off mid-way
fails with its own error."""

from collections.abc import Callable

import pytest
from clickhouse_connect.driver.client import Client
from sync_support import demo_config, route_inserts

from demo.seed import insert_customers
from user_code.sync import SyncError, load, streaming
from user_code.sync.table_sync import TableSync

WIDE = """
CREATE TABLE public.wide (
    id int PRIMARY KEY,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


def parts_written(client: Client, load_table: Callable[[], object]) -> int:
    """The parts ClickHouse wrote while `load_table` ran (merges write none of these)."""
    sql = "SELECT value FROM system.events WHERE event = 'MergeTreeDataWriterBlocks'"
    before = client.query(sql).result_rows
    load_table()
    after = client.query(sql).result_rows
    return int(after[0][0]) - int(before[0][0] if before else 0)


def loaded_table(pg, pg_url, ch, clickhouse, **options) -> TableSync:
    settings = demo_config(**options).tables[0].table_settings
    table = TableSync(settings, pg, ch, clickhouse.database, postgres_url=pg_url)
    table.prepare()
    return table


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of a few dozen rows: 3,000 rows come in about seventy batches."""
    monkeypatch.setattr(streaming, "BATCH_SIZE_HINT_BYTES", 8 * 1024)


def test_a_load_of_many_batches_writes_a_part_per_block_not_per_batch(
    customers, pg_url, ch, clickhouse, small_batches, monkeypatch
):
    insert_customers(customers, 3000)
    table = loaded_table(customers, pg_url, ch, clickhouse)
    batches = 0

    def counted(_, rows):
        nonlocal batches
        for batch in rows:
            batches += 1
            yield batch

    route_inserts(monkeypatch, counted)

    assert parts_written(ch, table.snapshot) == 1
    assert batches > 50

    monkeypatch.setattr(load, "INSERT_BLOCK_ROWS", 1000)
    assert parts_written(ch, table.snapshot) == 3
    assert table.compare_content().equal


def test_insert_block_mb_bounds_the_rows_gathered_into_a_part(
    pg, pg_url, ch, clickhouse, monkeypatch
):
    """500 rows of 10 kB: 5 MB, written in parts of 1 MB where the table says so."""
    with pg.cursor() as cursor:
        cursor.execute(WIDE)
        cursor.execute(
            "INSERT INTO wide (id, body) "
            "SELECT g, repeat('x', 10000) FROM generate_series(1, 500) g"
        )
    pg.commit()
    monkeypatch.setattr(streaming, "BATCH_SIZE_HINT_BYTES", 64 * 1024)

    default = loaded_table(pg, pg_url, ch, clickhouse, source="public.wide")
    assert parts_written(ch, default.snapshot) == 1
    bounded = loaded_table(pg, pg_url, ch, clickhouse, source="public.wide", insert_block_mb=1)
    assert 4 <= parts_written(ch, bounded.snapshot) <= 6
    assert bounded.compare_content().equal


def test_the_http_insert_a_server_gets_loads_every_column_in_parts_per_block(
    customers, pg_url, ch, clickhouse, small_batches, monkeypatch
):
    """The Arrow IPC stream sent as one HTTP body, here read by chDB from the file
    clickhouse-connect spools it to: the same format reader, squashing and settings."""
    monkeypatch.setattr(load, "insert_in_process", load.insert_over_http)
    monkeypatch.setattr(load, "INSERT_BLOCK_ROWS", 1000)
    insert_customers(customers, 3000)
    table = loaded_table(customers, pg_url, ch, clickhouse)

    assert parts_written(ch, table.snapshot) == 3
    assert table.compare_content().equal


@pytest.mark.parametrize("insert", ["insert_in_process", "insert_over_http"])
def test_a_read_that_breaks_off_fails_with_its_own_error(
    customers, pg_url, ch, clickhouse, small_batches, monkeypatch, insert
):
    """A value ClickHouse cannot store, far into the table: the read stops there, and the step
    fails with the message naming the column, not with ClickHouse's report of a broken input."""
    monkeypatch.setattr(load, "insert_in_process", getattr(load, insert))
    insert_customers(customers, 3000)
    with customers.cursor() as cursor:
        cursor.execute("UPDATE customers SET created_at = 'infinity' WHERE id = 2900")
    customers.commit()
    table = loaded_table(customers, pg_url, ch, clickhouse)

    with pytest.raises(SyncError, match=r"customers\.created_at: holds a date or timestamp"):
        table.snapshot()
