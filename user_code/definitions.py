import os

import dagster as dg

from user_code.assets import build_table_assets
from user_code.automation import build_schedule, build_sensor, sync_job
from user_code.checks import build_table_checks
from user_code.config import SyncConfig, load_sync_config
from user_code.resources import build_executor, build_resources


def build_definitions(sync_config: SyncConfig, clickhouse_url: str) -> dg.Definitions:
    return dg.Definitions(
        assets=[build_table_assets(spec) for spec in sync_config.tables],
        asset_checks=[check for spec in sync_config.tables for check in build_table_checks(spec)],
        jobs=[sync_job],
        schedules=[build_schedule()],
        sensors=[build_sensor(sync_config)],
        resources=build_resources(),
        executor=build_executor(clickhouse_url),
    )


defs = build_definitions(load_sync_config(), os.environ.get("CLICKHOUSE_URL", ""))
