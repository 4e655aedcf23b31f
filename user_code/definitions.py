import os

import dagster as dg

from user_code.assets import build_table_assets
from user_code.automation import build_jobs, build_schedules, build_sensor
from user_code.checks import build_table_checks
from user_code.config import SyncConfig, load_sync_config
from user_code.resources import build_executor, build_resources


def build_definitions(sync_config: SyncConfig, clickhouse_url: str) -> dg.Definitions:
    return dg.Definitions(
        assets=[asset for spec in sync_config.tables for asset in build_table_assets(spec)],
        asset_checks=[check for spec in sync_config.tables for check in build_table_checks(spec)],
        jobs=build_jobs(sync_config),
        schedules=build_schedules(),
        sensors=[build_sensor(sync_config)],
        resources=build_resources(),
        executor=build_executor(clickhouse_url),
    )


defs = build_definitions(load_sync_config(), os.environ.get("CLICKHOUSE_URL", ""))
