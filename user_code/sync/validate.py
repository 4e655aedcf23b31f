"""A table's settings checked against its source, before anything is written."""

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.catalog import has_unique_key
from user_code.sync.errors import SyncError
from user_code.sync.settings import TableSettings
from user_code.sync.source_table import SourceTable
from user_code.sync.target_table import DELETED_COLUMN
from user_code.sync.value_guards import ndims_column, subscripts_column

_TIMESTAMP_TYPES = {"timestamp", "timestamptz"}


def validate_source(
    connection: adbc.Connection, settings: TableSettings, source: SourceTable
) -> None:
    """Cursor columns of a timestamp type, a NOT NULL version, a NOT NULL key with a unique
    index, an existing soft-delete column, no column under a name pg2ch uses itself."""
    for field in ("created_at", "updated_at"):
        name = getattr(settings, field)
        if name is None:
            continue
        column = source.column(name)
        if column.type.name not in _TIMESTAMP_TYPES:
            raise SyncError(
                f"{settings.source}.{column.name}: `{field}` must be a timestamp or "
                f"timestamptz column, not {column.type.name}."
            )
    if settings.updated_at and source.column(settings.updated_at).nullable:
        raise SyncError(
            f"{settings.source}.{settings.updated_at}: `updated_at` must be NOT NULL: it is the "
            "version that decides which copy of a row ClickHouse keeps."
        )
    for name in settings.primary_key:
        if source.column(name).nullable:
            raise SyncError(f"{settings.source}.{name}: primary key columns must be NOT NULL.")
    if not has_unique_key(connection, settings.source, settings.primary_key):
        raise SyncError(
            f"{settings.source}: no primary key or unique index on "
            f"({', '.join(settings.primary_key)}); rows sharing a key would collapse into "
            "one in ClickHouse. Add one, or set `primary_key` to the table's real key."
        )
    if settings.soft_delete:
        source.column(settings.soft_delete)
    _refuse_internal_names(settings, source)


def _refuse_internal_names(settings: TableSettings, source: SourceTable) -> None:
    internal = {DELETED_COLUMN} | {ndims_column(m.name) for m in source.mappings if m.is_array}
    internal |= {subscripts_column(c.name) for c in source.columns if c.type.element is not None}
    for column in source.columns:
        if column.name in internal:
            raise SyncError(
                f"{settings.source}.{column.name}: pg2ch uses this column name itself (it marks "
                "deleted rows, or guards an array's dimensions or subscripts); sync a view that "
                "renames the column."
            )
