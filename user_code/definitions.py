import os

import dagster as dg
from dagster._core.definitions.definitions_load_context import (
    DefinitionsLoadContext,
    DefinitionsLoadType,
)

from user_code.assets import build_table_assets
from user_code.automation import build_jobs, build_schedules, build_sensor
from user_code.checks import build_verify_checks
from user_code.plan import Plan, describe_skipped, load_plan
from user_code.resources import build_executor, build_resources

PLAN_METADATA_KEY = "pg2ch/plan"


def build_definitions(
    plan: Plan, clickhouse_url: str, executor: str = "in_process"
) -> dg.Definitions:
    return dg.Definitions(
        assets=[asset for spec in plan.tables for asset in build_table_assets(spec)],
        asset_checks=[build_verify_checks(spec) for spec in plan.tables],
        jobs=build_jobs(plan),
        schedules=build_schedules(),
        sensors=[build_sensor(plan)],
        resources=build_resources(),
        executor=build_executor(clickhouse_url, executor),
    ).with_reconstruction_metadata({PLAN_METADATA_KEY: plan.model_dump_json()})


def planned() -> Plan:
    """The code location's plan. Read from SYNC_CONFIG and the catalog where the code location
    is initialized (the code server, `dg dev`, `dagster job execute`), and kept with the
    repository's load data, which Dagster hands to the processes of every run made from it:
    there it is taken back instead of the catalog, so a run builds exactly the tables the
    code server showed, however the database changed since (a new table appears once the
    code location is reloaded). Tables a pattern matched but cannot sync are logged as a
    warning where it is planned; a table SYNC_CONFIG names that cannot be synced fails the
    load (plan.py)."""
    context = DefinitionsLoadContext.get()
    stored = None
    if context.load_type == DefinitionsLoadType.RECONSTRUCTION:
        stored = context.reconstruction_metadata.get(PLAN_METADATA_KEY)
    if stored is not None:
        plan = Plan.model_validate_json(stored)
    else:
        plan = load_plan()
        if plan.skipped:
            dg.get_dagster_logger().warning(f"pg2ch: {describe_skipped(plan)}")
    context.add_to_pending_reconstruction_metadata(PLAN_METADATA_KEY, plan.model_dump_json())
    return plan


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(
        planned(),
        os.environ.get("CLICKHOUSE_URL", ""),
        os.environ.get("SYNC_EXECUTOR", "in_process"),
    )
