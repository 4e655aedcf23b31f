"""Helpers shared by the sync tests: the demo config, one run of a job, statements on the
source, and what ClickHouse holds."""

import os
from dataclasses import replace

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
from clickhouse_connect.driver.client import Client

from user_code.config import parse_sync_config
from user_code.definitions import build_definitions
from user_code.plan import Plan, plan_tables
from user_code.resources import ClickHouseResource
from user_code.state import CONTENT_CHECKSUM, ROW_COUNT_PARITY
from user_code.sync.compare import Comparison, compare_content
from user_code.sync.postgres import connect
from user_code.sync.prepare import prepare
from user_code.sync.settings import TableSpec
from user_code.sync.table import Session, Table, read_table

# A second shape of table: a two-column key, and timestamps without a time zone.
ORDER_LINES = """
CREATE TABLE public.order_lines (
    order_id bigint, line int, sku uuid NOT NULL, amount numeric(10, 2),
    created_at timestamp NOT NULL DEFAULT now(), updated_at timestamp NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, line)
)
"""


def execute(connection: adbc.Connection, *statements: str) -> None:
    """The statements, in order, then a commit (which ends an application's transaction; the
    sync's own connections run in autocommit)."""
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    connection.commit()


def demo_config(**overrides) -> Plan:
    """The plan of one explicit table (the demo `customers` unless overridden)."""
    table = {
        "source": "public.customers",
        "primary_key": ["id"],
        "created_at": "created_at",
        "updated_at": "updated_at",
        **overrides,
    }
    return plan_tables(parse_sync_config({"tables": [table]}))


def run_sync(
    instance: dg.DagsterInstance,
    config: Plan | None = None,
    raise_on_error: bool = True,
    job_name: str = "postgres_to_clickhouse",
    **run_config,
) -> dg.ExecuteInProcessResult:
    """One run of a job (the sync by default), as the daemon would start it."""
    config = config or demo_config()
    definitions = build_definitions(config, os.environ["CLICKHOUSE_URL"])
    job = definitions.resolve_job_def(job_name)
    op = f"sync_{config.tables[0].target}"
    run_config = {"ops": {op: {"config": run_config}}} if run_config else None
    return job.execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=raise_on_error
    )


# What the verify job checks of every table.
VERIFY_CHECKS = (CONTENT_CHECKSUM, ROW_COUNT_PARITY)


def verify_checks(
    instance: dg.DagsterInstance, config: Plan
) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """A run of the verify job: {(ClickHouse table, check name): evaluation}. Every planned
    table has each of VERIFY_CHECKS, so a check that did not run fails here rather than
    passing unseen."""
    verify = run_sync(instance, config, job_name="verify_clickhouse")
    evaluations = {
        (evaluation.asset_key.path[0], evaluation.check_name): evaluation
        for evaluation in verify.get_asset_check_evaluations()
    }
    expected = {(spec.target, check) for spec in config.tables for check in VERIFY_CHECKS}
    assert set(evaluations) == expected, sorted(evaluations)
    return evaluations


def assert_verified(instance: dg.DagsterInstance, config: Plan) -> None:
    """The verify job ran each of its checks on every table, and each passed."""
    failed = {
        key: {name: value.value for name, value in evaluation.metadata.items()}
        for key, evaluation in verify_checks(instance, config).items()
        if not evaluation.passed
    }
    assert not failed, failed


def compare(config: Plan) -> Comparison:
    """Postgres against ClickHouse `FINAL`, every column of every row of the first table."""
    clickhouse = ClickHouseResource(url=os.environ["CLICKHOUSE_URL"])
    with connect(os.environ["PG_URL"]) as connection, clickhouse.get_client() as client:
        table = read_table(connection, config.tables[0], clickhouse.database)
        return compare_content(Session(connection, client), table)


def engine_table(
    postgres: adbc.Connection, client: Client, spec: TableSpec, database: str, postgres_url: str
) -> tuple[Session, Table]:
    """One table as the engine syncs it, its ClickHouse table made ready as a run makes it
    (`postgres_url` opens the snapshot's other partitions)."""
    table = read_table(postgres, spec, database)
    table = replace(table, target=prepare(client, table).target)
    return Session(postgres, client, postgres_url=postgres_url), table


def step_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """{"initial_load": {...}, "new_records": {...}, "updates": {...}} of one run."""
    return {
        event.asset_key.path[-1]: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def live_rows(ch: Client, database: str, table: str = "customers") -> int:
    """The rows a ClickHouse table serves: one per key (FINAL), deletions left out."""
    sql = f"SELECT count() FROM `{database}`.`{table}` FINAL WHERE _is_deleted = 0"
    return ch.query(sql).result_rows[0][0]


def tables_in(ch: Client, database: str) -> list[str]:
    rows = ch.query(
        "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
        parameters={"db": database},
    ).result_rows
    return [name for (name,) in rows]
