"""One table as a run syncs it: its settings, what is read from the source, the ClickHouse
table it goes to, and the connections it works on.

A table is made from the catalog by `read_table`, which applies the rules the plan applies
(validate.py) before anything is read or written; the rest is values: no step changes them.
"""

from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc
from clickhouse_connect.driver.client import Client

from user_code.sync.discovery import CatalogTable, describe_table
from user_code.sync.errors import SyncError
from user_code.sync.settings import Progress, TableSpec, no_progress
from user_code.sync.source_table import SourceTable
from user_code.sync.target_table import TargetTable
from user_code.sync.validate import check_table


@dataclass(frozen=True)
class Session:
    """The connections one table's sync works on, and where it reports progress."""

    postgres: adbc.Connection
    clickhouse: Client
    progress: Progress = no_progress
    postgres_url: str | None = None  # a partitioned snapshot opens a connection per partition


@dataclass(frozen=True)
class Table:
    spec: TableSpec
    source: SourceTable
    target: TargetTable


def target_table_for(
    spec: TableSpec, source: SourceTable, database: str, cluster: str | None = None
) -> TargetTable:
    """The ClickHouse table a source table syncs into."""
    return TargetTable(
        database=database,
        name=spec.target,
        columns=source.mappings,
        primary_key=spec.primary_key,
        version_column=spec.version_column,
        layout=spec.layout,
        cluster=cluster,
        cursor_columns=spec.cursors,
    )


def table_from_catalog(
    spec: TableSpec, catalog: CatalogTable, database: str, cluster: str | None = None
) -> Table:
    """The table as `spec` reads it from a source the catalog describes, once the plan's
    rules hold (SyncError naming the table otherwise)."""
    try:
        check_table(spec, catalog)
    except SyncError as problem:
        raise SyncError(f"{spec.source}: {problem}") from None
    source = SourceTable.of(spec.source, catalog.columns, spec.nullable_arrays == "array")
    return Table(spec, source, target_table_for(spec, source, database, cluster or None))


def read_table(
    connection: adbc.Connection, spec: TableSpec, database: str, cluster: str | None = None
) -> Table:
    """`table_from_catalog`, with the source's catalog read now."""
    return table_from_catalog(spec, describe_table(connection, spec.source), database, cluster)
