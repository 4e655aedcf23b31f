"""The user's ClickHouse layout, tables the user created, and rebuilds that never take a table
away from its readers."""

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import dagster as dg
import pytest
import yaml
from sync_support import ORDER_LINES, demo_config, run_sync, step_metadata

from demo.seed import insert_customers
from demo.stack import REPO_ROOT
from user_code.sync import prepare, rebuild, table_sync
from user_code.sync.ddl import create_table_sql, drop_table_sql, exchange_sql
from user_code.sync.errors import SyncError
from user_code.sync.target_table import Layout, TargetTable
from user_code.sync.types import ColumnMapping

LINES = {"source": "public.order_lines", "primary_key": ["order_id", "line"]}


def execute(connection, *statements: str) -> None:
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    connection.commit()


def table_row(ch, clickhouse, table: str) -> tuple:
    return ch.query(
        "SELECT sorting_key, partition_key, engine_full FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": clickhouse.database, "t": table},
    ).result_rows[0]


def tables_in(ch, clickhouse) -> list[str]:
    rows = ch.query(
        "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
        parameters={"db": clickhouse.database},
    ).result_rows
    return [name for (name,) in rows]


@pytest.fixture
def order_lines(customers):
    execute(
        customers,
        ORDER_LINES,
        "INSERT INTO order_lines (order_id, line, sku, amount) SELECT o, l, gen_random_uuid(), "
        "o * l FROM generate_series(1, 100) o, generate_series(1, 3) l",
    )
    return customers


def test_order_by_partition_by_and_settings_are_applied(order_lines, sync_env, ch, clickhouse):
    config = demo_config(
        **LINES,
        order_by=["sku", "order_id", "line"],
        partition_by="toYYYYMM(created_at)",
        settings={"index_granularity": 1024},
    )
    run_sync(dg.DagsterInstance.ephemeral(), config)
    sorting_key, partition_key, engine = table_row(ch, clickhouse, "order_lines")
    assert prepare.key_columns(sorting_key) == ("sku", "order_id", "line")
    assert partition_key == "toYYYYMM(created_at)"
    assert "index_granularity = 1024" in engine
    assert engine.startswith("ReplacingMergeTree(updated_at, _is_deleted)")


def test_an_order_by_that_does_not_end_with_the_key_is_refused():
    with pytest.raises(SyncError, match=r"order_by \['order_id', 'sku'\] must end with the prim"):
        demo_config(**LINES, order_by=["order_id", "sku"])


def test_a_partition_expression_clickhouse_refuses_creates_nothing(
    order_lines, sync_env, ch, clickhouse
):
    config = demo_config(**LINES, partition_by="toYYYYMM(no_such_column)")
    result = run_sync(dg.DagsterInstance.ephemeral(), config, raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "order_lines: ClickHouse refused to create the table with order_by" in message
    assert "partition_by 'toYYYYMM(no_such_column)'" in message
    assert "no_such_column" in message
    assert "order_lines" not in tables_in(ch, clickhouse)


CUSTOMERS_BY_HAND = """
CREATE TABLE {table} (
    id Int64, name String CODEC(ZSTD(3)), email Nullable(String), country Nullable(String),
    balance Nullable(Decimal(12, 2)), is_active Bool, tags Array(Nullable(String)),
    attributes Nullable(String), created_by String, updated_by String,
    created_at DateTime64(6, 'UTC'), updated_at DateTime64(6, 'UTC'),
    _is_deleted UInt8 DEFAULT 0
) ENGINE = ReplacingMergeTree(updated_at, _is_deleted)
PARTITION BY toYYYYMM(created_at) ORDER BY (created_by, id)
TTL toDateTime(created_at) + INTERVAL 10 YEAR
"""


def test_a_table_the_user_created_is_used_as_it_is(customers, sync_env, ch, clickhouse):
    ch.command(f"CREATE DATABASE `{clickhouse.database}`")
    table = f"`{clickhouse.database}`.customers"
    ch.command(CUSTOMERS_BY_HAND.format(table=table))
    insert_customers(customers, 20)
    instance = dg.DagsterInstance.ephemeral()
    run_sync(instance)
    insert_customers(customers, 5)
    run_sync(instance, full_refresh=True)  # into the user's table: never rebuilt by pg2ch

    sorting_key, partition_key, engine = table_row(ch, clickhouse, "customers")
    assert (prepare.key_columns(sorting_key), partition_key) == (
        ("created_by", "id"),
        "toYYYYMM(created_at)",
    )
    assert "TTL" in engine
    verify = run_sync(instance, job_name="verify_clickhouse")
    failed = [c.metadata for c in verify.get_asset_check_evaluations() if not c.passed]
    assert not failed, failed


def test_the_plan_prints_ddl_that_makes_a_table_of_the_user_s(
    order_lines, sync_env, ch, clickhouse, tmp_path
):
    """`python -m user_code.plan --ddl`: the start of a table the user creates for pg2ch."""
    layout = {"order_by": ["sku", "order_id", "line"], "partition_by": "toYYYYMM(created_at)"}
    entry = {**LINES, "created_at": "created_at", "updated_at": "updated_at", **layout}
    config = tmp_path / "sync.yaml"
    config.write_text(yaml.safe_dump({"tables": [entry]}))
    printed = subprocess.run(
        [sys.executable, "-m", "user_code.plan", "--ddl"],
        env={**os.environ, "SYNC_CONFIG": str(config)}, cwd=REPO_ROOT,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert printed.startswith(f"CREATE TABLE IF NOT EXISTS `{clickhouse.database}`.`order_lines`")
    assert "COMMENT" not in printed
    ch.command(f"CREATE DATABASE `{clickhouse.database}`")
    ch.command(printed.rstrip().rstrip(";"), settings=prepare.DDL_SETTINGS)

    instance = dg.DagsterInstance.ephemeral()
    plan = demo_config(**LINES, **layout)
    run_sync(instance, plan)
    steps = step_metadata(run_sync(instance, plan, full_refresh=True))
    assert "rebuilt_because" not in steps["initial_load"]  # the user's table: reloaded in place
    assert tables_in(ch, clickhouse) == ["order_lines"]
    sorting_key, partition_key, _ = table_row(ch, clickhouse, "order_lines")
    assert prepare.key_columns(sorting_key) == ("sku", "order_id", "line")
    assert partition_key == "toYYYYMM(created_at)"
    verify = run_sync(instance, plan, job_name="verify_clickhouse")
    assert all(check.passed for check in verify.get_asset_check_evaluations())


UNUSABLE = {
    "another engine": (
        [("ENGINE = ReplacingMergeTree(updated_at, _is_deleted)", "ENGINE = MergeTree")],
        None,
        "engine is MergeTree, not ReplacingMergeTree(updated_at, _is_deleted)",
    ),
    "a sorting key not ending with the key": (
        [("ORDER BY (created_by, id)", "ORDER BY (id, created_by)")],
        None,
        "sorting key (id, created_by) does not end with the primary key (id)",
    ),
    "no _is_deleted": (
        [("_is_deleted UInt8", "deleted UInt8"), ("_is_deleted)", "deleted)")],
        None,
        "no _is_deleted UInt8 column",
    ),
    "a column of another type": (
        [],
        "ALTER TABLE customers ALTER COLUMN name TYPE bigint USING length(name)",
        "column name is String in ClickHouse, Int64 from Postgres",
    ),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_a_table_the_user_created_that_cannot_take_the_rows_stops_the_sync(
    customers, sync_env, ch, clickhouse, case
):
    replacements, alter, difference = UNUSABLE[case]
    ddl = CUSTOMERS_BY_HAND.format(table=f"`{clickhouse.database}`.customers")
    for old, new in replacements:
        ddl = ddl.replace(old, new)
    ch.command(f"CREATE DATABASE `{clickhouse.database}`")
    ch.command(ddl)
    if alter:
        execute(customers, alter)
    result = run_sync(dg.DagsterInstance.ephemeral(), raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "customers: " in message and difference in message, message


def test_a_layout_sync_config_asks_of_a_table_the_user_created_is_reported_not_applied(
    customers, sync_env, ch, clickhouse
):
    ch.command(f"CREATE DATABASE `{clickhouse.database}`")
    ch.command(CUSTOMERS_BY_HAND.format(table=f"`{clickhouse.database}`.customers"))
    config = demo_config(order_by=["country", "id"])
    result = run_sync(dg.DagsterInstance.ephemeral(), config, raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "the table you created differs from SYNC_CONFIG" in message
    assert "order_by is (created_by, id), SYNC_CONFIG asks for (country, id)" in message
    assert prepare.key_columns(table_row(ch, clickhouse, "customers")[0]) == ("created_by", "id")


def test_a_key_column_that_changes_keeps_the_row_twice_and_the_check_says_so(
    order_lines, sync_env, ch, clickhouse
):
    """ReplacingMergeTree replaces versions within one sorting key only: a row whose `sku`
    (part of order_by here) changes is kept under the old sku and the new one."""
    config = demo_config(**LINES, order_by=["sku", "order_id", "line"])
    instance = dg.DagsterInstance.ephemeral()
    run_sync(instance, config)
    execute(
        order_lines,
        "UPDATE order_lines SET sku = gen_random_uuid(), updated_at = now() WHERE order_id = 7",
    )
    run_sync(instance, config)
    verify = run_sync(instance, config, job_name="verify_clickhouse")
    (checksum,) = verify.get_asset_check_evaluations()
    assert not checksum.passed
    duplicates = checksum.metadata["duplicate_keys"].value
    assert sorted(duplicates) == ["(7, 1)", "(7, 2)", "(7, 3)"]


@contextmanager
def reading_continuously(clickhouse, table: str):
    """A reader in a connection of its own: (live rows, duplicate keys) as often as it can, or
    the error a read raised (a missing or half-built table shows there)."""
    seen: list[tuple[int, int] | str] = []
    done = threading.Event()
    sql = (
        f"SELECT count(), count() - uniqExact(order_id, line) FROM "
        f"`{clickhouse.database}`.`{table}` FINAL WHERE _is_deleted = 0"
    )

    def read():
        with clickhouse.get_client() as reader:
            while not done.is_set():
                try:
                    seen.append(tuple(reader.query(sql).result_rows[0]))
                except Exception as error:
                    seen.append(type(error).__name__)
                time.sleep(0.005)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


REBUILDS = {
    "full_refresh": ({}, {"full_refresh": True}, None),
    "new order_by": ({"order_by": ["sku", "order_id", "line"]}, {}, None),
    "retyped column": (
        {},
        {},
        "ALTER TABLE order_lines ALTER COLUMN amount TYPE numeric(12, 3)",
    ),
}


@pytest.mark.parametrize("trigger", list(REBUILDS))
def test_a_rebuild_keeps_the_table_whole_for_its_readers(
    order_lines, sync_env, ch, clickhouse, monkeypatch, trigger
):
    changed, run_config, alter = REBUILDS[trigger]
    instance = dg.DagsterInstance.ephemeral()
    run_sync(instance, demo_config(**LINES, on_schema_change="rebuild"))
    monkeypatch.setattr("user_code.sync.streaming.BATCH_SIZE_HINT_BYTES", 4 * 1024)
    execute(
        order_lines,
        "INSERT INTO order_lines (order_id, line, sku) SELECT o, 1, gen_random_uuid() "
        "FROM generate_series(101, 2000) o",
    )
    run_sync(instance, demo_config(**LINES, on_schema_change="rebuild"))
    if alter:
        execute(order_lines, alter)
    config = demo_config(**LINES, on_schema_change="rebuild", **changed)
    with reading_continuously(clickhouse, "order_lines") as seen:
        before = len(seen)
        steps = step_metadata(run_sync(instance, config, **run_config))
    assert steps["initial_load"]["rebuilt_because"]
    assert len(seen) > before + 1, "the reader did not read during the rebuild"
    # never an error, never fewer rows than before the rebuild began, never a key twice
    assert set(seen) == {(2200, 0)}, sorted({str(sample) for sample in seen})
    assert tables_in(ch, clickhouse) == ["order_lines"]
    verify = run_sync(instance, config, job_name="verify_clickhouse")
    assert all(check.passed for check in verify.get_asset_check_evaluations())


KILLS = {
    "before the exchange": "insert",
    "at the exchange": "exchange",
    "after the exchange": "drop",
}


@pytest.mark.parametrize("moment", list(KILLS))
def test_a_rebuild_killed_at_any_moment_leaves_a_whole_table_and_the_rerun_is_exact(
    order_lines, sync_env, ch, clickhouse, monkeypatch, moment
):
    instance = dg.DagsterInstance.ephemeral()
    run_sync(instance, demo_config(**LINES))
    execute(order_lines, "UPDATE order_lines SET amount = 0, updated_at = now() WHERE line = 2")
    config = demo_config(**LINES, order_by=["sku", "order_id", "line"])
    with monkeypatch.context() as patch:
        kill_at(patch, KILLS[moment])
        assert not run_sync(instance, config, raise_on_error=False).success
    served = ch.query(
        f"SELECT count() FROM `{clickhouse.database}`.order_lines FINAL WHERE _is_deleted = 0"
    ).result_rows[0][0]
    assert served == 300  # the old table, or the new one once exchanged: whole either way

    steps = step_metadata(run_sync(instance, config))
    if moment == "after the exchange":  # the new layout is in place: nothing to rebuild
        assert "initial_load" not in steps
    else:
        assert steps["initial_load"]["rebuilt_because"].startswith("order_by is (order_id, line)")
    assert tables_in(ch, clickhouse) == ["order_lines"]
    verify = run_sync(instance, config, job_name="verify_clickhouse")
    assert all(check.passed for check in verify.get_asset_check_evaluations())


def kill_at(patch: pytest.MonkeyPatch, where: str) -> None:
    """The step dies at one point of a rebuild (an error no retry follows)."""
    if where == "insert":  # during the load into the new table
        insert_batches = table_sync.insert_batches

        def insert_then_die(client, target, *args):
            insert_batches(client, target, *args)
            if target.name.endswith(rebuild.REBUILD_SUFFIX):
                raise SyncError("killed while loading the new table")

        patch.setattr(table_sync, "insert_batches", insert_then_die)
        return

    def die_at_swap(client, target, loaded):
        if where == "exchange":
            raise SyncError("killed before the exchange ran")
        client.command(exchange_sql(target, loaded))  # the exchange, then death before the drop
        raise SyncError("killed after the exchange")

    patch.setattr(rebuild, "swap_in", die_at_swap)


def test_cluster_ddl_parses_with_clickhouse_s_own_parser(ch):
    """No cluster runs here: the statements pg2ch sends ON CLUSTER are parsed by ClickHouse."""
    target = TargetTable(
        database="analytics",
        name="orders",
        columns=(ColumnMapping("id", "Int64"), ColumnMapping("updated_at", "DateTime64(6, 'UTC')")),
        primary_key=("id",),
        version_column="updated_at",
        layout=Layout(partition_by="toYYYYMM(updated_at)", settings=(("index_granularity", 512),)),
        cluster="main",
    )
    other = TargetTable("analytics", "orders__pg2ch_rebuild", target.columns, ("id",),
                        "updated_at", cluster="main")  # fmt: skip
    statements = [create_table_sql(target), exchange_sql(target, other), drop_table_sql(other)]
    formatted = [ch.query("SELECT formatQuery({q:String})", parameters={"q": s}).result_rows[0][0]
                 for s in statements]  # fmt: skip
    assert "ON CLUSTER main" in formatted[0]
    assert "ENGINE = ReplicatedReplacingMergeTree(updated_at, _is_deleted)" in formatted[0]
    assert formatted[1:] == [
        "EXCHANGE TABLES analytics.orders AND analytics.orders__pg2ch_rebuild ON CLUSTER main",
        "DROP TABLE IF EXISTS analytics.orders__pg2ch_rebuild ON CLUSTER main",
    ]
