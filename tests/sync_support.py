"""Helpers shared by the sync tests: the demo config, one run of the job, broken loads."""

import os
from collections.abc import Callable, Iterator
from itertools import islice

import dagster as dg
import pyarrow as pa
import pytest

from user_code.config import parse_sync_config
from user_code.definitions import build_definitions
from user_code.plan import Plan, plan_tables
from user_code.resources import ClickHouseResource
from user_code.sync import table_sync
from user_code.sync.compare import Comparison
from user_code.sync.postgres import connect
from user_code.sync.table_sync import TableSync
from user_code.sync.target_table import TargetTable

# A second shape of table: a two-column key, and timestamps without a time zone.
ORDER_LINES = """
CREATE TABLE public.order_lines (
    order_id bigint, line int, sku uuid NOT NULL, amount numeric(10, 2),
    created_at timestamp NOT NULL DEFAULT now(), updated_at timestamp NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, line)
)
"""


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
    op = f"sync_{config.tables[0].target_table}"
    run_config = {"ops": {op: {"config": run_config}}} if run_config else None
    return job.execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=raise_on_error
    )


def compare(config: Plan) -> Comparison:
    """Postgres against ClickHouse `FINAL`, every column of every row of the first table."""
    clickhouse = ClickHouseResource(url=os.environ["CLICKHOUSE_URL"])
    with connect(os.environ["PG_URL"]) as connection, clickhouse.get_client() as client:
        table = TableSync(config.tables[0].table_settings, connection, client, clickhouse.database)
        return table.compare_content()


def step_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """{"initial_load": {...}, "new_records": {...}, "updates": {...}} of one run."""
    return {
        event.asset_key.path[-1]: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


Batches = Iterator[pa.RecordBatch]


def route_inserts(
    patch: pytest.MonkeyPatch, route: Callable[[TargetTable, Batches], Batches]
) -> None:
    """Every INSERT of the sync gets its batches through `route(target, batches)`."""
    insert_batches = table_sync.insert_batches

    def routed(client, target, batches, *args):
        insert_batches(client, target, route(target, batches), *args)

    patch.setattr(table_sync, "insert_batches", routed)


def cut_short(batches: Batches, after: int, error: Exception) -> Batches:
    """The first `after` batches, then `error`: a load that breaks off in the middle."""
    yield from islice(batches, after)
    raise error
