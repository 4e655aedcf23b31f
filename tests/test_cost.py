"""What keeping a table current costs: an incremental run reads what changed, not the table.

Postgres says what a run read through `pg_stat_user_tables` (sequential scans of the source
table, rows fetched by index); chDB, in this process, through its `SelectedRows` event.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from fault_support import intercept_inserts
from sync_support import demo_config, run_sync
from waiting import wait_until

from demo.seed import insert_customers, update_customers
from user_code.automation import build_sensor
from user_code.config import parse_sync_config
from user_code.definitions import build_definitions
from user_code.plan import describe, load_plan
from user_code.resources import PostgresResource
from user_code.sync.postgres import APPLICATION_NAME, fetch_all

pytestmark = pytest.mark.usefixtures("sync_env")

ROWS = 40_000
CHANGED_ONE_IN = 200  # 200 rows updated and as many inserted before each run

# Index entries count too: a count(*) of a vacuumed table reads a whole index, not the heap.
_TABLE_READS_SQL = """
SELECT t.seq_scan, t.seq_tup_read,
       (SELECT sum(i.idx_tup_read)::bigint FROM pg_catalog.pg_stat_user_indexes i
        WHERE i.relid = t.relid)
FROM pg_catalog.pg_stat_user_tables t WHERE t.relname = 'customers'
"""
_SYNC_SESSIONS_SQL = f"""
SELECT count(*) FROM pg_catalog.pg_stat_activity
WHERE application_name = '{APPLICATION_NAME}' AND pid <> pg_backend_pid()
"""


def selected_rows(ch) -> int:
    return ch.query(
        "SELECT sum(value) FROM system.events WHERE event = 'SelectedRows'"
    ).result_rows[0][0]


def change_rows(customers, remainder: int) -> None:
    update_customers(customers, ids_modulo=CHANGED_ONE_IN, remainder=remainder)
    insert_customers(customers, ROWS // CHANGED_ONE_IN)


def source_table_reads(customers) -> tuple[int, int, int]:
    """(sequential scans, rows they read, index entries read) of `customers` since the reset,
    once every session of the sync has ended (a backend reports its counts as it exits)."""
    wait_until(lambda: fetch_all(customers, _SYNC_SESSIONS_SQL)[0][0] == 0, 10, "sync session end")
    return fetch_all(customers, _TABLE_READS_SQL)[0]


def reset_table_reads(connection) -> None:
    fetch_all(connection, "SELECT pg_stat_force_next_flush()")  # this session's own scans
    fetch_all(connection, "SELECT pg_stat_reset()")


def test_an_incremental_run_and_the_sensor_read_only_what_changed(customers, ch, pg_url):
    """The whole run, checks included: index range scans in Postgres, and in ClickHouse a
    fraction of the table (the rows written since the lookback began, not all of it); then
    the sensor's tick, which reads the newest cursor values through the same indexes."""
    insert_customers(customers, ROWS, ending_at=datetime.now(UTC) - timedelta(days=1))
    fetch_all(customers, "VACUUM ANALYZE customers")  # a table at rest: count(*) reads an index
    instance = dg.DagsterInstance.ephemeral()
    run_sync(instance)
    change_rows(customers, remainder=1)
    run_sync(instance)  # the lookback settles on the rows of a run
    change_rows(customers, remainder=2)
    reset_table_reads(customers)
    selected_before = selected_rows(ch)

    result = run_sync(instance, demo_config())

    selected = selected_rows(ch) - selected_before
    sequential_scans, rows_scanned, index_entries = source_table_reads(customers)
    assert result.success
    assert (sequential_scans, rows_scanned) == (0, 0)
    assert 0 < index_entries < ROWS / 4, f"Postgres read {index_entries:,} index entries"
    assert selected < ROWS / 4, f"ClickHouse selected {selected:,} rows of {ROWS:,}"

    insert_customers(customers, 1)
    reset_table_reads(customers)
    resources = {"postgres": PostgresResource(url=pg_url)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert isinstance(build_sensor(demo_config())(context), dg.RunRequest)
    sequential_scans, rows_scanned, index_entries = source_table_reads(customers)
    assert (sequential_scans, rows_scanned) == (0, 0)
    assert 0 < index_entries < ROWS / 4


def test_cursor_columns_get_skip_indexes_in_new_tables_and_tables_synced_before(
    customers, ch, clickhouse
):
    indexes_sql = (
        "SELECT name, expr, type FROM system.data_skipping_indices "
        f"WHERE database = '{clickhouse.database}' AND table = 'customers' ORDER BY name"
    )
    wanted = [
        ("pg2ch_minmax_created_at", "created_at", "minmax"),
        ("pg2ch_minmax_updated_at", "updated_at", "minmax"),
    ]
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 10)
    run_sync(instance)
    assert ch.query(indexes_sql).result_rows == wanted
    for name, _, _ in wanted:  # a table synced by a release without the indexes
        ch.command(f"ALTER TABLE `{clickhouse.database}`.customers DROP INDEX {name}")

    assert run_sync(instance).success

    assert ch.query(indexes_sql).result_rows == wanted


def test_window_parity_fails_when_a_run_loses_a_row(monkeypatch, customers):
    """The run's window: the last minute (the lookback) of rows a second apart, and 10 new."""
    instance = dg.DagsterInstance.ephemeral()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    insert_customers(customers, 100, ending_at=an_hour_ago, spacing=timedelta(seconds=1))
    run_sync(instance)
    insert_customers(customers, 10)
    intercept_inserts(monkeypatch, lambda target, batch, insert: insert(batch.slice(1)))
    result = run_sync(instance)

    (parity,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "window_parity"]
    assert not parity.passed
    assert parity.metadata["difference"].value == -1
    assert parity.metadata["postgres_rows"].value == 61 + 10


def test_a_cursor_column_without_an_index_is_named_with_the_index_to_add(customers, pg_url):
    fetch_all(customers, "DROP INDEX customers_updated_at")
    config = {"tables": [{"source": "public.customers", "created_at": "created_at",
                          "updated_at": "updated_at"}]}  # fmt: skip

    plan = load_plan(parse_sync_config(config), pg_url)

    advice = 'CREATE INDEX CONCURRENTLY ON "public"."customers" ("updated_at");'
    assert plan.tables[0].unindexed_cursors == ("updated_at",)
    assert f"no index on `updated_at`: every run scans the table whole; add one: {advice}" in (
        describe(plan)
    )
    graph = build_definitions(plan, "chdb:///tmp/unused").resolve_asset_graph()
    updates = graph.get(dg.AssetKey(["customers", "updates"])).description
    assert advice in updates
    assert "No index" not in graph.get(dg.AssetKey(["customers", "new_records"])).description
