"""Asset checks per table, all on its last sync step.

`row_count_parity` and `freshness` are declared by the table's sync op and evaluated inside it,
on the connections it already holds, right after the steps they check: a run of hundreds of
tables runs one op per table, not three. `content_checksum` reads both tables whole, so it is
an op of its own in the `verify_clickhouse` job.
"""

import time
from collections.abc import Iterator

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
from user_code.sync.table_sync import TableSync
from user_code.sync.watermark import to_text


def sync_check_specs(spec: TableSpec, keys: TableKeys) -> list[dg.AssetCheckSpec]:
    """The checks a table's sync op evaluates itself (`evaluate_sync_checks`)."""
    return [
        dg.AssetCheckSpec(
            ROW_COUNT_PARITY,
            asset=keys.last_step,
            description=(
                f"Live rows in {spec.source} equal rows in ClickHouse `{spec.target}` read with "
                "FINAL (one row per key, deletions left out). A warning while writes are in "
                "flight; a lasting gap means rows were lost or duplicated."
            ),
        ),
        dg.AssetCheckSpec(
            FRESHNESS,
            asset=keys.last_step,
            description=(
                f"Lag between the newest `{spec.updated_at or spec.created_at}` in {spec.source} "
                "and the stored watermark (in replace mode: the age of the last snapshot) stays "
                f"under {spec.freshness_limit}."
            ),
        ),
    ]


def evaluate_sync_checks(
    context: dg.AssetExecutionContext, spec: TableSpec, keys: TableKeys, table: TableSync
) -> Iterator[dg.AssetCheckResult]:
    """The selected ones of `sync_check_specs`, after the op's steps."""
    selected = {check.name for check in context.selected_asset_check_keys}
    if ROW_COUNT_PARITY in selected:
        yield _row_count_parity(spec, keys, table)
    if FRESHNESS in selected:
        yield _freshness(context.instance, spec, keys, table)


def _row_count_parity(spec: TableSpec, keys: TableKeys, table: TableSync) -> dg.AssetCheckResult:
    live_rows = table.source.live_row_filter(spec.soft_delete)
    source_rows = count_rows(table.postgres, spec.source, live_rows)
    clickhouse_rows = count_live_rows(table.clickhouse, table.target)
    return dg.AssetCheckResult(
        asset_key=keys.last_step,
        check_name=ROW_COUNT_PARITY,
        passed=source_rows == clickhouse_rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "postgres_rows": source_rows,
            "clickhouse_rows": clickhouse_rows,
            "difference": clickhouse_rows - source_rows,
        },
    )


def _freshness(
    instance: dg.DagsterInstance, spec: TableSpec, keys: TableKeys, table: TableSync
) -> dg.AssetCheckResult:
    def result(
        passed: bool, description: str | None = None, **metadata: float | str | None
    ) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            asset_key=keys.last_step,
            check_name=FRESHNESS,
            passed=passed,
            description=description,
            metadata=metadata,
        )

    column = spec.updated_at or spec.created_at
    if column is None:  # replace: as fresh as the last snapshot
        event = instance.get_latest_materialization_event(keys.snapshot)
        if event is None:
            return result(False, f"{spec.source} was never synced.")
        age = max(time.time() - event.timestamp, 0.0)
        return result(age <= spec.freshness_limit.total_seconds(), lag_s=round(age, 3))
    (source_latest,) = latest_timestamps(table.postgres, spec.source, [column])
    created, updated = stored_watermarks(instance, keys)
    watermark = updated if spec.updated_at else created
    if source_latest is None:  # an empty source table is always fresh
        return result(True, lag_s=0.0)
    if watermark is None:
        return result(False, f"{spec.source} was never synced.")
    behind = lag(source_latest, watermark)
    return result(
        behind <= spec.freshness_limit,
        lag_s=round(behind.total_seconds(), 3),
        source_latest=to_text(source_latest),
        watermark=to_text(watermark),
    )


def build_content_checksum(spec: TableSpec) -> dg.AssetChecksDefinition:
    keys = TableKeys.of(spec)

    @dg.asset_check(
        asset=keys.last_step,
        name=CONTENT_CHECKSUM,
        description=(
            f"Every column of every live row in ClickHouse `{spec.target}` equals "
            f"{spec.source}: counts plus a checksum per key range, in bounded memory. Reads "
            "both tables in full, so it runs in the `verify_clickhouse` job, not every sync."
        ),
        # The comparison waits for the tombstones of the same verify run, if the table has them.
        additional_deps=[keys.reconcile_deletes] if spec.hard_deletes else [],
    )
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
                "duplicate_keys": [str(key) for key in comparison.duplicate_keys[:20]],
                "differing_key_ranges": [str(r) for r in comparison.differing_ranges[:20]],
            },
        )

    return content_checksum
