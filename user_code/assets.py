"""Per configured table, three assets from one factory: initial load, new records, updates.

All three write into the same ClickHouse table and run as one op, so a run that does the
initial load goes straight on to new records and updates. Watermarks live in the metadata of
each materialization, read back from the Dagster instance: they survive restarts, show in the
UI, and are stored only after ClickHouse acknowledged every insert of the step.
"""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from user_code.config import TableSpec
from user_code.resources import ClickHouseResource, PostgresResource, open_table
from user_code.sync.errors import ConnectionFailed, SyncError
from user_code.sync.extract import latest_timestamps
from user_code.sync.table_sync import StepResult
from user_code.sync.watermark import Cursor, from_text, latest, to_text

CREATED_AT_WATERMARK = "created_at_watermark"
UPDATED_AT_WATERMARK = "updated_at_watermark"
# When the oldest transaction open in the source began, as the step's read began: the next
# read starts there at the latest (see user_code/sync/watermark.py).
OPEN_SINCE = "oldest_open_transaction"

SYNC_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dataclass(frozen=True)
class TableKeys:
    """The asset keys of one table: `<clickhouse table>/<step>`."""

    initial_load: dg.AssetKey
    new_records: dg.AssetKey
    updates: dg.AssetKey
    reconcile_deletes: dg.AssetKey

    @classmethod
    def of(cls, spec: TableSpec) -> "TableKeys":
        return cls(*(dg.AssetKey([spec.target_table, step]) for step in cls.__dataclass_fields__))

    def sync_steps(self) -> list[dg.AssetKey]:
        return [self.initial_load, self.new_records, self.updates]

    def check(self, name: str) -> dg.AssetCheckKey:
        """Every check of a table sits on its `updates` asset, the last step of a sync."""
        return dg.AssetCheckKey(self.updates, name)


def _latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey
) -> dg.EventLogEntry | None:
    event = instance.get_latest_materialization_event(key)
    return event if event is not None and event.asset_materialization is not None else None


def _stored_time(event: dg.EventLogEntry | None, field: str) -> datetime | None:
    value = event.asset_materialization.metadata.get(field) if event else None
    return from_text(value.value if value is not None else None)


@dataclass(frozen=True)
class StoredCursor:
    """What the steps that read one cursor column stored: the watermark (the latest of their
    values) and the oldest transaction open when the most recent of their reads began."""

    watermark: datetime | None
    open_since: datetime | None

    @classmethod
    def of(
        cls,
        events: dict[dg.AssetKey, dg.EventLogEntry | None],
        field: str,
        steps: list[dg.AssetKey],
    ) -> "StoredCursor":
        stored = [event for key in steps if (event := events[key])]
        last_read = max(stored, key=lambda event: event.timestamp, default=None)
        return cls(
            latest(*(_stored_time(event, field) for event in stored)),
            _stored_time(last_read, OPEN_SINCE),
        )


def stored_cursors(instance: dg.DagsterInstance, keys: TableKeys) -> tuple[StoredCursor, ...]:
    """The created_at and updated_at cursors of one table."""
    events = {key: _latest_materialization(instance, key) for key in keys.sync_steps()}
    return (
        StoredCursor.of(events, CREATED_AT_WATERMARK, [keys.initial_load, keys.new_records]),
        StoredCursor.of(events, UPDATED_AT_WATERMARK, [keys.initial_load, keys.updates]),
    )


def stored_watermarks(
    instance: dg.DagsterInstance, keys: TableKeys
) -> tuple[datetime | None, datetime | None]:
    """(created_at, updated_at) watermarks: the latest of what the steps stored."""
    created_at, updated_at = stored_cursors(instance, keys)
    return created_at.watermark, updated_at.watermark


class SyncRunConfig(dg.Config):
    full_refresh: bool = False
    """Take a new snapshot even though the table was loaded before."""


def _materialization(
    key: dg.AssetKey, result: StepResult, table: str, **extra: datetime | float | None
) -> dg.MaterializeResult:
    """Step metadata for the UI's plots; times are stored as exact UTC text."""
    metadata: dict[str, object] = {
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "duration_s": round(result.seconds, 3),
        "rows_per_s": round(result.rows_per_second, 1),
        "held_back_s": round(result.held_back.total_seconds(), 3),
        "clickhouse_table": table,
    }
    for name, value in {**extra, OPEN_SINCE: result.open_since}.items():
        if value is not None:
            metadata[name] = to_text(value) if isinstance(value, datetime) else value
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
    created, updated = stored_cursors(context.instance, keys)
    with open_table(spec, postgres, clickhouse, context.log.info) as table:
        target = table.target.qualified_name
        was_loaded = not table.prepare() and (
            context.instance.get_latest_materialization_event(keys.initial_load) is not None
        )
        if keys.initial_load in selected and (config.full_refresh or not was_loaded):
            context.log.info(f"{spec.source}: initial load into {target}")
            result = table.snapshot()
            created = StoredCursor(latest(created.watermark, result.created_at), result.open_since)
            updated = StoredCursor(latest(updated.watermark, result.updated_at), result.open_since)
            yield _materialization(
                keys.initial_load,
                result,
                target,
                **{
                    CREATED_AT_WATERMARK: created.watermark,
                    UPDATED_AT_WATERMARK: updated.watermark,
                },
            )
        if keys.new_records in selected:
            cursor = Cursor(spec.created_at, created.watermark, spec.lookback, created.open_since)
            result = table.new_records(cursor)
            created = StoredCursor(latest(created.watermark, result.created_at), result.open_since)
            yield _materialization(
                keys.new_records, result, target, **{CREATED_AT_WATERMARK: created.watermark}
            )
        if keys.updates in selected:
            cursor = Cursor(spec.updated_at, updated.watermark, spec.lookback, updated.open_since)
            result = table.updates(cursor, created.watermark)
            updated_at = latest(updated.watermark, result.updated_at)
            (source_latest,) = latest_timestamps(table.postgres, spec.source, [spec.updated_at])
            lag = source_latest - updated_at if source_latest and updated_at else timedelta(0)
            yield _materialization(
                keys.updates,
                result,
                target,
                **{UPDATED_AT_WATERMARK: updated_at},
                lag_s=round(max(lag, timedelta(0)).total_seconds(), 3),
            )


def _pool(spec: TableSpec) -> str:
    """One pool per ClickHouse table: with a limit of 1, writers of a table never interleave."""
    return f"clickhouse_{spec.target_table}"


def _asset_attributes(spec: TableSpec) -> dict:
    return {
        "group_name": re.sub(r"\W", "_", spec.schema_name),  # Dagster allows only \w here
        "owners": spec.owners,
        "kinds": {"postgres", "clickhouse"},
        "metadata": {"source": spec.source, "clickhouse_table": spec.target_table},
    }


def build_table_assets(spec: TableSpec) -> list[dg.AssetsDefinition]:
    """The sync steps of one table, and its hard-delete reconciliation when configured."""
    keys = TableKeys.of(spec)
    common = {**_asset_attributes(spec), "skippable": True}
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
        pool=_pool(spec),
        description=f"Copy {spec.source} into ClickHouse `{spec.target_table}`.",
    )
    def sync_table(
        context: dg.AssetExecutionContext,
        config: SyncRunConfig,
        postgres: PostgresResource,
        clickhouse: ClickHouseResource,
    ) -> Iterator[dg.MaterializeResult]:
        with _failures_explained():
            yield from _sync_table(context, spec, keys, config, postgres, clickhouse)

    if not spec.hard_deletes:
        return [sync_table]

    @dg.asset(
        key=keys.reconcile_deletes,
        deps=[keys.updates],
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
    ) -> dg.MaterializeResult:
        with (
            _failures_explained(),
            open_table(spec, postgres, clickhouse, context.log.info) as table,
        ):
            table.prepare()
            started = time.monotonic()
            result = table.reconcile_deletes()
        return dg.MaterializeResult(
            metadata={
                "keys_checked": result.keys_checked,
                "tombstones_written": result.tombstones_written,
                "duration_s": round(time.monotonic() - started, 3),
            }
        )

    return [sync_table, reconcile_deletes]


@contextmanager
def _failures_explained() -> Iterator[None]:
    """Errors the user must fix fail the run at once; lost connections are retried."""
    try:
        yield
    except ConnectionFailed:
        raise  # transient: the retry policy tries again, with backoff
    except SyncError as error:
        raise dg.Failure(str(error), allow_retries=False) from None
