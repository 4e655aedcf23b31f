"""SYNC_CONFIG: which tables to sync and how, validated on load.

The file lists `tables`, each entry naming one table (`public.customers`) or a pattern over
`schema.table` (`public.*`, `sales.order_*`) with `exclude` patterns; a `defaults` block sets
what every table inherits. plan.py turns it, with the catalog where patterns need one, into
the TableSpec of each table.
"""

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from user_code.sync.errors import SyncError
from user_code.sync.postgres_names import split_table_name
from user_code.sync.settings import TableOptions

# ClickHouse table names double as Dagster asset keys, which allow only these characters.
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB = re.compile(r"[*?\[]")

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
