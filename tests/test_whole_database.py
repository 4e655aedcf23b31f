"""Whole databases: tables chosen by pattern, settings from `defaults` and overrides, three
modes, every table that cannot be synced skipped with its reason, and the plan command."""

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
import yaml
from fault_support import intercept_inserts, reading_throughout
from sync_support import assert_verified, engine_table, execute, run_sync, tables_in

from demo.stack import REPO_ROOT
from user_code.config import parse_sync_config
from user_code.plan import Plan, plan_tables
from user_code.sync import load, streaming
from user_code.sync.compare import compare_content
from user_code.sync.discovery import list_tables
from user_code.sync.errors import SyncError
from user_code.sync.postgres import connect
from user_code.sync.rebuild import replace_whole
from user_code.sync.table import Session, Table

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
        '"shop"."Mixed Case"': ("mixed_case", "incremental", ("id",)),
        '"shop"."countries"': ("countries", "replace", ("code",)),
        '"shop"."events"': ("events", "append", ("id",)),
        '"shop"."orders"': ("orders", "incremental", ("id",)),
        '"shop"."readings"': ("readings", "incremental", ("id", "taken_at")),
    }
    assert result.skipped == []
    events = by_source(result)['"shop"."events"']
    assert (events.created_at, events.updated_at) == ("created_at", None)
    assert by_source(result)['"shop"."countries"'].cursors == ()


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


# (table, the entry that matches it beside `shop.*`, the reason it cannot be synced)
UNSYNCABLE = [
    ("CREATE TABLE shop.no_key (id int, created_at timestamptz NOT NULL, "
     "updated_at timestamptz NOT NULL)", {}, "no primary key: add one, or name primary_key"),
    ("CREATE TABLE shop.text_cursor (id int PRIMARY KEY, created_at text, "
     "updated_at timestamptz NOT NULL)", {},
     "`created_at` column 'created_at' is text, not a timestamp or timestamptz: name a"),
    ("CREATE TABLE shop.loose_version (id int PRIMARY KEY, created_at timestamptz, "
     "updated_at timestamptz)", {},
     "`updated_at` column 'updated_at' is nullable: it is the row version; make it NOT NULL"),
    ("CREATE TABLE shop.no_cursor (id int PRIMARY KEY)", {"mode": "incremental"},
     "mode incremental needs `created_at`, and no column of the table is named as it: name"),
    ("CREATE TABLE shop.no_created (id int PRIMARY KEY, updated_at timestamptz NOT NULL)",
     {"mode": "append"}, "mode append needs `created_at`"),
    ("CREATE TABLE shop.money (id int PRIMARY KEY, price money)", {},
     "column 'price': Postgres type money has no lossless ClickHouse form; sync a view"),
    ("CREATE TABLE shop.secret (id int PRIMARY KEY)", {},
     "the sync's role may not SELECT from it: GRANT SELECT on it to the role"),
]  # fmt: skip


def table_name(ddl: str) -> str:
    return ddl.split()[2]


def quoted(source: str) -> str:
    schema, table = source.split(".")
    return f'"{schema}"."{table}"'


@pytest.fixture
def unsyncable(shop, pg_url, monkeypatch) -> None:
    """Every table of UNSYNCABLE in `shop`, and PG_URL as the sync's own role, which may read
    every table of `shop` but one."""
    execute(shop, *(ddl for ddl, _, _ in UNSYNCABLE))
    role = f"planner_{uuid.uuid4().hex[:8]}"  # roles belong to the whole server
    execute(
        shop,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA shop TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA shop TO {role}",
        f"REVOKE SELECT ON shop.secret FROM {role}",
    )
    monkeypatch.setenv("PG_URL", pg_url.replace("postgres:@", f"{role}:@", 1))


def plan_command(config: dict, tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m user_code.plan` on `config`, with this process's PG_URL."""
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SYNC_CONFIG": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "user_code.plan", *arguments], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True,
    )  # fmt: skip


def load_code_location(config: dict, tmp_path) -> subprocess.CompletedProcess:
    """`dg check defs`: the code location loaded as Dagster loads it, planned from `config`."""
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SYNC_CONFIG": str(path), "VIRTUAL_ENV": sys.prefix}
    return subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# Tables matched by `shop.*` only: the ones that cannot be synced are skipped.
BY_PATTERN = [{"source": "shop.*", "exclude": ["shop.tmp_*"]}] + [
    {"source": f"{table_name(ddl)}*", **settings} for ddl, settings, _ in UNSYNCABLE if settings
]


def test_the_plan_command_shows_every_table_and_every_skip_reason(unsyncable, tmp_path):
    planned = plan_command({"defaults": DEFAULTS, "tables": BY_PATTERN}, tmp_path)
    assert planned.returncode == 0, planned.stderr
    printed = planned.stdout

    assert "5 table(s) to sync:" in printed
    assert '"shop"."events" -> events  mode append, key (id), cursors: created_at' in printed
    assert '"shop"."countries" -> countries  mode replace, key (code), cursors: none' in printed
    assert f"{len(UNSYNCABLE)} table(s) skipped:" in printed
    for ddl, _, reason in UNSYNCABLE:
        assert f"  {quoted(table_name(ddl))}: {reason}" in printed, (ddl, printed)


@pytest.mark.parametrize(
    ("ddl", "settings", "reason"), UNSYNCABLE, ids=[table_name(ddl) for ddl, *_ in UNSYNCABLE]
)
def test_a_table_an_entry_names_that_cannot_be_synced_is_an_error(
    unsyncable, ddl, settings, reason
):
    """However a pattern matches it too: a table named on its own is a request."""
    entries = [{"source": "shop.*"}, {"source": table_name(ddl), **settings}]
    with connect(os.environ["PG_URL"]) as connection, pytest.raises(SyncError) as refused:
        plan(connection, {"defaults": DEFAULTS, "tables": entries})
    assert "SYNC_CONFIG names tables that cannot be synced" in str(refused.value)
    assert f"  {quoted(table_name(ddl))}: {reason}" in str(refused.value)


def test_a_named_table_that_does_not_exist_is_an_error(shop):
    with pytest.raises(SyncError, match=r"shop\.missing: no such table in Postgres \(views"):
        plan(shop, {"tables": [{"source": "shop.*"}, {"source": "shop.missing"}]})


def test_a_named_table_without_a_primary_key_stops_the_plan_and_the_code_location(
    unsyncable, tmp_path
):
    """The plan command exits non-zero and the code location does not load, each saying which
    table and why; the same table matched by a pattern alone is a warning when it loads."""
    named = {"defaults": DEFAULTS, "tables": [{"source": "shop.no_key"}]}
    reason = '"shop"."no_key": no primary key: add one, or name primary_key in its entry'

    planned = plan_command(named, tmp_path)
    assert planned.returncode == 1
    assert "pg2ch: SYNC_CONFIG names tables that cannot be synced" in planned.stderr
    assert reason in planned.stderr
    loaded = load_code_location(named, tmp_path)
    assert loaded.returncode != 0
    assert reason in loaded.stdout + loaded.stderr, loaded.stdout[-3000:]

    by_pattern = {"defaults": DEFAULTS, "tables": [{"source": "shop.no_*"}]}
    loaded = load_code_location(by_pattern, tmp_path)
    assert loaded.returncode == 0, loaded.stdout[-3000:]
    lines = (loaded.stdout + loaded.stderr).splitlines()
    warned = [i for i, line in enumerate(lines) if "pg2ch: 1 table(s) skipped:" in line]
    assert warned, loaded.stdout[-3000:]
    assert "WARNING" in lines[warned[0]] and lines[warned[0] + 1] == f"  {reason}"


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
    assert_verified(instance, result)


@pytest.fixture
def codes(shop, pg_url, ch, clickhouse, monkeypatch) -> tuple[Session, Table]:
    """A lookup table of 3,000 rows in replace mode, loaded once, read in small batches and
    written in parts of a hundred rows (a load's rows reach its table as it runs); since then
    1,000 rows were added and 300 changed in Postgres."""
    monkeypatch.setattr(streaming, "BATCH_SIZE_HINT_BYTES", 16 * 1024)
    monkeypatch.setattr(load, "INSERT_BLOCK_ROWS", 100)
    execute(
        shop,
        "CREATE TABLE shop.codes (code int PRIMARY KEY, label text NOT NULL)",
        "INSERT INTO shop.codes SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g",
    )
    (spec,) = plan(
        shop, {"defaults": {"mode": "auto"}, "tables": [{"source": "shop.codes"}]}
    ).tables
    session, table = engine_table(shop, ch, spec, clickhouse.database, pg_url)
    replace_whole(session, table)
    execute(
        shop,
        "INSERT INTO shop.codes SELECT g, 'new' FROM generate_series(3001, 4000) g",
        "UPDATE shop.codes SET label = 'changed' WHERE code % 10 = 0",
    )
    return session, table


def served(codes: tuple[Session, Table]) -> tuple[int, int]:
    """What readers of the table get: its live rows and a checksum of their content."""
    session, table = codes
    return session.clickhouse.query(content_sql(table)).result_rows[0]


def equal(codes: tuple[Session, Table]) -> bool:
    return compare_content(*codes).equal


def content_sql(table: Table) -> str:
    return (
        f"SELECT count(), sum(cityHash64(code, label)) FROM {table.target.qualified_name} "
        "FINAL WHERE _is_deleted = 0"
    )


def test_readers_see_the_old_table_or_the_new_one_while_a_replace_runs(
    codes, clickhouse, monkeypatch
):
    old = served(codes)
    with reading_throughout(clickhouse, content_sql(codes[1]), monkeypatch) as readings:
        result = replace_whole(*codes)
    new = served(codes)

    assert result.rows_written == 4000
    assert (old[0], new[0]) == (3000, 4000)
    assert readings.after_inserts > 10, "the replace should load in many batches"
    # never an error, a missing table, or a table partly old and partly new
    assert set(readings.seen) <= {old, new}, sorted({str(sample) for sample in readings.seen})
    assert equal(codes)


def test_a_replace_cut_short_leaves_the_old_table_serving(codes, monkeypatch):
    old = served(codes)

    def insert_then_die_on_changed_rows(target, batch, insert) -> None:
        insert(batch)
        if pc.any(pc.equal(batch.column("label"), "changed")).as_py():
            raise ConnectionError("killed after loading changed rows")

    with monkeypatch.context() as patch:
        intercept_inserts(patch, insert_then_die_on_changed_rows)
        with pytest.raises(ConnectionError):
            replace_whole(*codes)
    assert served(codes) == old  # the old table, whole and unchanged
    assert not equal(codes)  # and not yet the new content

    replace_whole(*codes)
    assert served(codes)[0] == 4000
    assert equal(codes)
    session, table = codes
    assert tables_in(session.clickhouse, table.target.database) == ["codes"]  # cut-short dropped
