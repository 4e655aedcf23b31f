"""SYNC_CONFIG: which tables to sync and how, validated on load."""

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from user_code.sync.errors import SyncError
from user_code.sync.postgres_names import split_table_name
from user_code.sync.settings import TableSettings

# Reads also start no later than the oldest transaction open at the previous read (see
# user_code/sync/watermark.py), which covers rows stamped by the database clock however long
# their transaction stays open. `lookback` is left to cover rows stamped by another clock (an
# application's): its skew and the time between stamping and commit.
DEFAULT_LOOKBACK = timedelta(minutes=1)
DEFAULT_SNAPSHOT_PARTITIONS = 1
MAX_SNAPSHOT_PARTITIONS = 16
# ClickHouse table names double as Dagster asset keys, which allow only these characters.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

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


class TableSpec(BaseModel):
    """One source table and how it maps to its ClickHouse table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="schema.table in Postgres")
    primary_key: list[str] = Field(min_length=1, description="columns ClickHouse orders by")
    created_at: str = Field(description="timestamp column that finds new rows")
    updated_at: str = Field(description="timestamp column that finds changed rows")
    target: str | None = Field(None, description="ClickHouse table name; default: source table")
    soft_delete: str | None = Field(
        None, description="column marking deleted rows: a boolean, or a timestamp set on delete"
    )
    owners: list[str] = Field([], description="asset owners shown in the UI: emails or `team:name`")
    hard_deletes: bool = Field(
        False,
        description="reconcile keys deleted in Postgres into tombstones (a key-range scan)",
    )
    nullable_arrays: Literal["json", "array"] = Field(
        "json",
        description="nullable array columns: `json` keeps NULL, [] and [null] apart as JSON "
        "text; `array` stores a native Array, NULL read as []",
    )
    lookback: timedelta = Field(
        DEFAULT_LOOKBACK,
        description="overlap of each read, for rows stamped by an application's clock that "
        "commit late",
    )
    snapshot_partitions: int = Field(
        DEFAULT_SNAPSHOT_PARTITIONS,
        ge=1,
        le=MAX_SNAPSHOT_PARTITIONS,
        description="connections reading the initial snapshot side by side, in page ranges",
    )
    freshness_limit: timedelta = Field(
        timedelta(minutes=30), description="largest lag before the freshness check fails"
    )

    @field_validator("source")
    @classmethod
    def _qualified(cls, source: str) -> str:
        split_table_name(source)
        return source

    @field_validator("target")
    @classmethod
    def _plain_name(cls, target: str | None) -> str | None:
        if target is not None and not _PLAIN_NAME.fullmatch(target):
            raise ValueError("must be letters, digits and underscores, not starting with a digit")
        return target

    @model_validator(mode="after")
    def _target_is_a_plain_name(self) -> "TableSpec":
        if self.target is None and not _PLAIN_NAME.fullmatch(self.table_name):
            raise ValueError(
                f"the table name {self.table_name!r} is not a plain name (letters, digits, "
                "underscores): set `target` to name the ClickHouse table and its assets"
            )
        return self

    @field_validator("lookback", "freshness_limit")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @property
    def schema_name(self) -> str:
        return split_table_name(self.source)[0]

    @property
    def table_name(self) -> str:
        return split_table_name(self.source)[1]

    @property
    def target_table(self) -> str:
        return self.target or self.table_name

    @property
    def settings(self) -> TableSettings:
        """This table as the sync engine takes it."""
        return TableSettings(
            source=self.source,
            target=self.target_table,
            primary_key=tuple(self.primary_key),
            created_at=self.created_at,
            updated_at=self.updated_at,
            soft_delete=self.soft_delete,
            null_arrays_as_empty=self.nullable_arrays == "array",
            snapshot_partitions=self.snapshot_partitions,
        )


class SyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tables: list[TableSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_targets(self) -> "SyncConfig":
        targets = [spec.target_table for spec in self.tables]
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise ValueError(f"two tables write to the same ClickHouse table: {duplicates}")
        return self


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
