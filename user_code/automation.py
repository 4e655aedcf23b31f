"""The job, its schedule and the sensor that starts it when the source has newer rows."""

import os

import dagster as dg

from user_code.assets import TableKeys, stored_watermarks
from user_code.config import SyncConfig
from user_code.resources import PostgresResource
from user_code.sync.extract import latest_timestamps
from user_code.sync.watermark import to_text

JOB_NAME = "postgres_to_clickhouse"
DEFAULT_CRON = "*/5 * * * *"

sync_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.all(),
    description="Bring every configured table up to date: initial load, new records, updates.",
    tags={"pg2ch/job": JOB_NAME},
)


def build_schedule() -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{JOB_NAME}_schedule",
        job=sync_job,
        cron_schedule=os.environ.get("SYNC_SCHEDULE_CRON", DEFAULT_CRON),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Syncs on a fixed cadence (SYNC_SCHEDULE_CRON), as a safety net.",
    )


def build_sensor(config: SyncConfig) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{JOB_NAME}_sensor",
        job=sync_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Starts a sync of the tables whose source has rows newer than the stored watermark. "
            "Reads only Postgres (max of two indexed columns) and the Dagster instance."
        ),
    )
    def postgres_changes_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
        stale: list[tuple[str, TableKeys]] = []
        with postgres.connect() as connection:
            for spec in config.tables:
                keys = TableKeys.of(spec)
                source = latest_timestamps(
                    connection, spec.source, [spec.created_at, spec.updated_at]
                )
                stored = stored_watermarks(context.instance, keys)
                pairs = zip(source, stored, strict=True)
                if any(s is not None and (w is None or s > w) for s, w in pairs):
                    newest = to_text(max(filter(None, source)))
                    stale.append((f"{spec.target_table}@{newest}", keys))
        if not stale:
            return dg.SkipReason("every table is up to date with its source")
        return dg.RunRequest(
            run_key=";".join(label for label, _ in stale),
            asset_selection=[key for _, keys in stale for key in keys.all()],
        )

    return postgres_changes_sensor
