"""Asset checks per table, all on its `updates` asset: row-count parity, freshness, and the
exact content comparison."""

import time
from collections.abc import Callable
from datetime import timedelta

import dagster as dg

from user_code.config import TableSpec
from user_code.resources import ClickHouseResource, PostgresResource, open_table
from user_code.state import (
    CONTENT_CHECKSUM,
    FRESHNESS,
    ROW_COUNT_PARITY,
    TableKeys,
    lag,
    stored_watermarks,
)
from user_code.sync.load import count_live_rows
from user_code.sync.postgres import count_rows, latest_timestamps
from user_code.sync.watermark import to_text

CheckFunction = Callable[..., dg.AssetCheckResult]


def build_table_checks(spec: TableSpec) -> list[dg.AssetChecksDefinition]:
    keys = TableKeys.of(spec)
    checks: dict[str, tuple[CheckFunction, str]] = {
        ROW_COUNT_PARITY: (
            _row_count_parity(spec),
            f"Live rows in {spec.source} equal rows in ClickHouse `{spec.target_table}` read "
            "with FINAL (one row per key, deletions left out). A warning while writes are in "
            "flight; a lasting gap means rows were lost or duplicated.",
        ),
        FRESHNESS: (
            _freshness(spec, keys),
            f"Lag between the newest `{spec.updated_at or spec.created_at}` in {spec.source} "
            f"and the stored watermark (in replace mode: the age of the last snapshot) stays "
            f"under {spec.freshness_limit}.",
        ),
        CONTENT_CHECKSUM: (
            _content_checksum(spec),
            f"Every column of every live row in ClickHouse `{spec.target_table}` equals "
            f"{spec.source}: counts plus a checksum per key range, in bounded memory. Reads "
            "both tables in full, so it runs in the `verify_clickhouse` job, not every sync.",
        ),
    }
    # The comparison waits for the tombstones of the same verify run, if the table has them.
    after = {CONTENT_CHECKSUM: [keys.reconcile_deletes] if spec.hard_deletes else []}
    return [
        dg.asset_check(
            asset=keys.last_step,
            name=name,
            description=description,
            additional_deps=after.get(name),
        )(check)
        for name, (check, description) in checks.items()
    ]


def _row_count_parity(spec: TableSpec) -> CheckFunction:
    def row_count_parity(
        postgres: PostgresResource, clickhouse: ClickHouseResource
    ) -> dg.AssetCheckResult:
        with open_table(spec, postgres, clickhouse) as table:
            source_rows = count_rows(
                table.postgres, spec.source, table.source.live_row_filter(spec.soft_delete)
            )
            clickhouse_rows = count_live_rows(table.clickhouse, table.target)
        return dg.AssetCheckResult(
            passed=source_rows == clickhouse_rows,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "postgres_rows": source_rows,
                "clickhouse_rows": clickhouse_rows,
                "difference": clickhouse_rows - source_rows,
            },
        )

    return row_count_parity


def _freshness(spec: TableSpec, keys: TableKeys) -> CheckFunction:
    def freshness(
        context: dg.AssetCheckExecutionContext, postgres: PostgresResource
    ) -> dg.AssetCheckResult:
        if spec.mode == "replace":
            return _snapshot_age(context.instance, keys.snapshot, spec.freshness_limit)
        column = spec.updated_at or spec.created_at
        assert column, "incremental and append tables have a cursor"
        with postgres.connect() as connection:
            (source_latest,) = latest_timestamps(connection, spec.source, [column])
        created, updated = stored_watermarks(context.instance, keys)
        watermark = updated if spec.updated_at else created
        if source_latest is None:  # an empty source table is always fresh
            return dg.AssetCheckResult(passed=True, metadata={"lag_s": 0.0})
        if watermark is None:
            return dg.AssetCheckResult(passed=False, description=f"{spec.source} was never synced.")
        behind = lag(source_latest, watermark)
        return dg.AssetCheckResult(
            passed=behind <= spec.freshness_limit,
            metadata={
                "lag_s": round(behind.total_seconds(), 3),
                "source_latest": to_text(source_latest),
                "watermark": to_text(watermark),
            },
        )

    return freshness


def _snapshot_age(
    instance: dg.DagsterInstance, snapshot: dg.AssetKey, limit: timedelta
) -> dg.AssetCheckResult:
    """A table replaced whole is as fresh as its last snapshot."""
    event = instance.get_latest_materialization_event(snapshot)
    if event is None:
        return dg.AssetCheckResult(passed=False, description="never synced")
    age = max(time.time() - event.timestamp, 0.0)
    return dg.AssetCheckResult(
        passed=age <= limit.total_seconds(), metadata={"lag_s": round(age, 3)}
    )


def _content_checksum(spec: TableSpec) -> CheckFunction:
    def content_checksum(
        postgres: PostgresResource, clickhouse: ClickHouseResource
    ) -> dg.AssetCheckResult:
        with open_table(spec, postgres, clickhouse) as table:
            comparison = table.compare_content()
        return dg.AssetCheckResult(
            passed=comparison.equal,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "postgres_rows": comparison.postgres_rows,
                "clickhouse_rows": comparison.clickhouse_rows,
                "differing_columns": comparison.differing_columns,
                "differing_key_ranges": [str(r) for r in comparison.differing_ranges[:20]],
            },
        )

    return content_checksum
