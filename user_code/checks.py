"""Asset checks per table, all on its last sync step.

`window_parity` and `freshness` are declared by the table's sync op and evaluated inside it,
on the connections it already holds, right after the steps they check: a run of hundreds of
tables runs one op per table, not three. Each costs about what the run read. `content_checksum`
and `row_count_parity` read both tables whole, so they are an op of their own in the
`verify_clickhouse` job, which also records the table's exact row count.
"""

import time
from collections.abc import Iterator

import dagster as dg

from user_code.resources import ClickHouseResource, PostgresResource, open_table
from user_code.state import (
    CONTENT_CHECKSUM,
    FRESHNESS,
    ROW_COUNT,
    ROW_COUNT_PARITY,
    WINDOW_PARITY,
    TableKeys,
    lag,
)
from user_code.steps import TableSteps
from user_code.sync.compare import Comparison, compare_content
from user_code.sync.settings import TableSpec
from user_code.sync.watermark import to_text
from user_code.sync.window import count_window


def sync_check_specs(spec: TableSpec, keys: TableKeys) -> list[dg.AssetCheckSpec]:
    """The checks a table's sync op evaluates itself (`evaluate_sync_checks`)."""
    return [
        dg.AssetCheckSpec(
            WINDOW_PARITY,
            asset=keys.last_step,
            description=(
                f"The live rows of {spec.source} whose `{spec.updated_at or spec.created_at}` "
                "lies in the window this run read (from where its read started to the "
                f"watermark it reached) equal the keys of ClickHouse `{spec.target}` whose "
                "newest version lies there. Each engine counts by its index, so the check costs "
                "what the run read; the whole table is counted by `row_count_parity` in "
                "verify_clickhouse. "
                "A warning while writes are in flight; a lasting gap means rows were lost."
            )
            if spec.cursors
            else (
                f"Live rows in {spec.source} equal rows in ClickHouse `{spec.target}` read with "
                "FINAL, after the table was replaced whole."
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
    context: dg.AssetExecutionContext, spec: TableSpec, keys: TableKeys, steps: TableSteps
) -> Iterator[dg.AssetCheckResult]:
    """The selected ones of `sync_check_specs`, after the op's steps."""
    selected = {check.name for check in context.selected_asset_check_keys}
    if WINDOW_PARITY in selected:
        yield _window_parity(keys, steps)
    if FRESHNESS in selected:
        yield _freshness(context.instance, spec, keys, steps)


def _window_parity(keys: TableKeys, steps: TableSteps) -> dg.AssetCheckResult:
    window = steps.read_window()
    counts = count_window(steps.session, steps.table, window)
    return dg.AssetCheckResult(
        asset_key=keys.last_step,
        check_name=WINDOW_PARITY,
        passed=counts.postgres_rows == counts.clickhouse_rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "window": str(window),
            "postgres_rows": counts.postgres_rows,
            "clickhouse_rows": counts.clickhouse_rows,
            "difference": counts.clickhouse_rows - counts.postgres_rows,
        },
    )


def _freshness(
    instance: dg.DagsterInstance, spec: TableSpec, keys: TableKeys, steps: TableSteps
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
    source_latest, watermark = steps.newest_in_source(column), steps.watermark
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


def _verify_check_specs(spec: TableSpec, keys: TableKeys) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            CONTENT_CHECKSUM,
            asset=keys.last_step,
            description=(
                f"Every column of every live row in ClickHouse `{spec.target}` equals "
                f"{spec.source}: counts plus a checksum per key range, in bounded memory. "
                "Reads both tables in full, so it runs in the `verify_clickhouse` job."
            ),
            # After the tombstones of the same verify run, if the table has them.
            additional_deps=[keys.reconcile_deletes] if spec.hard_deletes else [],
        ),
        dg.AssetCheckSpec(
            ROW_COUNT_PARITY,
            asset=keys.last_step,
            description=(
                f"Live rows in {spec.source} equal rows in ClickHouse `{spec.target}` read "
                "with FINAL (one row per key, deletions left out), over the whole table. "
                "A warning while writes are in flight; a lasting gap means rows were lost "
                "or duplicated."
            ),
            additional_deps=[keys.reconcile_deletes] if spec.hard_deletes else [],
        ),
    ]


def build_verify_checks(spec: TableSpec) -> dg.AssetChecksDefinition:
    """`content_checksum` and `row_count_parity` from one comparison of the whole table; the
    exact count of live rows is recorded as `dagster/row_count` (an observation of the last
    step), where the next sync runs count on from."""
    keys = TableKeys.of(spec)

    @dg.multi_asset_check(
        name=f"verify_{spec.target}",
        specs=_verify_check_specs(spec, keys),
        can_subset=True,
    )
    def verify_table(
        context: dg.AssetCheckExecutionContext,
        postgres: PostgresResource,
        clickhouse: ClickHouseResource,
    ) -> Iterator[dg.AssetCheckResult]:
        with open_table(spec, postgres, clickhouse) as (session, table):
            comparison = compare_content(session, table)
        context.op_execution_context.log_event(
            dg.AssetObservation(
                asset_key=keys.last_step, metadata={ROW_COUNT: comparison.clickhouse_rows}
            )
        )
        selected = {check.name for check in context.selected_asset_check_keys}
        if CONTENT_CHECKSUM in selected:
            yield _content_checksum(keys, comparison)
        if ROW_COUNT_PARITY in selected:
            yield _row_count_parity(keys, comparison)

    return verify_table


def _content_checksum(keys: TableKeys, comparison: Comparison) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=keys.last_step,
        check_name=CONTENT_CHECKSUM,
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


def _row_count_parity(keys: TableKeys, comparison: Comparison) -> dg.AssetCheckResult:
    postgres_rows, clickhouse_rows = comparison.postgres_rows, comparison.clickhouse_rows
    return dg.AssetCheckResult(
        asset_key=keys.last_step,
        check_name=ROW_COUNT_PARITY,
        passed=postgres_rows == clickhouse_rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "postgres_rows": postgres_rows,
            "clickhouse_rows": clickhouse_rows,
            "difference": clickhouse_rows - postgres_rows,
        },
    )
