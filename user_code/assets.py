"""Per configured table, from one factory: the sync steps (initial load, new records, updates)
as one op, and the hard-delete reconciliation where configured.

The three steps write into the same ClickHouse table and run as one op, so a run that does the
initial load goes straight on to new records and updates.
"""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TypedDict

import dagster as dg

from user_code.checks import evaluate_sync_checks, sync_check_specs
from user_code.resources import ClickHouseResource, PostgresResource, open_table
from user_code.state import TableKeys
from user_code.steps import Materialization, TableSteps
from user_code.sync import deletes
from user_code.sync.errors import ConnectionFailed, SyncError
from user_code.sync.prepare import Prepared, prepare
from user_code.sync.settings import TableSpec

SYNC_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class SyncRunConfig(dg.Config):
    full_refresh: bool = False
    """Take a new snapshot even though the table was loaded before: into a new table swapped in
    for the old one (a table pg2ch created), or into the table itself (one you created)."""


def _sync_table(
    context: dg.AssetExecutionContext,
    spec: TableSpec,
    keys: TableKeys,
    config: SyncRunConfig,
    postgres: PostgresResource,
    clickhouse: ClickHouseResource,
) -> Iterator[Materialization | dg.AssetCheckResult]:
    selected = context.selected_asset_keys
    with open_table(spec, postgres, clickhouse, context.log.info) as (session, table):
        steps = TableSteps(context.instance, keys, session, table)
        prepared = steps.prepare()
        if spec.mode == "replace":
            if keys.snapshot in selected:
                yield steps.snapshot()
        else:
            yield from _load_steps(context, spec, keys, config, steps, prepared)
        yield from evaluate_sync_checks(context, spec, keys, steps)


def _load_steps(
    context: dg.AssetExecutionContext,
    spec: TableSpec,
    keys: TableKeys,
    config: SyncRunConfig,
    steps: TableSteps,
    prepared: Prepared,
) -> Iterator[Materialization]:
    """The initial load (or a rebuild, where the table must change), then the incremental
    steps. A full refresh of a table pg2ch created is a rebuild: readers keep the old table
    until the new one is complete."""
    selected = context.selected_asset_keys
    rebuild = prepared.rebuild
    if config.full_refresh and not prepared.created and not prepared.adopted:
        rebuild = rebuild or "full_refresh"
    if rebuild and keys.initial_load not in selected:
        raise SyncError(f"{spec.source}: the ClickHouse table needs a rebuild ({rebuild}); "
                        f"run {keys.initial_load.to_user_string()} with it.")  # fmt: skip
    if rebuild:
        context.log.info(f"{spec.source}: rebuilding {spec.target} beside the old one: {rebuild}")
        yield steps.initial_load(rebuild_because=rebuild)
    elif keys.initial_load in selected and (config.full_refresh or not steps.was_loaded(prepared)):
        context.log.info(f"{spec.source}: initial load into {spec.target}")
        yield steps.initial_load()
    if keys.new_records in selected:
        yield steps.new_records()
    if spec.mode == "incremental" and keys.updates in selected:
        yield steps.updates()


def _pool(spec: TableSpec) -> str:
    """One pool per ClickHouse table: with a limit of 1, writers of a table never interleave."""
    return f"clickhouse_{spec.target}"


class _AssetAttributes(TypedDict):
    """What every asset of a table declares."""

    group_name: str
    owners: list[str]
    kinds: set[str]
    tags: dict[str, str]
    metadata: dict[str, str]


def _asset_attributes(spec: TableSpec) -> _AssetAttributes:
    return {
        "group_name": re.sub(r"\W", "_", spec.schema_name),  # Dagster allows only \w here
        "owners": spec.owners,
        "kinds": {"postgres", "clickhouse", spec.mode},  # the mode shows on the asset graph
        "tags": {"pg2ch/mode": spec.mode},
        "metadata": {"source": spec.source, "clickhouse_table": spec.target, "mode": spec.mode},
    }


# The cursor column each step reads by.
_STEP_CURSORS = {"new_records": "created_at", "updates": "updated_at"}
_STEP_DESCRIPTIONS = {
    "initial_load": "Full snapshot of {source}, taken once (or on full_refresh).",
    "new_records": "Rows of {source} whose `{created_at}` is past the watermark.",
    "updates": "Rows of {source} whose `{updated_at}` is past the watermark.",
    "snapshot": "All of {source}, loaded into a new table and swapped in, on every run.",
}


def _step_specs(spec: TableSpec, keys: TableKeys) -> list[dg.AssetSpec]:
    """One asset per step, each depending on the step before."""
    specs = []
    for index, step in enumerate(keys.steps):
        description = _STEP_DESCRIPTIONS[step].format(**spec.model_dump())
        cursor_field = _STEP_CURSORS.get(step)
        column = getattr(spec, cursor_field) if cursor_field else None
        if column in spec.unindexed_cursors:
            description += (
                f" No index on `{column}`: each run scans the whole table. Add one: "
                f"`{spec.index_advice(column)}`"
            )
        deps = [keys.step(keys.steps[index - 1])] if index else []
        specs.append(
            dg.AssetSpec(
                keys.step(step),
                deps=deps,
                description=description,
                skippable=True,
                **_asset_attributes(spec),
            )
        )
    return specs


def build_table_assets(spec: TableSpec) -> list[dg.AssetsDefinition]:
    """The sync steps of one table, and its hard-delete reconciliation when configured."""
    keys = TableKeys.of(spec)

    @dg.multi_asset(
        name=f"sync_{spec.target}",
        specs=_step_specs(spec, keys),
        check_specs=sync_check_specs(spec, keys),
        can_subset=True,
        retry_policy=SYNC_RETRY_POLICY,
        pool=_pool(spec),
        description=f"Copy {spec.source} into ClickHouse `{spec.target}`.",
    )
    def sync_table(
        context: dg.AssetExecutionContext,
        config: SyncRunConfig,
        postgres: PostgresResource,
        clickhouse: ClickHouseResource,
    ) -> Iterator[Materialization | dg.AssetCheckResult]:
        with _failures_explained():
            yield from _sync_table(context, spec, keys, config, postgres, clickhouse)

    if not spec.hard_deletes:
        return [sync_table]
    return [sync_table, _reconcile_deletes_asset(spec, keys)]


def _reconcile_deletes_asset(spec: TableSpec, keys: TableKeys) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.reconcile_deletes,
        deps=[keys.last_step],
        description=(
            f"Tombstones (`_is_deleted = 1`) for keys deleted from {spec.source}, found by "
            "walking ClickHouse's keys in ranges and looking them up in Postgres."
        ),
        retry_policy=SYNC_RETRY_POLICY,
        pool=_pool(spec),
        **_asset_attributes(spec),
    )
    def reconcile_deletes(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        clickhouse: ClickHouseResource,
    ) -> Materialization:
        with (
            _failures_explained(),
            open_table(spec, postgres, clickhouse, context.log.info) as (session, table),
        ):
            table = replace(table, target=prepare(session.clickhouse, table).target)
            started = time.monotonic()
            result = deletes.reconcile_deletes(session, table)
        return dg.MaterializeResult(
            metadata={
                "keys_checked": result.keys_checked,
                "tombstones_written": result.tombstones_written,
                "duration_s": round(time.monotonic() - started, 3),
            }
        )

    return reconcile_deletes


@contextmanager
def _failures_explained() -> Iterator[None]:
    """Errors the user must fix fail the run at once; lost connections are retried."""
    try:
        yield
    except ConnectionFailed:
        raise  # transient: the retry policy tries again, with backoff
    except SyncError as error:
        raise dg.Failure(str(error), allow_retries=False) from None
