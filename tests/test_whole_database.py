"""Whole databases: tables chosen by pattern, settings from `defaults` and overrides, three
modes, every table that cannot be synced skipped with its reason, and the plan command."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import dagster as dg
import pytest
import yaml
from sync_support import cut_short, route_inserts, run_sync

from demo.stack import REPO_ROOT
from user_code.config import parse_sync_config
from user_code.plan import Plan, plan_tables
from user_code.sync import streaming
from user_code.sync.discovery import list_tables
from user_code.sync.errors import SyncError
from user_code.sync.postgres import connect
from user_code.sync.rebuild import replace_whole
from user_code.sync.table_sync import TableSync

SHOP = [
    "CREATE SCHEMA shop",
    # incremental: both cursors
    """CREATE TABLE shop.orders (id bigint PRIMARY KEY, amount numeric(10, 2),
       created_at timestamptz NOT NULL DEFAULT now(),
       updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE shop."Mixed Case" (id int PRIMARY KEY,
       created_at timestamptz NOT NULL DEFAULT now(),
       updated_at timestamptz NOT NULL DEFAULT now())""",
    # append: created_at only
    """CREATE TABLE shop.events (id bigint PRIMARY KEY, kind text NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now())""",
    # replace: no cursor
    "CREATE TABLE shop.countries (code char(2) PRIMARY KEY, name text NOT NULL)",
    # one table through its parent, its partitions not matched on their own
    """CREATE TABLE shop.readings (id bigint, taken_at date, value float8,
       created_at timestamptz NOT NULL DEFAULT now(),
       updated_at timestamptz NOT NULL DEFAULT now(),
       PRIMARY KEY (id, taken_at)) PARTITION BY RANGE (taken_at)""",
    "CREATE TABLE shop.readings_2025 PARTITION OF shop.readings FOR VALUES FROM "
    "('2025-01-01') TO ('2026-01-01')",
    "CREATE TABLE shop.readings_2026 PARTITION OF shop.readings FOR VALUES FROM "
    "('2026-01-01') TO ('2027-01-01')",
    # never matched: a view, a materialized view, a foreign table
    "CREATE VIEW shop.big_orders AS SELECT * FROM shop.orders WHERE amount > 100",
    "CREATE MATERIALIZED VIEW shop.order_totals AS SELECT sum(amount) AS total FROM shop.orders",
    "CREATE FOREIGN DATA WRAPPER nothing",
    "CREATE SERVER nowhere FOREIGN DATA WRAPPER nothing",
    "CREATE FOREIGN TABLE shop.remote_orders (id bigint) SERVER nowhere",
    # left out by `exclude`
    "CREATE TABLE shop.tmp_import (id int PRIMARY KEY)",
]

DEFAULTS = {"created_at": "created_at", "updated_at": "updated_at", "mode": "auto"}


def execute(connection, *statements: str) -> None:
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    connection.commit()


def plan(connection, raw: dict) -> Plan:
    return plan_tables(parse_sync_config(raw), list_tables(connection))


def by_source(result: Plan) -> dict:
    return {spec.source: spec for spec in result.tables}


@pytest.fixture
def shop(pg):
    execute(pg, *SHOP)
    return pg


def test_a_pattern_matches_tables_and_partitioned_parents_only(shop, pg_url):
    with connect(pg_url) as other_session:  # a temporary table of another session
        execute(other_session, "CREATE TEMPORARY TABLE scratch (id int PRIMARY KEY)")
        result = plan(
            shop,
            {"defaults": DEFAULTS, "tables": [{"source": "shop.*", "exclude": ["shop.tmp_*"]}]},
        )
    assert {s.source: (s.target, s.mode, s.primary_key) for s in result.tables} == {
        '"shop"."Mixed Case"': ("mixed_case", "incremental", ["id"]),
        '"shop"."countries"': ("countries", "replace", ["code"]),
        '"shop"."events"': ("events", "append", ["id"]),
        '"shop"."orders"': ("orders", "incremental", ["id"]),
        '"shop"."readings"': ("readings", "incremental", ["id", "taken_at"]),
    }
    assert result.skipped == []
    events = by_source(result)['"shop"."events"']
    assert (events.created_at, events.updated_at) == ("created_at", None)
    assert by_source(result)['"shop"."countries"'].cursors == []


def test_later_entries_override_earlier_ones_for_the_tables_they_name(shop):
    result = plan(
        shop,
        {
            "defaults": {**DEFAULTS, "lookback": "PT2M", "owners": ["team:data"]},
            "tables": [
                {"source": "shop.*", "exclude": ["shop.tmp_*"], "hard_deletes": True},
                {"source": "shop.o*", "lookback": "PT10M", "owners": ["team:sales"]},
                {"source": "shop.orders", "target": "all_orders", "mode": "append"},
            ],
        },
    )
    orders = by_source(result)['"shop"."orders"']
    assert (orders.target, orders.mode, orders.updated_at) == ("all_orders", "append", None)
    assert (orders.lookback.seconds, orders.owners, orders.hard_deletes) == (
        600,
        ["team:sales"],
        True,
    )
    events = by_source(result)['"shop"."events"']
    assert (events.lookback.seconds, events.owners, events.hard_deletes) == (
        120,
        ["team:data"],
        True,
    )
    assert by_source(result)['"shop"."countries"'].hard_deletes is False  # replaced whole


SKIPPED = [
    ("CREATE TABLE shop.no_key (id int, created_at timestamptz NOT NULL, "
     "updated_at timestamptz NOT NULL)", "shop.no_key", {}, "no primary key"),
    ("CREATE TABLE shop.text_cursor (id int PRIMARY KEY, created_at text, "
     "updated_at timestamptz NOT NULL)", "shop.text_cursor", {},
     "`created_at` column 'created_at' is text, not a timestamp"),
    ("CREATE TABLE shop.loose_version (id int PRIMARY KEY, created_at timestamptz, "
     "updated_at timestamptz)", "shop.loose_version", {},
     "`updated_at` column 'updated_at' is nullable"),
    ("CREATE TABLE shop.no_cursor (id int PRIMARY KEY)", "shop.no_cursor",
     {"mode": "incremental"}, "mode incremental needs `created_at`"),
    ("CREATE TABLE shop.no_created (id int PRIMARY KEY, updated_at timestamptz NOT NULL)",
     "shop.no_created", {"mode": "append"}, "mode append needs `created_at`"),
    ("CREATE TABLE shop.money (id int PRIMARY KEY, price money)", "shop.money", {},
     "column 'price': Postgres type money has no lossless ClickHouse form"),
    ("CREATE TABLE shop.secret (id int PRIMARY KEY)", "shop.secret", {},
     "the sync's role may not SELECT from it"),
    (None, "shop.missing", {}, "no such table in Postgres"),
]  # fmt: skip


def test_the_plan_command_shows_every_table_and_every_skip_reason(shop, pg_url, tmp_path):
    """Planned as the sync's own role, which may read every table of `shop` but one."""
    execute(shop, *(ddl for ddl, *_ in SKIPPED if ddl))
    execute(
        shop,
        "CREATE ROLE planner LOGIN",
        "GRANT USAGE ON SCHEMA shop TO planner",
        "GRANT SELECT ON ALL TABLES IN SCHEMA shop TO planner",
        "REVOKE SELECT ON shop.secret FROM planner",
    )
    entries = [{"source": "shop.*", "exclude": ["shop.tmp_*"]}]
    entries += [{"source": source, **settings} for _, source, settings, _ in SKIPPED if settings]
    entries.append({"source": "shop.missing"})
    config = tmp_path / "sync.yaml"
    config.write_text(yaml.safe_dump({"defaults": DEFAULTS, "tables": entries}))
    env = {**os.environ, "SYNC_CONFIG": str(config),
           "PG_URL": pg_url.replace("postgres:@", "planner:@", 1)}  # fmt: skip
    printed = subprocess.run(
        [sys.executable, "-m", "user_code.plan"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    assert "5 table(s) to sync:" in printed
    assert '"shop"."events" -> events  mode append, key (id), cursors: created_at' in printed
    assert '"shop"."countries" -> countries  mode replace, key (code), cursors: none' in printed
    assert f"{len(SKIPPED)} table(s) skipped:" in printed
    for _, source, _, reason in SKIPPED:
        schema, table = source.split(".")
        quoted = source if source == "shop.missing" else f'"{schema}"."{table}"'
        assert f"  {quoted}: {reason}" in printed, (source, printed)


def test_the_plan_command_fails_on_a_configuration_error(tmp_path):
    config = tmp_path / "sync.yaml"
    config.write_text(
        textwrap.dedent("""
        tables:
          - source: shop.*
            target: one_for_all
    """)
    )
    failed = subprocess.run(
        [sys.executable, "-m", "user_code.plan"], env={**os.environ, "SYNC_CONFIG": str(config)},
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "target: Value error, names one table: a pattern cannot have one" in failed.stderr


def test_tables_that_would_share_a_clickhouse_table_are_an_error(shop):
    execute(
        shop,
        'CREATE TABLE shop."order-lines" (id int PRIMARY KEY)',
        "CREATE TABLE shop.order_lines (id int PRIMARY KEY)",
    )
    shared = r"""'order_lines': "shop"."order-lines" and "shop"."order_lines"; set `target`"""
    with pytest.raises(SyncError, match=shared):
        plan(shop, {"defaults": {"mode": "replace"}, "tables": [{"source": "shop.order*"}]})


def clickhouse_rows(ch, clickhouse, table: str) -> list[tuple]:
    return ch.query(
        f"SELECT * EXCEPT _is_deleted FROM `{clickhouse.database}`.`{table}` FINAL "
        "WHERE _is_deleted = 0 ORDER BY 1"
    ).result_rows


def test_append_and_replace_stay_exact(shop, sync_env, ch, clickhouse, monkeypatch):
    """An append table takes new rows (and, with hard_deletes, deletions); a replace table takes
    everything on every run. Each run ends equal on every column."""
    instance = dg.DagsterInstance.ephemeral()
    raw = {"defaults": DEFAULTS, "tables": [
        {"source": "shop.events", "hard_deletes": True}, {"source": "shop.countries"}]}  # fmt: skip
    result = plan(shop, raw)
    execute(
        shop,
        "INSERT INTO shop.events (id, kind) SELECT g, 'seen' FROM generate_series(1, 50) g",
        "INSERT INTO shop.countries VALUES ('DE', 'Germany'), ('FR', 'France'), ('JP', 'Japan')",
    )
    run_sync(instance, result)
    assert len(clickhouse_rows(ch, clickhouse, "events")) == 50
    assert clickhouse_rows(ch, clickhouse, "countries") == [
        ("DE", "Germany"), ("FR", "France"), ("JP", "Japan")]  # fmt: skip

    execute(
        shop,
        "INSERT INTO shop.events (id, kind) SELECT g, 'later' FROM generate_series(51, 60) g",
        "DELETE FROM shop.events WHERE id <= 5",
        "UPDATE shop.countries SET name = 'Deutschland' WHERE code = 'DE'",
        "DELETE FROM shop.countries WHERE code = 'FR'",
        "INSERT INTO shop.countries VALUES ('BR', 'Brazil')",
    )
    run_sync(instance, result)
    run_sync(instance, result, job_name="verify_clickhouse")
    assert [row[0] for row in clickhouse_rows(ch, clickhouse, "events")] == list(range(6, 61))
    assert clickhouse_rows(ch, clickhouse, "countries") == [
        ("BR", "Brazil"), ("DE", "Deutschland"), ("JP", "Japan")]  # fmt: skip
    verify = run_sync(instance, result, job_name="verify_clickhouse")
    assert all(check.passed for check in verify.get_asset_check_evaluations())


@pytest.fixture
def codes(shop, pg_url, ch, clickhouse, monkeypatch) -> TableSync:
    """A lookup table of 3,000 rows in replace mode, loaded once, read in small batches."""
    monkeypatch.setattr(streaming, "BATCH_SIZE_HINT_BYTES", 16 * 1024)
    execute(
        shop,
        "CREATE TABLE shop.codes (code int PRIMARY KEY, label text NOT NULL)",
        "INSERT INTO shop.codes SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g",
    )
    (spec,) = plan(
        shop, {"defaults": {"mode": "auto"}, "tables": [{"source": "shop.codes"}]}
    ).tables
    table = TableSync(spec.table_settings, shop, ch, clickhouse.database, postgres_url=pg_url)
    table.prepare()
    replace_whole(table)
    execute(
        shop,
        "INSERT INTO shop.codes SELECT g, 'new' FROM generate_series(3001, 4000) g",
        "UPDATE shop.codes SET label = 'changed' WHERE code % 10 = 0",
    )
    return table


def live_rows(client, table: TableSync) -> int:
    return client.query(f"SELECT count() FROM {table.target.qualified_name} FINAL").result_rows[0][
        0
    ]


def test_readers_see_the_old_table_or_the_new_one_while_a_replace_runs(codes, clickhouse):
    seen: list[tuple[float, int | str]] = []  # (when, live rows or the error a read raised)
    reading, done = threading.Event(), threading.Event()

    def read_continuously():
        with clickhouse.get_client() as reader:  # a connection of its own
            while not done.is_set():
                try:
                    seen.append((time.monotonic(), live_rows(reader, codes)))
                except Exception as error:  # a missing or half-built table shows here
                    seen.append((time.monotonic(), type(error).__name__))
                reading.set()

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        reading.wait(timeout=30)
        started = time.monotonic()
        result = replace_whole(codes)
        ended = time.monotonic()
    finally:
        done.set()
        reader.join()
    during = [value for when, value in seen if started <= when <= ended]
    assert result.rows_written == 4000
    assert during, "no read happened while the replace ran"
    assert {value for _, value in seen} <= {3000, 4000}, sorted({str(v) for _, v in seen})
    assert live_rows(codes.clickhouse, codes) == 4000
    assert codes.compare_content().equal


def test_a_replace_cut_short_leaves_the_old_table_serving(codes, monkeypatch):
    with monkeypatch.context() as patch:
        route_inserts(patch, lambda _, rows: cut_short(rows, 1, ConnectionError("killed")))
        with pytest.raises(ConnectionError):
            replace_whole(codes)
    assert live_rows(codes.clickhouse, codes) == 3000  # the old table, whole
    assert not codes.compare_content().equal  # and not yet the new content

    replace_whole(codes)
    assert live_rows(codes.clickhouse, codes) == 4000
    assert codes.compare_content().equal
    tables = codes.clickhouse.query(
        "SELECT name FROM system.tables WHERE database = {db:String}",
        parameters={"db": codes.target.database},
    ).result_rows
    assert tables == [("codes",)]  # the cut-short load was dropped
