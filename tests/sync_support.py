"""Helpers shared by the sync tests: the demo config and one run of the job."""

import os

import dagster as dg

from user_code.config import SyncConfig, parse_sync_config
from user_code.definitions import build_definitions


def demo_config(**overrides) -> SyncConfig:
    table = {
        "source": "public.customers",
        "primary_key": ["id"],
        "created_at": "created_at",
        "updated_at": "updated_at",
        **overrides,
    }
    return parse_sync_config({"tables": [table]})


def run_sync(
    instance: dg.DagsterInstance,
    config: SyncConfig | None = None,
    raise_on_error: bool = True,
    **run_config,
) -> dg.ExecuteInProcessResult:
    """One run of the `postgres_to_clickhouse` job, as the daemon would start it."""
    definitions = build_definitions(config or demo_config(), os.environ["CLICKHOUSE_URL"])
    job = definitions.resolve_job_def("postgres_to_clickhouse")
    run_config = {"ops": {"sync_customers": {"config": run_config}}} if run_config else None
    return job.execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=raise_on_error
    )


def step_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """{"initial_load": {...}, "new_records": {...}, "updates": {...}} of one run."""
    return {
        event.asset_key.path[-1]: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }
