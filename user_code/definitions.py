"""The code location: a plan of the tables to sync, made where the code location loads, and
every definition built from it.

The plan (SYNC_CONFIG resolved against the catalog, plan.py) is the state of a Dagster
`StateBackedComponent` kept as a code server snapshot: computed once where the code location
is initialized (the code server, `dg dev`), and handed by Dagster with every run to the
processes that execute it, which build exactly the tables the code server showed from it,
never from the catalog, however the database changed since (a new table appears once the code
location is reloaded).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster.components import DefsStateConfig, DefsStateConfigArgs

from user_code.assets import build_table_assets
from user_code.automation import build_jobs, build_schedules, build_sensor
from user_code.checks import build_verify_checks
from user_code.plan import Plan, describe_skipped, load_plan
from user_code.resources import build_executor, build_resources

PLAN_STATE_KEY = "pg2ch/plan"


def build_definitions(
    plan: Plan, clickhouse_url: str, executor: str = "in_process"
) -> dg.Definitions:
    return dg.Definitions.merge(
        dg.Definitions(
            assets=[asset for spec in plan.tables for asset in build_table_assets(spec)],
            asset_checks=[build_verify_checks(spec) for spec in plan.tables],
            schedules=build_schedules(),
            sensors=[build_sensor(plan)],
            resources=build_resources(),
            executor=build_executor(clickhouse_url, executor),
        ),
        build_jobs(plan),
    )


@dataclass
class PlannedDefinitions(dg.StateBackedComponent):
    """Every definition, from the plan made where the code location is initialized."""

    clickhouse_url: str
    executor: str
    _plan: Plan | None = field(default=None, init=False, repr=False)

    @property
    def defs_state_config(self) -> DefsStateConfig:
        return DefsStateConfig.from_args(
            DefsStateConfigArgs.legacy_code_server_snapshots(), default_key=PLAN_STATE_KEY
        )

    def write_state_to_path(self, state_path: Path) -> None:
        state_path.write_text(self._planned().model_dump_json())

    def build_defs_from_state(
        self, context: dg.ComponentLoadContext, state_path: Path | None
    ) -> dg.Definitions:
        assert state_path is not None, "a code server snapshot always holds the plan"
        plan = Plan.model_validate_json(state_path.read_text())
        return build_definitions(plan, self.clickhouse_url, self.executor)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        try:
            return super().build_defs(context)
        except KeyError as missing:
            # Dagster 1.13.27: where a command loads the module without a load context of its
            # own (`dagster job execute -m`, `dg launch`), the snapshot is looked up where it
            # was never stored. Such a command plans for itself, as a code server does.
            if PLAN_STATE_KEY not in str(missing):
                raise
            return build_definitions(self._planned(), self.clickhouse_url, self.executor)

    def _planned(self) -> Plan:
        """The plan from SYNC_CONFIG and the catalog, made once. A table a pattern matched but
        cannot sync is logged as a warning; one SYNC_CONFIG names fails the load (plan.py)."""
        if self._plan is None:
            self._plan = load_plan()
            if self._plan.skipped:
                dg.get_dagster_logger().warning(f"pg2ch: {describe_skipped(self._plan)}")
        return self._plan


@dg.definitions
def defs() -> dg.Definitions:
    return dg.build_defs_for_component(
        PlannedDefinitions(
            clickhouse_url=os.environ.get("CLICKHOUSE_URL", ""),
            executor=os.environ.get("SYNC_EXECUTOR", "in_process"),
        )
    )
