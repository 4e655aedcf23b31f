"""The rules that relate a table's settings to its source, in one place: the plan applies them
to every table it plans, and a run to the table it is about to read, before anything is
written. Each broken rule is a SyncError saying what is wrong and what to do."""

from user_code.sync.discovery import CatalogTable
from user_code.sync.errors import SyncError
from user_code.sync.settings import MODE_CURSORS, TableSpec
from user_code.sync.target_table import DELETED_COLUMN
from user_code.sync.types import RULES, PgColumn
from user_code.sync.value_guards import ndims_column, subscripts_column

_TIMESTAMP_TYPES = {"timestamp", "timestamptz"}


def check_table(settings: TableSpec, table: CatalogTable) -> None:
    """The source can be read as `settings` say: the sync's role may read it; the key's
    columns exist, are NOT NULL and carry a unique index; each cursor column of the mode is a
    timestamp, the version NOT NULL; the soft-delete column exists; every column has a
    lossless ClickHouse type and a name pg2ch does not use itself."""
    if not table.selectable:
        raise SyncError("the sync's role may not SELECT from it: GRANT SELECT on it to the role")
    for name in settings.primary_key:
        _key_column(table, name)
    if frozenset(settings.primary_key) not in table.unique_keys:
        raise SyncError(
            f"no primary key or unique index on ({', '.join(settings.primary_key)}): rows "
            "sharing a key would collapse into one in ClickHouse; add one, or set "
            "`primary_key` to the table's real key"
        )
    for field in MODE_CURSORS[settings.mode]:
        _cursor_column(table, field, getattr(settings, field), settings.mode)
    if settings.soft_delete:
        _column(table, "soft_delete", settings.soft_delete)
    internal = _internal_names(table)
    for column in table.columns:
        _storable(column, internal)


def _column(table: CatalogTable, field: str, name: str) -> PgColumn:
    column = table.column(name)
    if column is None:
        raise SyncError(f"`{field}`: no column {name!r}: name one of the table's columns")
    return column


def _key_column(table: CatalogTable, name: str) -> None:
    column = _column(table, "primary_key", name)
    if column.nullable:
        raise SyncError(
            f"primary key column {name!r} is nullable: make it NOT NULL, or name the table's "
            "real key in primary_key"
        )


def _cursor_column(table: CatalogTable, field: str, name: str, mode: str) -> None:
    column = _column(table, field, name)
    if column.type.name not in _TIMESTAMP_TYPES:
        raise SyncError(
            f"`{field}` column {name!r} is {column.type.name}, not a timestamp or timestamptz: "
            "name a timestamp column, or choose another mode"
        )
    if field == "updated_at" and column.nullable:
        raise SyncError(
            f"`updated_at` column {name!r} is nullable: it is the row version; make it NOT NULL, "
            f"or choose mode append (mode {mode} needs it)"
        )


def _internal_names(table: CatalogTable) -> set[str]:
    """The column names pg2ch reads or writes itself beside the table's own."""
    names = {DELETED_COLUMN}
    for column in table.columns:
        if column.type.element is not None:
            names |= {ndims_column(column.name), subscripts_column(column.name)}
    return names


def _storable(column: PgColumn, internal: set[str]) -> None:
    base = column.type.element or column.type
    if base.name not in RULES:
        raise SyncError(
            f"column {column.name!r}: Postgres type {base.name} has no lossless ClickHouse "
            "form; sync a view that casts it"
        )
    if column.name in internal:
        raise SyncError(
            f"column {column.name!r}: pg2ch uses this column name itself (it marks deleted "
            "rows, or guards an array's dimensions or subscripts); sync a view that renames "
            "the column"
        )
