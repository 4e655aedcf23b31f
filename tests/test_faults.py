"""Crashes, open transactions, ties, time zones, deletes: ClickHouse ends equal to Postgres.

Every test ends with an exact comparison of both sides (every column of every live row).
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
import pytest
from sync_support import (
    ORDER_LINES,
    compare,
    cut_short,
    demo_config,
    route_inserts,
    run_sync,
    step_metadata,
)

from demo.seed import insert_customers, update_customers
from user_code.state import TableKeys, stored_watermarks
from user_code.sync import load, postgres, source_table, streaming, table_sync
from user_code.sync.errors import SyncError
from user_code.sync.table_sync import TableSync
from user_code.sync.watermark import Cursor

pytestmark = pytest.mark.usefixtures("sync_env")


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few dozen rows, so a few thousand rows make many batches, and parts of a
    hundred rows, so a load cut short leaves some written."""
    monkeypatch.setattr(streaming, "BATCH_SIZE_HINT_BYTES", 8 * 1024)
    monkeypatch.setattr(streaming, "FETCH_ROWS", 50)
    monkeypatch.setattr(load, "INSERT_BLOCK_ROWS", 100)


def crash_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """Make a load fail once `batches` batches went into its INSERT."""
    route_inserts(monkeypatch, lambda _, rows: cut_short(rows, batches, SyncError("crash")))


def execute(sql: str, connection, *parameters) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, parameters or None)
    connection.commit()


def fail_partition_after(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    """Make the middle partition of a snapshot fail after reading `batches` batches."""
    read = source_table.SourceTable.read

    def read_then_fail(self, connection, sql, parameters=()):
        for read_so_far, batch in enumerate(read(self, connection, sql, parameters)):
            if "ctid >=" in sql and "ctid <" in sql and read_so_far == batches:
                raise SyncError("injected crash in one partition")
            yield batch

    monkeypatch.setattr(source_table.SourceTable, "read", read_then_fail)


@pytest.mark.parametrize(("batches_before_crash", "partitions"), [(0, 1), (1, 1), (7, 1), (7, 3)])
def test_crash_during_initial_load_then_rerun(
    customers, small_batches, monkeypatch, batches_before_crash, partitions
):
    config = demo_config(snapshot_partitions=partitions)
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 3000, ending_at="2020-01-01")
    with monkeypatch.context() as patch:
        crash_after(patch, batches_before_crash)
        assert not run_sync(instance, config, raise_on_error=False).success

    assert stored_watermarks(instance, TableKeys.of(config.tables[0])) == (None, None)
    steps = step_metadata(run_sync(instance, config))

    assert steps["initial_load"]["rows_read"] == 3000
    assert compare(config).equal


@pytest.mark.parametrize("batches_before_crash", [0, 8])
def test_crash_in_one_partition_of_the_snapshot_then_rerun(
    customers, small_batches, monkeypatch, ch, clickhouse, batches_before_crash
):
    config = demo_config(snapshot_partitions=3)
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 3000, ending_at="2020-01-01")
    with monkeypatch.context() as patch:
        fail_partition_after(patch, batches_before_crash)
        assert not run_sync(instance, config, raise_on_error=False).success
    partial = ch.query(f"SELECT count() FROM `{clickhouse.database}`.`customers`").result_rows

    assert partial[0][0] < 3000
    if batches_before_crash:  # the other partitions' blocks went in before the failure
        assert partial[0][0] > 0
    assert stored_watermarks(instance, TableKeys.of(config.tables[0])) == (None, None)
    steps = step_metadata(run_sync(instance, config))

    assert steps["initial_load"]["rows_read"] == 3000
    assert compare(config).equal


_DIGEST = "count(*), sum(id)::bigint, sum(balance)::text, max(updated_at)"


def test_partitioned_snapshot_is_one_instant_while_writes_commit(
    customers, pg_url, ch, clickhouse, small_batches, monkeypatch
):
    """Writes that commit once the partitions share the snapshot are in none of them.

    Updated rows get new versions on later pages, inserted rows land on the last pages and
    deleted rows sit on the first ones: partitions that each took their own snapshot after
    these commits would read some of them.
    """
    config = demo_config(snapshot_partitions=3, hard_deletes=True)
    insert_customers(customers, 3000, ending_at="2020-01-01")
    (before,) = postgres.fetch_all(customers, f"SELECT {_DIGEST} FROM customers")
    share_snapshot, shared = table_sync.share_snapshot, []

    def share_then_write(connections):
        share_snapshot(connections)
        shared.append(len(connections))
        with postgres.connect(pg_url) as writer:
            execute("DELETE FROM customers WHERE id <= 100", writer)
            execute(
                "UPDATE customers SET balance = 0, updated_at = clock_timestamp() "
                "WHERE id > 2900 OR id % 500 = 0",
                writer,
            )
            insert_customers(writer, 200)

    monkeypatch.setattr(table_sync, "share_snapshot", share_then_write)
    settings = config.tables[0].table_settings
    table = TableSync(settings, customers, ch, clickhouse.database, postgres_url=pg_url)
    table.prepare()
    result = table.snapshot()

    loaded = ch.query(
        f"SELECT count(), sum(id), toString(sum(balance)), max(updated_at) "
        f"FROM `{clickhouse.database}`.`customers` FINAL"
    ).result_rows[0]
    assert shared == [3], "the writes must commit after the partitions share one snapshot"
    ((rows_now,),) = postgres.fetch_all(customers, "SELECT count(*) FROM customers")
    assert rows_now == 3000 - 100 + 200  # they did commit before the partitions read
    assert (result.rows_read, result.updated_at) == (3000, before[3])
    assert loaded[:3] == before[:3]
    # The writes arrive with the incremental steps and the reconciliation, as after any load.
    monkeypatch.undo()
    lookback = config.tables[0].lookback
    table.new_records(Cursor("created_at", result.created_at, lookback, result.open_since))
    table.updates(Cursor("updated_at", result.updated_at, lookback, result.open_since), None)
    table.reconcile_deletes()
    assert table.compare_content().equal


@pytest.mark.parametrize("batches_before_crash", [0, 3])
def test_crash_during_incremental_run_then_rerun(
    customers, small_batches, monkeypatch, batches_before_crash
):
    instance = dg.DagsterInstance.ephemeral()
    keys = TableKeys.of(demo_config().tables[0])
    insert_customers(customers, 2000, ending_at="2020-01-01")
    run_sync(instance)
    before = stored_watermarks(instance, keys)

    insert_customers(customers, 1500)
    update_customers(customers, ids_modulo=3)
    with monkeypatch.context() as patch:
        crash_after(patch, batches_before_crash)
        assert not run_sync(instance, raise_on_error=False).success

    assert stored_watermarks(instance, keys) == before  # nothing claimed that was not loaded
    run_sync(instance)
    assert compare(demo_config()).equal


def test_transaction_open_across_a_sync_is_caught_by_the_lookback(customers, pg_url):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 10)
    with postgres.connect(pg_url) as long_transaction:
        with long_transaction.cursor() as cursor:  # now() is this transaction's start time
            cursor.execute(
                "INSERT INTO customers (name, created_by, updated_by) VALUES ('late', 'tx', 'tx')"
            )
        time.sleep(0.05)
        insert_customers(customers, 10)
        run_sync(instance)  # the watermark moves past the open transaction's timestamps
        long_transaction.commit()

    run_sync(instance)

    assert compare(demo_config()).equal


@contextmanager
def application_session(url: str) -> Iterator[adbc.Connection]:
    """A writer's session, as an application opens one (not named like the sync's own)."""
    with adbc.connect(url) as connection:
        yield connection


def open_writes(session: adbc.Connection) -> None:
    """A new row and a changed row, both stamped with the transaction's start time (`now()`)."""
    execute_uncommitted = session.cursor()
    execute_uncommitted.execute(
        "INSERT INTO customers (name, created_by, updated_by) VALUES ('late', 'tx', 'tx')"
    )
    execute_uncommitted.execute("UPDATE customers SET name = 'late change', updated_at = now() "
                                "WHERE id = 1")  # fmt: skip
    execute_uncommitted.close()


def run_log(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(result.run_id)]


def test_transaction_open_far_longer_than_the_lookback_is_not_missed(customers, pg_url):
    """Open across several syncs, each far past `lookback`: its rows, stamped when it began,
    commit behind the watermark and still arrive, because each read starts no later than the
    oldest transaction open at the read before."""
    config = demo_config(lookback=1)
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 10)
    with application_session(pg_url) as long_transaction:
        open_writes(long_transaction)
        held_back = []
        for _ in range(3):
            time.sleep(1.5)
            insert_customers(customers, 10)
            steps = step_metadata(run_sync(instance, config))
            held_back.append(steps["new_records"]["held_back_s"])
        long_transaction.commit()
    run_sync(instance, config)

    # the last read started more than another lookback before watermark - lookback
    assert held_back[-1] > 1, held_back
    assert compare(config).equal


def test_without_the_grant_reads_fall_back_to_lookback(customers, pg_url, monkeypatch):
    """A role that cannot see other sessions' transactions reads from watermark - lookback,
    says once per run what to grant, and with the grant catches the long transaction."""
    execute("CREATE ROLE sync_reader LOGIN", customers)
    execute("GRANT SELECT ON customers TO sync_reader", customers)
    monkeypatch.setenv("PG_URL", pg_url.replace("postgres:@", "sync_reader:@", 1))
    config = demo_config(lookback=0)
    instance = dg.DagsterInstance.ephemeral()

    def long_transaction_across_a_sync() -> list[str]:
        with application_session(pg_url) as long_transaction:
            open_writes(long_transaction)
            time.sleep(0.05)
            insert_customers(customers, 10)
            result = run_sync(instance, config)
            long_transaction.commit()
        return run_log(instance, result) + run_log(instance, run_sync(instance, config))

    messages = long_transaction_across_a_sync()
    grant_hints = [m for m in messages if "GRANT pg_read_all_stats" in m]
    assert len(grant_hints) == 2, grant_hints  # once in each of the two runs
    assert not compare(config).equal  # the documented limit of the fallback

    execute("GRANT pg_read_all_stats TO sync_reader", customers)
    run_sync(instance, config, full_refresh=True)
    messages = long_transaction_across_a_sync()
    assert not [m for m in messages if "GRANT" in m]
    assert compare(config).equal


def test_rows_sharing_one_timestamp_across_batch_boundaries(customers, small_batches, monkeypatch):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 2000, ending_at="2020-01-01")
    execute("UPDATE customers SET created_at = '2020-01-01', updated_at = '2020-01-01'", customers)
    run_sync(instance)

    execute(
        "UPDATE customers SET balance = balance * 2, updated_at = '2021-06-01 00:00:00.000001' "
        "WHERE id % 2 = 0",
        customers,
    )
    with monkeypatch.context() as patch:
        crash_after(patch, 2)
        assert not run_sync(instance, raise_on_error=False).success
    run_sync(instance)

    assert compare(demo_config()).equal


NEW_ORDER_LINE = "INSERT INTO order_lines (order_id, line, sku) VALUES ($1, 1, gen_random_uuid())"


def test_time_zones_and_microseconds_survive(customers, pg_url, ch, clickhouse, monkeypatch):
    """The server's default zone is Los Angeles, the test process's Tokyo. `timestamptz` values
    arrive as the same instant; `timestamp` values (no zone) arrive as written, the wall time,
    stored as UTC. A `timestamp` column filled by the database clock holds Los Angeles wall
    time, so the start of a transaction open across a sync is turned into that wall time
    before the next read: its row, stamped then, is read although `lookback` is 0."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    execute(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone TO %L', "
        "current_database(), 'America/Los_Angeles'); END $$",
        customers,
    )
    execute(
        "INSERT INTO customers (name, created_by, updated_by, created_at, updated_at) VALUES "
        "('tz', 'a', 'a', '2024-03-10 01:59:59.999999-08', '2024-03-10 03:00:00.000001-07')",
        customers,
    )
    execute(ORDER_LINES, customers)
    execute(
        "INSERT INTO order_lines (order_id, line, sku, created_at, updated_at) VALUES "
        "(1, 1, gen_random_uuid(), '2024-03-10 01:59:59.999999', '2024-03-10 02:30:00.000001')",
        customers,
    )
    lines = demo_config(source="public.order_lines", primary_key=["order_id", "line"], lookback=0)
    instance = dg.DagsterInstance.ephemeral()
    try:
        run_sync(instance)
        with application_session(pg_url) as long_transaction:  # in the server's default zone
            with long_transaction.cursor() as cursor:
                cursor.execute(NEW_ORDER_LINE, (2,))
            time.sleep(0.05)
            with application_session(pg_url) as another:
                execute(NEW_ORDER_LINE, another, 3)
            run_sync(instance, lines)  # its watermark passes the open transaction's stamp
            long_transaction.commit()
        run_sync(instance, lines)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

    synced = ch.query(
        f"SELECT toString(created_at), toString(updated_at) FROM `{clickhouse.database}`.customers"
    ).result_rows
    assert synced == [("2024-03-10 09:59:59.999999", "2024-03-10 10:00:00.000001")]  # UTC
    lines_synced = dict(
        ch.query(
            f"SELECT order_id, toString(created_at) FROM `{clickhouse.database}`.order_lines FINAL"
        ).result_rows
    )
    assert lines_synced[1] == "2024-03-10 01:59:59.999999"  # the wall time, as written
    wall_times = postgres.fetch_all(customers, "SELECT order_id, created_at FROM order_lines")
    assert {key: datetime.fromisoformat(text) for key, text in lines_synced.items()} == {
        key: value.replace(tzinfo=None) for key, value in wall_times
    }
    assert compare(demo_config()).equal and compare(lines).equal


def test_nulls_unicode_long_text_precise_numbers_json_and_arrays(customers):
    instance = dg.DagsterInstance.ephemeral()
    execute("ALTER TABLE customers ADD COLUMN precise numeric(38, 18)", customers)
    insert_customers(customers, 3)
    run_sync(instance)

    changes = [
        "UPDATE customers SET email = NULL, attributes = NULL, country = NULL WHERE id = 1",
        "UPDATE customers SET email = 'back@example.com', attributes = '{\"a\": [1, null]}' "
        "WHERE id = 1",
        "UPDATE customers SET name = 'Zoë 𝄞 中文 🚀', email = '', tags = '{}' WHERE id = 2",
        "UPDATE customers SET name = repeat('long ', 200000), tags = '{a,NULL,\"\"}' WHERE id = 3",
        "UPDATE customers SET precise = 12345678901234567890.123456789012345678 WHERE id = 1",
        "UPDATE customers SET precise = -0.000000000000000001, balance = NULL WHERE id = 2",
    ]
    for change in changes:
        execute(change.replace(" WHERE", ", updated_at = clock_timestamp() WHERE"), customers)
        run_sync(instance)
        assert compare(demo_config()).equal, change


def test_hard_deletes_and_reinserted_keys(customers):
    config = demo_config(hard_deletes=True)
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 100)
    run_sync(instance, config)

    execute("DELETE FROM customers WHERE id % 10 = 0", customers)
    verify = run_sync(instance, config, job_name="verify_clickhouse")
    reconciled = step_metadata(verify)["reconcile_deletes"]
    assert (reconciled["keys_checked"], reconciled["tombstones_written"]) == (100, 10)
    assert compare(config).equal

    execute(
        "INSERT INTO customers (id, name, created_by, updated_by) VALUES (10, 'again', 'x', 'x')",
        customers,
    )
    run_sync(instance, config)
    assert compare(config).equal
    checks = {c.check_name: c.passed for c in verify.get_asset_check_evaluations()}
    assert checks == {"content_checksum": True}


def test_soft_delete_then_undelete(customers):
    execute("ALTER TABLE customers ADD COLUMN is_deleted boolean NOT NULL DEFAULT false", customers)
    config = demo_config(soft_delete="is_deleted")
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 20)
    run_sync(instance, config)

    for deleted in ("true", "false"):
        execute(
            f"UPDATE customers SET is_deleted = {deleted}, updated_at = clock_timestamp() "
            "WHERE id <= 5",
            customers,
        )
        run_sync(instance, config)
        assert compare(config).equal


def test_content_comparison_notices_a_changed_row(customers, ch, clickhouse):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 50)
    run_sync(instance)
    assert compare(demo_config()).equal

    ch.command(
        f"ALTER TABLE `{clickhouse.database}`.`customers` UPDATE name = 'tampered' WHERE id = 7 "
        "SETTINGS mutations_sync = 1"
    )

    comparison = compare(demo_config())
    assert not comparison.equal
    differences = [(r.first, r.last, r.columns) for r in comparison.differing_ranges]
    assert differences == [((1,), (50,), ("name",))]


def test_composite_key_without_time_zone_through_updates_deletes_and_reinserts(customers):
    """A two-column key and `timestamp` (no zone) cursors, through every path that uses keys."""
    execute(ORDER_LINES, customers)
    config = demo_config(
        source="public.order_lines", primary_key=["order_id", "line"], hard_deletes=True
    )
    instance = dg.DagsterInstance.ephemeral()
    execute(
        "INSERT INTO order_lines (order_id, line, sku, amount) SELECT o, l, gen_random_uuid(), "
        "o * l / 10.0 FROM generate_series(1, 40) AS o, generate_series(1, 3) AS l",
        customers,
    )
    run_sync(instance, config)

    execute("UPDATE order_lines SET amount = NULL, updated_at = now() WHERE line = 2", customers)
    execute("DELETE FROM order_lines WHERE order_id % 7 = 0", customers)
    run_sync(instance, config)
    run_sync(instance, config, job_name="verify_clickhouse")
    assert compare(config).equal

    execute(
        "INSERT INTO order_lines (order_id, line, sku) VALUES (7, 1, gen_random_uuid())",
        customers,
    )
    run_sync(instance, config)
    assert compare(config).equal
