"""What is read from one source table: its columns, how each is mapped, and the SQL."""

from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from user_code.sync.errors import SyncError
from user_code.sync.postgres import fetch_all
from user_code.sync.postgres_names import quote_pg_name, quote_pg_table
from user_code.sync.streaming import Batches, copy_batches, cursor_pages
from user_code.sync.types import ColumnMapping, PgColumn, map_column
from user_code.sync.value_guards import (
    OTHER_SUBSCRIPTS,
    checked_batch,
    ndims_column,
    other_subscripts_sql,
    subscripts_column,
)
from user_code.sync.watermark import as_utc

# `reset_val`: the zone sessions start with (the sync's own sessions switch to UTC).
_WALL_TIME_SQL = """
SELECT $1::timestamptz AT TIME ZONE reset_val FROM pg_catalog.pg_settings WHERE name = 'TimeZone'
"""


@dataclass(frozen=True)
class SourceTable:
    source: str
    columns: tuple[PgColumn, ...]
    mappings: tuple[ColumnMapping, ...]

    @classmethod
    def of(
        cls, source: str, columns: tuple[PgColumn, ...], null_arrays_as_empty: bool = False
    ) -> "SourceTable":
        """The table's columns, each with its ClickHouse mapping."""
        mappings = tuple(map_column(source, c, null_arrays_as_empty) for c in columns)
        return cls(source, columns, mappings)

    def column(self, name: str) -> PgColumn:
        for column in self.columns:
            if column.name == name:
                return column
        raise SyncError(f"{self.source}: no column {name!r} in Postgres; check SYNC_CONFIG.")

    def select_sql(self, where: str = "") -> str:
        select_list = ", ".join(
            f"{m.read_sql(quote_pg_name(m.name))} AS {quote_pg_name(m.name)}" for m in self.mappings
        )
        for column, mapping in zip(self.columns, self.mappings, strict=True):
            name = quote_pg_name(mapping.name)
            if mapping.is_array:
                select_list += (
                    f", array_ndims({name}) AS {quote_pg_name(ndims_column(mapping.name))}"
                )
            if column.type.element is not None:  # an Array, or JSON text
                guard = quote_pg_name(subscripts_column(mapping.name))
                select_list += f", {other_subscripts_sql(name)} AS {guard}"
        sql = f"SELECT {select_list} FROM {quote_pg_table(self.source)}"
        return f"{sql} WHERE {where}" if where else sql

    def cursor_sql(self, cursor_column: str, created_at_column: str | None = None) -> str:
        """Rows with `cursor_column >= $1`; with `created_at_column`, only rows created up to $2.

        The one cursor query: new records use it on `created_at`, updates on `updated_at`
        bounded by the new-records watermark, so rows already read as new are not read twice.
        """
        where = f"{quote_pg_name(cursor_column)} >= {self._parameter(1, cursor_column)}"
        if created_at_column:
            created = quote_pg_name(created_at_column)
            bound = self._parameter(2, created_at_column)
            where += f" AND ({created} <= {bound} OR {created} IS NULL)"
        return self.select_sql(where)

    def window_count_sql(self, column_name: str, live_rows: str) -> str:
        """Live rows whose `column_name` lies from $1 to $2: a range scan of its index."""
        column = quote_pg_name(column_name)
        return (
            f"SELECT count(*) FROM {quote_pg_table(self.source)} WHERE {column} >= "
            f"{self._parameter(1, column_name)} AND {column} <= "
            f"{self._parameter(2, column_name)} AND ({live_rows})"
        )

    def _parameter(self, number: int, column_name: str) -> str:
        """`$number` cast to the column's own type, so the comparison can use its index."""
        return f"${number}::{self.column(column_name).type.name}"

    def live_row_filter(self, soft_delete_column: str | None) -> str:
        """Rows not soft-deleted: those ClickHouse keeps with `_is_deleted = 0`."""
        if soft_delete_column is None:
            return "TRUE"
        column = quote_pg_name(soft_delete_column)
        if self.column(soft_delete_column).type.name == "bool":
            return f"{column} IS NOT TRUE"
        return f"{column} IS NULL"

    def bind(self, column_name: str, value: datetime) -> str:
        """A cursor query's parameter: ISO 8601 text in the column's terms, which the query
        casts (`cursor_sql`). Bound as a timestamp with time zone, ADBC would switch the
        session's time zone around the query in a transaction of its own, which ends the
        transaction the query's cursor lives in."""
        utc = as_utc(value)
        is_naive = self.column(column_name).type.name == "timestamp"
        return (utc.replace(tzinfo=None) if is_naive else utc).isoformat()

    def in_column_terms(
        self, connection: adbc.Connection, column_name: str, instant: datetime
    ) -> datetime:
        """`instant` as the column's values express it. A `timestamp` column (no time zone)
        filled by the database clock holds wall time in the server's default time zone."""
        if self.column(column_name).type.name != "timestamp":
            return instant
        ((wall_time,),) = fetch_all(connection, _WALL_TIME_SQL, (as_utc(instant).isoformat(),))
        return as_utc(wall_time)

    def read(
        self, connection: adbc.Connection, sql: str, parameters: tuple[Any, ...] = ()
    ) -> Batches:
        """Stream the query's rows as Arrow batches of bounded size, checked and ready to load."""
        if parameters:
            batches = cursor_pages(connection, sql, parameters)
        else:
            batches = copy_batches(connection, sql)
        try:
            with closing(batches):  # a refused batch ends the read now, while connected
                for batch in batches:
                    if batch.num_rows:
                        yield checked_batch(batch, self.source, self.mappings)
        except (adbc_driver_manager.DataError, adbc_driver_manager.InternalError) as error:
            raise SyncError(f"{self.source}: Postgres could not return a row: {error}") from None
        except pa.ArrowInvalid as error:  # the reader refuses subscripts starting past 1
            if "lower bound" not in str(error):
                raise
            raise SyncError(f"{self.source}: an array column {OTHER_SUBSCRIPTS}") from None
