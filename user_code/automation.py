"""Jobs, their schedules, and the sensor that starts a sync when the source has newer rows."""

import os

import dagster as dg

from user_code.plan import Plan
from user_code.resources import PostgresResource
from user_code.state import (
    CONTENT_CHECKSUM,
    FRESHNESS,
    ROW_COUNT_PARITY,
    WINDOW_PARITY,
    TableKeys,
    cursors_of,
    latest_materializations,
)
from user_code.sync.postgres import latest_timestamps_of
from user_code.sync.watermark import to_text

SYNC_JOB = "postgres_to_clickhouse"
VERIFY_JOB = "verify_clickhouse"


def _every_table(config: Plan) -> list[TableKeys]:
    return [TableKeys.of(spec) for spec in config.tables]


def build_jobs(config: Plan) -> dg.Definitions:
    """The two jobs, as definitions of their own: Dagster exports no name for the type
    `define_asset_job` returns (1.13.27), and `Definitions.merge` takes them as they are."""
    tables = _every_table(config)
    sync_steps = dg.AssetSelection.assets(*(k for t in tables for k in t.sync_steps()))
    verify_checks = dg.AssetSelection.checks(
        *(t.check(name) for t in tables for name in (CONTENT_CHECKSUM, ROW_COUNT_PARITY))
    )
    reconciliations = dg.AssetSelection.assets(
        *(
            keys.reconcile_deletes
            for spec, keys in zip(config.tables, tables, strict=True)
            if spec.hard_deletes
        )
    )
    sync_job = dg.define_asset_job(
        SYNC_JOB,
        selection=sync_steps - verify_checks,
        description="Bring every table up to date: initial load, new records, updates.",
    )
    verify_job = dg.define_asset_job(
        VERIFY_JOB,
        selection=reconciliations | verify_checks,
        description=(
            "Tombstones for hard deletes (tables with `hard_deletes: true`), then an exact "
            "comparison of every table, content and row count, which also records each "
            "table's exact row count. Reads whole tables: run it rarely."
        ),
    )
    return dg.Definitions(jobs=[sync_job, verify_job])


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


def build_sensor(config: Plan) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{SYNC_JOB}_sensor",
        job_name=SYNC_JOB,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Starts a sync of the tables whose source has rows newer than the stored watermark "
            "(tables replaced whole are synced by the schedule). Reads only Postgres (the max "
            "of each cursor column, all tables in one query) and the Dagster instance."
        ),
    )
    def postgres_changes_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresResource
    ) -> dg.RunRequest | dg.SkipReason:
        specs = [spec for spec in config.tables if spec.cursors]  # replace: the schedule's
        tables = [TableKeys.of(spec) for spec in specs]
        with postgres.connect() as connection:
            newest = latest_timestamps_of(connection, [(s.source, s.cursors) for s in specs])
        events = latest_materializations(context.instance, tables)
        stale: list[tuple[str, TableKeys]] = []
        for spec, keys, source in zip(specs, tables, newest, strict=True):
            created, updated = cursors_of(events, keys)
            stored = [created.watermark, updated.watermark][: len(source)]
            pairs = zip(source, stored, strict=True)
            if any(s is not None and (w is None or s > w) for s, w in pairs):
                stale.append((f"{spec.target}@{to_text(max(filter(None, source)))}", keys))
        if not stale:
            return dg.SkipReason("every table is up to date with its source")
        return dg.RunRequest(
            run_key=";".join(label for label, _ in stale),
            asset_selection=[key for _, keys in stale for key in keys.sync_steps()],
            asset_check_keys=[
                keys.check(name) for _, keys in stale for name in (WINDOW_PARITY, FRESHNESS)
            ],
        )

    return postgres_changes_sensor
