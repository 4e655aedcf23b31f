"""Every setting of a table, declared once: its type, its default and what it means.

`TableOptions` is what SYNC_CONFIG's `defaults` and each entry may set; `TableSpec` is one
table resolved by the plan (its source, key and ClickHouse table added), which the engine,
the assets and the checks all take as it is. A field set in SYNC_CONFIG is told from a
default by pydantic's `model_fields_set`.
"""

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from user_code.sync.postgres_names import quote_pg_name, split_table_name
from user_code.sync.target_table import Layout, SettingValue

# Where the engine reports progress (a run's log); `no_progress` where nobody listens.
Progress = Callable[[str], None]

# Reads also start no later than the oldest transaction open at the previous read (see
# watermark.py), which covers rows stamped by the database clock however long their
# transaction stays open. `lookback` is left to cover rows stamped by another clock (an
# application's): its skew and the time between stamping and commit.
DEFAULT_LOOKBACK = timedelta(minutes=1)
MAX_SNAPSHOT_PARTITIONS = 16
# With the inserts keeping up, one COPY stream is what limits an initial load: a second
# Postgres backend made it 1.14-1.27x faster on two cores (docs/performance.md, "Partitions").
DEFAULT_SNAPSHOT_PARTITIONS = 2
# ClickHouse's own `min_insert_block_size_bytes`: with it, its 1,048,449 rows fill first for
# rows under 256 bytes, and a load writes parts the size of ClickHouse's own INSERT … SELECT.
DEFAULT_INSERT_BLOCK_MB = 256

Mode = Literal["incremental", "append", "replace"]
# The cursor columns each mode reads by.
MODE_CURSORS: dict[str, tuple[str, ...]] = {
    "incremental": ("created_at", "updated_at"),
    "append": ("created_at",),
    "replace": (),
}


def no_progress(message: str) -> None:
    """Discard a progress message."""


class TableOptions(BaseModel):
    """What `defaults` and each entry of SYNC_CONFIG may set, with the default of each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["incremental", "append", "replace", "auto"] = Field(
        "incremental",
        description="incremental (created_at + updated_at), append (created_at only), replace "
        "(no cursor: the whole table each run), or auto (chosen from the columns a table has)",
    )
    created_at: str | None = Field(None, description="timestamp column that finds new rows")
    updated_at: str | None = Field(None, description="timestamp column that finds changed rows")
    soft_delete: str | None = Field(
        None, description="column marking deleted rows: a boolean, or a timestamp set on delete"
    )
    owners: list[str] = Field([], description="asset owners: emails or `team:name`")
    hard_deletes: bool = Field(
        False, description="reconcile keys deleted in Postgres into tombstones (a key-range scan)"
    )
    nullable_arrays: Literal["json", "array"] = Field(
        "json",
        description="nullable array columns: `json` keeps NULL, [] and [null] apart as JSON "
        "text; `array` stores a native Array, NULL read as []",
    )
    lookback: timedelta = Field(
        DEFAULT_LOOKBACK,
        description="overlap of each read, for rows stamped by an application's clock",
    )
    snapshot_partitions: int = Field(
        DEFAULT_SNAPSHOT_PARTITIONS,
        ge=1,
        le=MAX_SNAPSHOT_PARTITIONS,
        description="connections reading the initial snapshot side by side, in page ranges",
    )
    insert_block_mb: int = Field(
        DEFAULT_INSERT_BLOCK_MB,
        ge=1,
        description="the most rows ClickHouse gathers into one part while loading, in MB: "
        "what a load holds in memory beside its two batches read ahead",
    )
    freshness_limit: timedelta = Field(
        timedelta(minutes=30), description="largest lag before the freshness check fails"
    )
    order_by: list[str] | None = Field(
        None, min_length=1, description="ClickHouse sorting key; must end with the primary key"
    )
    partition_by: str | None = Field(None, description="ClickHouse PARTITION BY expression")
    settings: dict[str, SettingValue] | None = Field(
        None, description="table-level MergeTree settings"
    )
    on_schema_change: Literal["stop", "rebuild"] = Field(
        "stop",
        description="a column dropped or retyped in Postgres: stop with the column named, or "
        "rebuild the ClickHouse table beside the old one and swap it in",
    )

    @field_validator("lookback", "freshness_limit")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    def given(self) -> dict[str, Any]:
        """The options this block sets itself (a null sets nothing)."""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        return {name: value for name, value in given.items() if value is not None}


class TableSpec(TableOptions):
    """One table, resolved: how it is read and the ClickHouse table it goes to.

    A table is read incrementally by `created_at` (new rows) and `updated_at` (changed rows);
    by `created_at` alone when its rows never change (append); and whole, into a new table
    swapped in at once, when it has neither (replace).
    """

    source: str  # schema.table in Postgres, as written or quoted the SQL way
    target: str  # the ClickHouse table and the first part of each asset key
    primary_key: tuple[str, ...] = Field(min_length=1)
    # Cursor columns no index of the source table leads with (known where the plan read the
    # catalog): each run's cursor query scans the table.
    unindexed_cursors: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _resolved(self) -> "TableSpec":
        if self.mode == "auto":
            raise ValueError("mode auto is resolved by the plan, from the table's columns")
        for field in MODE_CURSORS[self.mode]:
            if getattr(self, field) is None:
                raise ValueError(f"mode {self.mode} needs `{field}`")
        return self

    @model_validator(mode="after")
    def _sorting_key_ends_with_the_primary_key(self) -> "TableSpec":
        """ReplacingMergeTree keeps one row per sorting key: a key that did not end with the
        primary key would merge rows of different keys, or keep a row twice."""
        key = list(self.primary_key)
        if self.order_by and self.order_by[-len(key) :] != key:
            raise ValueError(
                f"order_by {self.order_by} must end with the primary key {key}, in that order"
            )
        return self

    @property
    def schema_name(self) -> str:
        return split_table_name(self.source)[0]

    @property
    def cursors(self) -> tuple[str, ...]:
        """The columns read incrementally, each once: created_at, then updated_at if synced."""
        columns = (getattr(self, field) for field in MODE_CURSORS[self.mode])
        return tuple(dict.fromkeys(column for column in columns if column))

    @property
    def version_column(self) -> str | None:
        """The row version ClickHouse keeps the newest of: `updated_at`, or `created_at` for
        rows that never change; None where every run replaces the whole table."""
        return self.cursors[-1] if self.cursors else None

    @property
    def replaces(self) -> bool:
        return self.version_column is None

    @property
    def layout(self) -> Layout:
        return Layout(
            order_by=tuple(self.order_by or ()),
            partition_by=self.partition_by,
            settings=tuple(sorted((self.settings or {}).items())),
        )

    def index_advice(self, column: str) -> str:
        """What to run so a cursor query on `column` reads an index, not the whole table."""
        return f"CREATE INDEX CONCURRENTLY ON {self.source} ({quote_pg_name(column)});"
