"""What the sync sends to ClickHouse stays within the least-privileged user k8s/ creates.

Every statement of a sync (initial load, new records, updates, an added column, soft and hard
deletes, a table in append mode and one replaced whole on every run, a rebuild) and of
`verify_clickhouse` (tombstones, content comparison) is recorded on its way to chDB (rows
as the HTTP insert a server gets) and mapped to the privilege it needs; each must be granted
to the `sync` user in k8s/clickhouse.yaml, on its own database only. (chDB checks no grants
itself; a ClickHouse server does, which only a cluster shows.)
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from k8s_support import k8s_object
from sync_support import demo_config, run_sync

from demo.seed import insert_customers
from user_code.config import parse_sync_config
from user_code.plan import Plan, plan_tables
from user_code.resources import ClickHouseResource
from user_code.sync import load
from user_code.sync.rebuild import REBUILD_SUFFIX


class RecordingClient:
    """A ClickHouse client that notes each statement before sending it."""

    def __init__(self, client: Any, statements: list[str]):
        self._client, self._statements = client, statements

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._statements.append(sql)
        return self._client.command(sql, *args, **kwargs)

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._statements.append(sql)
        return self._client.query(sql, *args, **kwargs)

    def query_arrow(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._statements.append(sql)
        return self._client.query_arrow(sql, *args, **kwargs)

    def raw_insert(self, table: str, columns: Any, data: Any, settings: Any, fmt: str) -> Any:
        self._statements.append(f"INSERT INTO {table} FORMAT {fmt}")
        return self._client.raw_insert(table, columns, data, settings, fmt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def privileges(sql: str) -> set[str]:
    """The privileges a statement needs, named as in GRANT."""
    words = sql.split()
    head = words[0].upper()
    if head == "SELECT":
        return {"SELECT"}
    if head == "INSERT":
        return {"INSERT", "SELECT"} if re.search(r"\bSELECT\b", sql, re.I) else {"INSERT"}
    if head in {"CREATE", "DROP"}:
        return {f"{head} {words[1].upper()}"}
    if head in {"EXCHANGE", "RENAME"}:  # what ClickHouse checks on both tables
        return {"SELECT", "DROP TABLE", "CREATE TABLE", "INSERT"}
    return {head}  # ALTER, TRUNCATE, ...


def granted() -> tuple[set[str], str]:
    users = k8s_object("ConfigMap", "clickhouse-users")["data"]["sync.xml"]
    (grant,) = re.findall(r"<query>GRANT (.*?) ON (\w+)\.\*</query>", users)
    return {p.strip() for p in grant[0].split(",")}, grant[1]


@contextmanager
def recorded(monkeypatch, statements: list[str]) -> Iterator[None]:
    get_client = ClickHouseResource.get_client

    @contextmanager
    def recording_client(self: ClickHouseResource) -> Iterator[RecordingClient]:
        with get_client(self) as client:
            yield RecordingClient(client, statements)

    monkeypatch.setattr(ClickHouseResource, "get_client", recording_client)
    # Rows go in as they would into a server (chDB would read them in-process, unrecorded).
    monkeypatch.setattr(load, "insert_in_process", load.insert_over_http)
    yield


def test_sync_and_verify_send_only_what_the_sync_user_may_run(
    monkeypatch, sync_env, customers, ch, clickhouse
):
    ch.command(f"CREATE DATABASE `{clickhouse.database}`")  # the server creates it in k8s/
    customers_table = demo_config(soft_delete="deleted_at", hard_deletes=True).tables[0]
    lookups = [
        {"source": "public.events", "primary_key": ["id"], "mode": "append",
         "created_at": "created_at", "hard_deletes": True},
        {"source": "public.countries", "primary_key": ["code"], "mode": "replace"},
    ]  # fmt: skip
    config = Plan(
        tables=[customers_table, *plan_tables(parse_sync_config({"tables": lookups})).tables]
    )
    with customers.cursor() as cursor:
        cursor.execute("ALTER TABLE customers ADD COLUMN deleted_at timestamptz")
        cursor.execute("CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz NOT NULL)")
        cursor.execute("CREATE TABLE countries (code char(2) PRIMARY KEY, name text)")
        cursor.execute("INSERT INTO events SELECT g, now() FROM generate_series(1, 9) g")
        cursor.execute("INSERT INTO countries VALUES ('DE', 'Germany'), ('FR', 'France')")
    customers.commit()
    instance = dg.DagsterInstance.ephemeral()
    statements: list[str] = []
    with recorded(monkeypatch, statements):
        insert_customers(customers, 20)
        run_sync(instance, config)
        with customers.cursor() as cursor:
            cursor.execute("UPDATE customers SET name = 'x', updated_at = now() WHERE id < 5")
            cursor.execute(
                "UPDATE customers SET deleted_at = now(), updated_at = now() WHERE id = 6"
            )
            cursor.execute("DELETE FROM customers WHERE id = 7")
            cursor.execute("DELETE FROM events WHERE id = 7")
            cursor.execute("UPDATE countries SET name = 'Deutschland' WHERE code = 'DE'")
            cursor.execute("ALTER TABLE customers ADD COLUMN nickname text")
        customers.commit()
        insert_customers(customers, 5)
        run_sync(instance, config)
        run_sync(instance, config, full_refresh=True)  # a rebuild beside the live table
        verify = run_sync(instance, config, job_name="verify_clickhouse")
    failed = [c for c in verify.get_asset_check_evaluations() if not c.passed]
    assert not failed, [(c.asset_key, c.check_name, c.metadata) for c in failed]

    allowed, database = granted()
    needed = {privilege for sql in statements for privilege in privileges(sql)}
    assert needed <= allowed, f"not granted in k8s/clickhouse.yaml: {needed - allowed}"
    assert {"CREATE TABLE", "ALTER", "INSERT", "SELECT"} <= needed  # the recording works
    assert any(s.endswith("FORMAT ArrowStream") for s in statements)  # the rows' inserts too
    assert any(s.startswith("EXCHANGE") and REBUILD_SUFFIX in s for s in statements)
    for sql in statements:
        for name in re.findall(r"`([^`]+)`\.`", sql):
            assert name == clickhouse.database, f"a statement outside its database: {sql}"
    assert database == "analytics"
    assert allowed == needed, f"granted but never needed: {allowed - needed}"
