"""Jobs, their schedules, and the sensor that starts a sync when the source has newer rows."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import dagster as dg

from user_code.config import SyncConfig
from user_code.resources import PostgresResource
from user_code.state import (
    CONTENT_CHECKSUM,
    FRESHNESS,
    ROW_COUNT_PARITY,
    TableKeys,
    stored_watermarks,
)
from user_code.sync.postgres import latest_timestamps
from user_code.sync.watermark import to_text

if TYPE_CHECKING:  # what define_asset_job returns; not exported by dagster
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

SYNC_JOB = "postgres_to_clickhouse"
VERIFY_JOB = "verify_clickhouse"


def _every_table(config: SyncConfig) -> list[TableKeys]:
    return [TableKeys.of(spec) for spec in config.tables]


def build_jobs(config: SyncConfig) -> list[UnresolvedAssetJobDefinition]:
    tables = _every_table(config)
    sync_steps = dg.AssetSelection.assets(*(k for t in tables for k in t.sync_steps()))
    content_checks = dg.AssetSelection.checks(*(t.check(CONTENT_CHECKSUM) for t in tables))
    reconciliations = dg.AssetSelection.assets(
        *(
            keys.reconcile_deletes
            for spec, keys in zip(config.tables, tables, strict=True)
            if spec.hard_deletes
        )
    )
    return [
        dg.define_asset_job(
            SYNC_JOB,
            selection=sync_steps - content_checks,
            description="Bring every table up to date: initial load, new records, updates.",
        ),
        dg.define_asset_job(
            VERIFY_JOB,
            selection=reconciliations | content_checks,
            description=(
                "Tombstones for hard deletes (tables with `hard_deletes: true`), then an "
                "exact content comparison of every table. Reads whole tables: run it rarely."
            ),
        ),
    ]


def _schedule(
    job_name: str, cron_variable: str, default_cron: str, what: str
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{job_name}_schedule",
        job_name=job_name,
        cron_schedule=os.environ.get(cron_variable, default_cron),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{what} ({cron_variable}, default `{default_cron}`).",
    )


def build_schedules() -> list[dg.ScheduleDefinition]:
    return [
        _schedule(SYNC_JOB, "SYNC_SCHEDULE_CRON", "*/5 * * * *", "Syncs on a fixed cadence"),
        _schedule(VERIFY_JOB, "SYNC_VERIFY_CRON", "17 3 * * *", "Reconciles and compares"),
    ]


def build_sensor(config: SyncConfig) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{SYNC_JOB}_sensor",
        job_name=SYNC_JOB,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Starts a sync of the tables whose source has rows newer than the stored watermark. "
            "Reads only Postgres (max of two indexed columns) and the Dagster instance."
        ),
    )
    def postgres_changes_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresResource
    ) -> dg.RunRequest | dg.SkipReason:
        stale: list[tuple[str, TableKeys]] = []
        with postgres.connect() as connection:
            for spec, keys in zip(config.tables, _every_table(config), strict=True):
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
            asset_selection=[key for _, keys in stale for key in keys.sync_steps()],
            asset_check_keys=[
                keys.check(name) for _, keys in stale for name in (ROW_COUNT_PARITY, FRESHNESS)
            ],
        )

    return postgres_changes_sensor
