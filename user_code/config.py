"""SYNC_CONFIG: which tables to sync and how, validated on load.

The file lists `tables`, each entry naming one table (`public.customers`) or a pattern over
`schema.table` (`public.*`, `sales.order_*`) with `exclude` patterns; a `defaults` block sets
what every table inherits. plan.py turns it, with the catalog where patterns need one, into
the TableSpec of each table.
"""

import fnmatch
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from user_code.sync.errors import SyncError
from user_code.sync.postgres_names import split_table_name
from user_code.sync.settings import TableSettings
from user_code.sync.target_table import Layout

# Reads also start no later than the oldest transaction open at the previous read (see
# user_code/sync/watermark.py), which covers rows stamped by the database clock however long
# their transaction stays open. `lookback` is left to cover rows stamped by another clock (an
# application's): its skew and the time between stamping and commit.
DEFAULT_LOOKBACK = timedelta(minutes=1)
MAX_SNAPSHOT_PARTITIONS = 16
# With the inserts keeping up, one COPY stream is what limits an initial load: a second
# Postgres backend made it 1.14-1.27x faster on two cores (README, "Partitions").
DEFAULT_SNAPSHOT_PARTITIONS = 2
# ClickHouse's own `min_insert_block_size_bytes`: with it, its 1,048,449 rows fill first for
# rows under 256 bytes, and a load writes parts the size of ClickHouse's own INSERT … SELECT.
DEFAULT_INSERT_BLOCK_MB = 256
# ClickHouse table names double as Dagster asset keys, which allow only these characters.
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB = re.compile(r"[*?\[]")

Mode = Literal["incremental", "append", "replace"]

DEMO_CONFIG = {
    "tables": [
        {
            "source": "public.customers",
            "primary_key": ["id"],
            "created_at": "created_at",
            "updated_at": "updated_at",
        }
    ]
}


class TableOptions(BaseModel):
    """What `defaults` and each entry of `tables` may set; unset fields inherit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["incremental", "append", "replace", "auto"] | None = Field(
        None,
        description="incremental (created_at + updated_at), append (created_at only), replace "
        "(no cursor: the whole table each run), or auto (chosen from the columns a table has)",
    )
    created_at: str | None = Field(None, description="timestamp column that finds new rows")
    updated_at: str | None = Field(None, description="timestamp column that finds changed rows")
    soft_delete: str | None = Field(
        None, description="column marking deleted rows: a boolean, or a timestamp set on delete"
    )
    owners: list[str] | None = Field(None, description="asset owners: emails or `team:name`")
    hard_deletes: bool | None = Field(
        None, description="reconcile keys deleted in Postgres into tombstones (a key-range scan)"
    )
    nullable_arrays: Literal["json", "array"] | None = Field(
        None,
        description="nullable array columns: `json` keeps NULL, [] and [null] apart as JSON "
        "text; `array` stores a native Array, NULL read as []",
    )
    lookback: timedelta | None = Field(
        None, description="overlap of each read, for rows stamped by an application's clock"
    )
    snapshot_partitions: int | None = Field(
        None,
        ge=1,
        le=MAX_SNAPSHOT_PARTITIONS,
        description="connections reading the initial snapshot side by side, in page ranges",
    )
    insert_block_mb: int | None = Field(
        None,
        ge=1,
        description="the most rows ClickHouse gathers into one part while loading, in MB: "
        "what a load holds in memory beside its two batches read ahead",
    )
    freshness_limit: timedelta | None = Field(
        None, description="largest lag before the freshness check fails"
    )
    order_by: list[str] | None = Field(
        None, min_length=1, description="ClickHouse sorting key; must end with the primary key"
    )
    partition_by: str | None = Field(None, description="ClickHouse PARTITION BY expression")
    settings: dict[str, int | float | str | bool] | None = Field(
        None, description="table-level MergeTree settings"
    )
    on_schema_change: Literal["stop", "rebuild"] | None = Field(
        None,
        description="a column dropped or retyped in Postgres: stop with the column named, or "
        "rebuild the ClickHouse table beside the old one and swap it in",
    )

    @field_validator("lookback", "freshness_limit")
    @classmethod
    def _not_negative(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    def given(self) -> dict[str, Any]:
        """The fields this block sets."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


class TableEntry(TableOptions):
    """One entry of `tables`: a table, or a pattern over `schema.table`."""

    source: str = Field(description="schema.table in Postgres, or a pattern such as public.*")
    exclude: list[str] = Field([], description="patterns of tables this entry leaves out")
    primary_key: list[str] | None = Field(
        None, min_length=1, description="default: the table's primary-key constraint"
    )
    target: str | None = Field(None, description="ClickHouse table name; default: derived")

    @field_validator("source")
    @classmethod
    def _qualified(cls, source: str) -> str:
        split_table_name(source)
        return source

    @field_validator("exclude")
    @classmethod
    def _qualified_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            split_table_name(pattern)
        return patterns

    @field_validator("target")
    @classmethod
    def _plain_name(cls, target: str | None, info: ValidationInfo) -> str | None:
        if target is None:
            return target
        if not PLAIN_NAME.fullmatch(target):
            raise ValueError("must be letters, digits and underscores, not starting with a digit")
        if _GLOB.search(info.data.get("source", "")):
            raise ValueError("names one table: a pattern cannot have one")
        return target

    @property
    def is_pattern(self) -> bool:
        return bool(_GLOB.search(self.source))

    def matches(self, schema: str, table: str) -> bool:
        if not _matches(self.source, schema, table):
            return False
        return not any(_matches(pattern, schema, table) for pattern in self.exclude)


def _matches(pattern: str, schema: str, table: str) -> bool:
    schema_pattern, table_pattern = split_table_name(pattern)
    return fnmatch.fnmatchcase(schema, schema_pattern) and fnmatch.fnmatchcase(table, table_pattern)


class SyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: TableOptions = Field(default_factory=TableOptions)
    tables: list[TableEntry] = Field(min_length=1)

    @property
    def needs_catalog(self) -> bool:
        """Whether some table's settings come from the database: a pattern, a primary key or a
        mode to find, or `defaults` that name columns (which apply where a table has them)."""
        column_defaults = {"created_at", "updated_at", "soft_delete"} & set(self.defaults.given())
        return (
            bool(column_defaults)
            or any(
                entry.is_pattern or entry.primary_key is None or entry.mode == "auto"
                for entry in self.tables
            )
            or self.defaults.mode == "auto"
        )


class TableSpec(BaseModel):
    """One source table, resolved: how it is read and the ClickHouse table it goes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # schema.table in Postgres, as written or quoted the SQL way
    primary_key: list[str] = Field(min_length=1)
    target: str  # the ClickHouse table and the first part of each asset key
    mode: Mode = "incremental"
    created_at: str | None = None
    updated_at: str | None = None
    soft_delete: str | None = None
    owners: list[str] = []
    hard_deletes: bool = False
    nullable_arrays: Literal["json", "array"] = "json"
    lookback: timedelta = DEFAULT_LOOKBACK
    snapshot_partitions: int = Field(DEFAULT_SNAPSHOT_PARTITIONS, ge=1, le=MAX_SNAPSHOT_PARTITIONS)
    insert_block_mb: int = Field(DEFAULT_INSERT_BLOCK_MB, ge=1)
    freshness_limit: timedelta = timedelta(minutes=30)
    order_by: list[str] | None = None  # None: the primary key
    partition_by: str | None = None
    settings: dict[str, int | float | str | bool] | None = None
    on_schema_change: Literal["stop", "rebuild"] = "stop"

    @model_validator(mode="after")
    def _sorting_key_ends_with_the_primary_key(self) -> "TableSpec":
        """ReplacingMergeTree keeps one row per sorting key: a key that did not end with the
        primary key would merge rows of different keys, or keep a row twice."""
        if self.order_by and self.order_by[-len(self.primary_key) :] != self.primary_key:
            raise ValueError(
                f"order_by {self.order_by} must end with the primary key {self.primary_key}, "
                "in that order"
            )
        return self

    @model_validator(mode="after")
    def _cursors_of_the_mode(self) -> "TableSpec":
        needed = {"incremental": ("created_at", "updated_at"), "append": ("created_at",)}
        for field in needed.get(self.mode, ()):
            if getattr(self, field) is None:
                raise ValueError(f"mode {self.mode} needs `{field}`")
        return self

    @property
    def schema_name(self) -> str:
        return split_table_name(self.source)[0]

    @property
    def table_name(self) -> str:
        return split_table_name(self.source)[1]

    @property
    def target_table(self) -> str:
        return self.target

    @property
    def cursors(self) -> list[str]:
        """The timestamp columns read incrementally: created_at, then updated_at if synced."""
        return [column for column in (self.created_at, self.updated_at) if column]

    @property
    def table_settings(self) -> TableSettings:
        """This table as the sync engine takes it."""
        return TableSettings(
            source=self.source,
            target=self.target,
            primary_key=tuple(self.primary_key),
            created_at=self.created_at,
            updated_at=self.updated_at if self.mode == "incremental" else None,
            soft_delete=self.soft_delete,
            null_arrays_as_empty=self.nullable_arrays == "array",
            snapshot_partitions=self.snapshot_partitions,
            insert_block_mb=self.insert_block_mb,
            layout=Layout(
                order_by=tuple(self.order_by or ()),
                partition_by=self.partition_by,
                settings=tuple(sorted((self.settings or {}).items())),
            ),
            rebuild_on_schema_change=self.on_schema_change == "rebuild",
        )


def _describe(error: ErrorDetails, raw: dict[str, Any]) -> str:
    location = list(error["loc"])
    where = "SYNC_CONFIG"
    if len(location) >= 2 and location[0] == "tables" and isinstance(location[1], int):
        tables = raw.get("tables") or []
        entry = tables[location[1]] if location[1] < len(tables) else None
        source = entry.get("source") if isinstance(entry, dict) else None
        where = f"tables[{location[1]}]" + (f" ({source})" if source else "")
        location = location[2:]
    field = ".".join(str(part) for part in location)
    return f"{where}: {field + ': ' if field else ''}{error['msg']}"


def parse_sync_config(raw: object, origin: str = "SYNC_CONFIG") -> SyncConfig:
    if not isinstance(raw, dict):
        raise SyncError(f"{origin}: expected a mapping with a `tables` list.")
    try:
        return SyncConfig.model_validate(raw)
    except ValidationError as error:
        problems = "\n  ".join(_describe(e, raw) for e in error.errors())
        raise SyncError(f"{origin} is not valid:\n  {problems}") from None


def load_sync_config(path: str | None = None) -> SyncConfig:
    """The config at `path` (default: $SYNC_CONFIG), or the demo `customers` table if unset."""
    path = path or os.environ.get("SYNC_CONFIG")
    if not path:
        return parse_sync_config(DEMO_CONFIG, "the demo config")
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SyncError(f"SYNC_CONFIG={path}: no such file.") from None
    except yaml.YAMLError as error:
        raise SyncError(f"SYNC_CONFIG={path} is not valid YAML: {error}") from None
    return parse_sync_config(raw, f"SYNC_CONFIG={path}")
