"""Bad input gets one clear error naming the problem; nothing is written; no credential leaks."""

import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest
from sync_support import demo_config, execute, run_sync, tables_in

from demo.seed import insert_customers
from user_code.config import load_sync_config, parse_sync_config
from user_code.plan import plan_tables
from user_code.resources import ClickHouseResource, PostgresResource
from user_code.sync import SyncError
from user_code.sync.errors import ConnectionFailed

PASSWORD = "S3cret-pa55word"


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sync.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SyncError) as error:
        load_sync_config(str(path))
    return str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SyncError, match=r"SYNC_CONFIG=.*nope\.yaml: no such file"):
        load_sync_config(str(tmp_path / "nope.yaml"))


def test_malformed_yaml(tmp_path):
    assert "is not valid YAML" in config_error(tmp_path, "tables: [source: {")


def test_config_that_is_not_a_mapping(tmp_path):
    assert "expected a mapping with a `tables` list" in config_error(tmp_path, "- a\n- b\n")


TIMESTAMPS = {"created_at": "c", "updated_at": "u"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({**TIMESTAMPS, "mode": "sideways"}, "mode: Input should be 'incremental', 'append'"),
        ({**TIMESTAMPS, "exclude": ["no_schema"]}, "exclude: Value error, must be schema.table"),
        ({**TIMESTAMPS, "primary_key": []}, "primary_key: List should have at least 1 item"),
        ({**TIMESTAMPS, "primary_key": ["id"], "updated": "x"}, "updated: Extra inputs are not"),
        ({**TIMESTAMPS, "primary_key": ["id"], "lookback": "soon"}, "lookback: Input should be"),
        ({**TIMESTAMPS, "primary_key": ["id"], "target": "a-b"}, "target: Value error, must be"),
        (
            {**TIMESTAMPS, "primary_key": ["id"], "snapshot_partitions": 0},
            "snapshot_partitions: Input should be greater than or equal to 1",
        ),
        (
            {**TIMESTAMPS, "primary_key": ["id"], "snapshot_partitions": 17},
            "snapshot_partitions: Input should be less than or equal to 16",
        ),
    ],
)
def test_invalid_table_entry_names_table_and_field(table, message):
    with pytest.raises(SyncError) as error:
        parse_sync_config({"tables": [{"source": "public.t", **table}]})
    assert f"tables[0] (public.t): {message}" in str(error.value)


@pytest.mark.parametrize("source", ["customers", 'public."unterminated', "a.b.c"])
def test_source_must_be_schema_qualified(source):
    with pytest.raises(SyncError, match=r"tables\[0\] \(.*\): source: .*schema\.table"):
        parse_sync_config({"tables": [{"source": source, "primary_key": ["id"],
                                       "created_at": "c", "updated_at": "u"}]})  # fmt: skip


def test_two_tables_into_one_target():
    table = {"primary_key": ["id"], "created_at": "c", "updated_at": "u"}
    config = parse_sync_config({"tables": [{"source": "a.t", **table}, {"source": "b.t", **table}]})
    with pytest.raises(SyncError, match=r"same ClickHouse table 't': a\.t and b\.t; set `target`"):
        plan_tables(config)


def test_a_pattern_cannot_name_one_target():
    with pytest.raises(SyncError, match=r"target: Value error, names one table: a pattern"):
        parse_sync_config({"tables": [{"source": "public.*", "target": "t"}]})


@pytest.fixture
def failed_run(sync_env, customers, ch, clickhouse):
    """Run the sync with a broken config; return the error text and what ClickHouse holds."""
    insert_customers(customers, 10)

    def run(config) -> str:
        result = run_sync(dg.DagsterInstance.ephemeral(), config, raise_on_error=False)
        assert not result.success
        assert tables_in(ch, clickhouse.database) == [], "a failed configuration writes nothing"
        return result.get_step_failure_events()[0].step_failure_data.error.message

    return run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "public.nothing_here"}, "public.nothing_here: no such table in Postgres"),
        ({"created_at": "born"}, "public.customers: `created_at`: no column 'born': name one"),
        ({"primary_key": ["email"]}, "customers: primary key column 'email' is nullable: make"),
        ({"primary_key": ["name"]}, "customers: no primary key or unique index on (name)"),
        ({"created_at": "name"}, "`created_at` column 'name' is text, not a timestamp or"),
        ({"soft_delete": "gone"}, "public.customers: `soft_delete`: no column 'gone': name"),
    ],
)
def test_config_that_does_not_match_the_source(failed_run, overrides, message):
    assert message in failed_run(demo_config(**overrides))


def test_nullable_updated_at_is_refused(failed_run, customers):
    execute(customers, "ALTER TABLE customers ADD COLUMN touched_at timestamptz")
    message = failed_run(demo_config(updated_at="touched_at"))
    assert "`updated_at` column 'touched_at' is nullable: it is the row version" in message


def test_source_column_named_like_pg2ch_own_column_is_refused(failed_run, customers):
    execute(customers, "ALTER TABLE customers ADD COLUMN _is_deleted boolean")
    message = failed_run(demo_config())
    assert "public.customers: column '_is_deleted': pg2ch uses this column name itself" in message
    assert "sync a view that renames the column" in message


def test_table_name_with_quotes_and_sql_is_quoted_not_run(sync_env, customers, ch, clickhouse):
    hostile = 'weird"name; DROP TABLE customers; --'
    execute(
        customers,
        'CREATE TABLE public."weird""name; DROP TABLE customers; --" ('
        '"id; --" bigint PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), '
        "updated_at timestamptz NOT NULL DEFAULT now())",
        'INSERT INTO public."weird""name; DROP TABLE customers; --" ("id; --") VALUES (1), (2)',
    )

    # not a plain name: the ClickHouse table and the assets get a derived one
    config = demo_config(source=f"public.{hostile}", primary_key=["id; --"])
    assert config.tables[0].target == "weird_name__drop_table_customers____"
    result = run_sync(dg.DagsterInstance.ephemeral(), config)

    assert result.success
    rows = ch.query(
        f"SELECT `id; --` FROM `{clickhouse.database}`.weird_name__drop_table_customers____ "
        "FINAL ORDER BY 1"
    )
    assert rows.result_rows == [(1,), (2,)]
    with customers.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM customers")  # fails if the table was dropped
        assert cursor.fetchone() == (0,)


@pytest.fixture
def password_url(postgres_server, pg_url) -> str:
    """PG_URL of a role that must give its password (scram-sha-256) over the socket."""
    hba = Path(postgres_server.pgdata) / "pg_hba.conf"
    rule = "local all pg2ch_secret scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())
        postgres_server.psql(f"CREATE ROLE pg2ch_secret LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        postgres_server.psql("SELECT pg_reload_conf()")
    parts = urlsplit(pg_url)
    return f"postgresql://pg2ch_secret:{PASSWORD}@{parts.path}?{parts.query}"


def test_wrong_postgres_password(password_url):
    wrong = password_url.replace(PASSWORD, "not-the-password")
    with pytest.raises(ConnectionFailed) as error, PostgresResource(url=wrong).connect():
        pass
    assert "password authentication failed" in str(error.value)
    assert "not-the-password" not in str(error.value)


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        (PostgresResource(url=f"mysql://root:{PASSWORD}@db/app"), "PG_URL must be a URL starting"),
        (PostgresResource(url="customers"), "PG_URL must be a URL starting with postgresql://"),
        (ClickHouseResource(url=f"tcp://u:{PASSWORD}@ch:9000"), "CLICKHOUSE_URL must be a URL"),
    ],
)
def test_url_of_the_wrong_kind(resource, message):
    opener = resource.connect if isinstance(resource, PostgresResource) else resource.get_client
    with pytest.raises(SyncError, match=message) as error, opener():
        pass
    assert not isinstance(error.value, ConnectionFailed)  # not retried: it cannot heal
    assert PASSWORD not in str(error.value)


def test_unreachable_postgres():
    url = f"postgresql://sync:{PASSWORD}@/app?host=/nonexistent/socket/dir"
    with pytest.raises(ConnectionFailed) as error, PostgresResource(url=url).connect():
        pass
    assert "cannot connect to Postgres at postgresql://local socket/app" in str(error.value)
    assert PASSWORD not in str(error.value)


def test_unreachable_clickhouse_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://sync:{PASSWORD}@127.0.0.1:{port}/analytics"
    with pytest.raises(ConnectionFailed) as error, ClickHouseResource(url=url).get_client():
        pass
    assert f"cannot open ClickHouse at http://127.0.0.1:{port}/analytics" in str(error.value)
    assert PASSWORD not in str(error.value)


def test_no_credential_in_run_logs(monkeypatch, password_url, customers, clickhouse):
    monkeypatch.setenv("PG_URL", password_url)
    monkeypatch.setenv("CLICKHOUSE_URL", clickhouse.url)
    insert_customers(customers, 5)
    instance = dg.DagsterInstance.ephemeral()

    ok = run_sync(instance)
    failed = run_sync(instance, demo_config(updated_at="nope"), raise_on_error=False)

    assert ok.success and not failed.success
    logs = {
        result: "\n".join(f"{r.user_message} {r.dagster_event}" for r in instance.all_logs(result))
        for result in (ok.run_id, failed.run_id)
    }
    assert "no column 'nope'" in logs[failed.run_id]
    assert all(PASSWORD not in text for text in logs.values())


def test_embedded_clickhouse_held_by_another_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time, clickhouse_connect
            client = clickhouse_connect.get_client(dsn="chdb://{tmp_path}")
            client.command("CREATE TABLE held (x UInt8) ENGINE = MergeTree ORDER BY x")
            print("open", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        second = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                from user_code.resources import ClickHouseResource
                with ClickHouseResource(url="chdb://{tmp_path}").get_client() as client:
                    client.query("SELECT count() FROM held")
            """)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode != 0
    assert "only one process may open a chdb directory" in second.stderr
