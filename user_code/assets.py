"""Per configured table, three assets from one factory: initial load, new records, updates.

All three write into the same ClickHouse table and run as one op, so a run that does the
initial load goes straight on to new records and updates. Watermarks live in the metadata of
each materialization, read back from the Dagster instance: they survive restarts, show in the
UI, and are stored only after ClickHouse acknowledged every insert of the step.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from user_code.config import TableSpec
from user_code.resources import ClickHouseResource, PostgresResource
from user_code.sync.errors import ConnectionFailed, SyncError
from user_code.sync.table_sync import StepResult, TableSync
from user_code.sync.watermark import Cursor, from_text, latest, to_text

CREATED_AT_WATERMARK = "created_at_watermark"
UPDATED_AT_WATERMARK = "updated_at_watermark"

SYNC_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dataclass(frozen=True)
class TableKeys:
    """The asset keys of one table: `<clickhouse table>/initial_load|new_records|updates`."""

    initial_load: dg.AssetKey
    new_records: dg.AssetKey
    updates: dg.AssetKey

    @classmethod
    def of(cls, spec: TableSpec) -> "TableKeys":
        return cls(*(dg.AssetKey([spec.target_table, step]) for step in cls.__dataclass_fields__))

    def all(self) -> list[dg.AssetKey]:
        return [self.initial_load, self.new_records, self.updates]


def _stored(instance: dg.DagsterInstance, key: dg.AssetKey, field: str) -> datetime | None:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(field)
    return from_text(value.value if value is not None else None)


def stored_watermarks(
    instance: dg.DagsterInstance, keys: TableKeys
) -> tuple[datetime | None, datetime | None]:
    """(created_at, updated_at) watermarks: the latest of what the steps stored."""
    created_at = latest(
        _stored(instance, keys.initial_load, CREATED_AT_WATERMARK),
        _stored(instance, keys.new_records, CREATED_AT_WATERMARK),
    )
    updated_at = latest(
        _stored(instance, keys.initial_load, UPDATED_AT_WATERMARK),
        _stored(instance, keys.updates, UPDATED_AT_WATERMARK),
    )
    return created_at, updated_at


class SyncRunConfig(dg.Config):
    full_refresh: bool = False
    """Take a new snapshot even though the table was loaded before."""


def _materialization(
    key: dg.AssetKey, result: StepResult, table: str, watermarks: dict[str, datetime | None]
) -> dg.MaterializeResult:
    metadata: dict[str, object] = {
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "duration_s": round(result.seconds, 3),
        "rows_per_s": round(result.rows_per_second, 1),
        "clickhouse_table": table,
    }
    metadata.update({name: to_text(value) for name, value in watermarks.items() if value})
    return dg.MaterializeResult(asset_key=key, metadata=metadata)


def _sync_table(
    context: dg.AssetExecutionContext,
    spec: TableSpec,
    keys: TableKeys,
    config: SyncRunConfig,
    postgres: PostgresResource,
    clickhouse: ClickHouseResource,
) -> Iterator[dg.MaterializeResult]:
    selected = context.selected_asset_keys
    created_at, updated_at = stored_watermarks(context.instance, keys)
    with postgres.connect() as connection, clickhouse.get_client() as client:
        table = TableSync(spec, connection, client, clickhouse.database, log=context.log.info)
        target = table.target.qualified_name
        was_loaded = not table.prepare() and (
            context.instance.get_latest_materialization_event(keys.initial_load) is not None
        )
        if keys.initial_load in selected and (config.full_refresh or not was_loaded):
            context.log.info(f"{spec.source}: initial load into {target}")
            result = table.snapshot()
            created_at = latest(created_at, result.created_at)
            updated_at = latest(updated_at, result.updated_at)
            yield _materialization(
                keys.initial_load,
                result,
                target,
                {CREATED_AT_WATERMARK: created_at, UPDATED_AT_WATERMARK: updated_at},
            )
        if keys.new_records in selected:
            result = table.new_records(Cursor(spec.created_at, created_at, spec.lookback))
            created_at = latest(created_at, result.created_at)
            yield _materialization(
                keys.new_records, result, target, {CREATED_AT_WATERMARK: created_at}
            )
        if keys.updates in selected:
            result = table.updates(Cursor(spec.updated_at, updated_at, spec.lookback), created_at)
            updated_at = latest(updated_at, result.updated_at)
            yield _materialization(keys.updates, result, target, {UPDATED_AT_WATERMARK: updated_at})


def build_table_assets(spec: TableSpec) -> dg.AssetsDefinition:
    keys = TableKeys.of(spec)
    common = {
        "group_name": spec.schema_name,
        "kinds": {"postgres", "clickhouse"},
        "skippable": True,
        "metadata": {"source": spec.source, "clickhouse_table": spec.target_table},
    }
    specs = [
        dg.AssetSpec(
            keys.initial_load,
            description=f"Full snapshot of {spec.source}, taken once (or on full_refresh).",
            **common,
        ),
        dg.AssetSpec(
            keys.new_records,
            deps=[keys.initial_load],
            description=f"Rows of {spec.source} whose `{spec.created_at}` is past the watermark.",
            **common,
        ),
        dg.AssetSpec(
            keys.updates,
            deps=[keys.new_records],
            description=f"Rows of {spec.source} whose `{spec.updated_at}` is past the watermark.",
            **common,
        ),
    ]

    @dg.multi_asset(
        name=f"sync_{spec.target_table}",
        specs=specs,
        can_subset=True,
        retry_policy=SYNC_RETRY_POLICY,
        description=f"Copy {spec.source} into ClickHouse `{spec.target_table}`.",
    )
    def sync_table(
        context: dg.AssetExecutionContext,
        config: SyncRunConfig,
        postgres: PostgresResource,
        clickhouse: ClickHouseResource,
    ) -> Iterator[dg.MaterializeResult]:
        try:
            yield from _sync_table(context, spec, keys, config, postgres, clickhouse)
        except ConnectionFailed:
            raise  # transient: the retry policy tries again, with backoff
        except SyncError as error:
            raise dg.Failure(str(error), allow_retries=False) from None

    return sync_table
