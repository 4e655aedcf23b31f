"""Postgres -> Arrow record batches: the catalog, the snapshot and the cursor query."""

import re
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime

import adbc_driver_manager
import adbc_driver_postgresql
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc

from user_code.sync.errors import (
    ConnectionFailed,
    SyncError,
    describe_url,
    redact,
    require_scheme,
)
from user_code.sync.types import ColumnMapping, PgColumn, PgType, map_column
from user_code.sync.watermark import as_utc

# Arrow batches of about this size stream from Postgres' COPY output: memory stays bounded
# whatever the table size (two batches are in flight, see `read_ahead`). Each batch becomes
# one ClickHouse part: at half this size a load took a fifth more CPU, mostly merging twice
# as many small parts in the background, CPU that a 2-core machine takes from the load.
BATCH_SIZE_HINT_BYTES = 64 * 1024 * 1024
_BATCH_SIZE_OPTION = adbc_driver_postgresql.StatementOptions.BATCH_SIZE_HINT_BYTES.value
# Rows per FETCH when a query with parameters pages through a server-side cursor.
FETCH_ROWS = 50_000
_USE_COPY_OPTION = adbc_driver_postgresql.StatementOptions.USE_COPY.value
_CURSOR = "pg2ch_rows"

_TYPES_SQL = """
SELECT oid::bigint, typname::text, typtype::text, typbasetype::bigint, typtypmod,
       typelem::bigint, typcategory::text, typnotnull
FROM pg_catalog.pg_type
"""

# `reset_val`: the zone sessions start with (the sync's own sessions switch to UTC).
_WALL_TIME_SQL = """
SELECT $1::timestamptz AT TIME ZONE reset_val FROM pg_catalog.pg_settings WHERE name = 'TimeZone'
"""

_COLUMNS_SQL = """
SELECT attname::text, atttypid::bigint, atttypmod, attnotnull
FROM pg_catalog.pg_attribute
WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""


# The sync's sessions call themselves this, so their own reads never hold back the read start.
APPLICATION_NAME = "pg2ch"
# `schema.table`, each part double-quoted the SQL way, or plain: taken as written, any
# character but a dot, not starting with a double quote.
_NAME_PART = r'"(?:[^"]|"")+"|[^".][^.]*'
_QUALIFIED_NAME = re.compile(rf"({_NAME_PART})\.({_NAME_PART})")


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def split_table_name(source: str) -> tuple[str, str]:
    """(schema, table) of `public.customers` or `public."Mixed Case"`; ValueError otherwise.

    A plain part is the name exactly as written (no case folding); a quoted part is unquoted.
    """
    match = _QUALIFIED_NAME.fullmatch(source)
    if match is None:
        raise ValueError('must be schema.table, e.g. public.customers or public."Mixed Case"')
    return tuple(_unquote(part) for part in match.groups())


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def quote_table(source: str) -> str:
    return ".".join(quote_identifier(part) for part in split_table_name(source))


@contextmanager
def connect(url: str) -> Iterator[adbc.Connection]:
    """An ADBC connection whose session reads timestamps in UTC and intervals as ISO 8601."""
    require_scheme(url, "PG_URL", ("postgresql", "postgres"))
    try:
        connection = adbc.connect(url)
    except Exception as error:
        raise ConnectionFailed(
            f"cannot connect to Postgres at {describe_url(url)}: {redact(str(error), url)}; "
            "check PG_URL."
        ) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
            cursor.execute("SET IntervalStyle = 'iso_8601'")
            cursor.execute(f"SET application_name = '{APPLICATION_NAME}'")
        connection.commit()
        yield connection
    finally:
        connection.close()


def fetch_all(connection: adbc.Connection, sql: str, parameters: tuple = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, parameters or None)
        return cursor.fetchall()


def read_columns(connection: adbc.Connection, source: str) -> list[PgColumn]:
    """The source table's columns, domains resolved to their base type, from the catalog."""
    (relation,) = fetch_all(
        connection, "SELECT to_regclass($1)::oid::bigint", (quote_table(source),)
    )
    if relation[0] is None:
        raise SyncError(f"{source}: no such table in Postgres; check `source` in SYNC_CONFIG.")
    types = {row[0]: row for row in fetch_all(connection, _TYPES_SQL)}

    def resolve(oid: int, typmod: int) -> tuple[PgType, bool]:
        _, name, kind, base, base_typmod, element, category, not_null = types[oid]
        if kind == "d":  # a domain: its base type, its typmod, its NOT NULL
            resolved, base_not_null = resolve(base, base_typmod if typmod == -1 else typmod)
            return resolved, not_null or base_not_null
        if category == "A" and element:
            return PgType(name, typmod, resolve(element, typmod)[0]), False
        return PgType("enum" if kind == "e" else name, typmod), False

    columns = []
    for name, type_oid, typmod, not_null in fetch_all(connection, _COLUMNS_SQL, (relation[0],)):
        pg_type, domain_not_null = resolve(type_oid, typmod)
        columns.append(PgColumn(name, pg_type, nullable=not (not_null or domain_not_null)))
    return columns


@dataclass(frozen=True)
class SourceTable:
    """What is read from one source table: its name, its columns and how each is mapped."""

    source: str
    columns: tuple[PgColumn, ...]
    mappings: tuple[ColumnMapping, ...]

    @classmethod
    def from_catalog(
        cls, connection: adbc.Connection, source: str, null_arrays_as_empty: bool = False
    ) -> "SourceTable":
        columns = tuple(read_columns(connection, source))
        mappings = tuple(map_column(source, c, null_arrays_as_empty) for c in columns)
        return cls(source, columns, mappings)

    def column(self, name: str) -> PgColumn:
        for column in self.columns:
            if column.name == name:
                return column
        raise SyncError(f"{self.source}: no column {name!r} in Postgres; check SYNC_CONFIG.")

    def select_sql(self, where: str = "") -> str:
        select_list = ", ".join(
            f"{m.read_sql(quote_identifier(m.name))} AS {quote_identifier(m.name)}"
            for m in self.mappings
        )
        for mapping in self.mappings:
            if mapping.is_array:
                name = quote_identifier(mapping.name)
                select_list += f", array_ndims({name}) AS {quote_identifier(_ndims(mapping.name))}"
        sql = f"SELECT {select_list} FROM {quote_table(self.source)}"
        return f"{sql} WHERE {where}" if where else sql

    def cursor_sql(self, cursor_column: str, created_at_column: str | None = None) -> str:
        """Rows with `cursor_column >= $1`; with `created_at_column`, only rows created up to $2.

        The one cursor query: new records use it on `created_at`, updates on `updated_at`
        bounded by the new-records watermark, so rows already read as new are not read twice.
        """
        where = f"{quote_identifier(cursor_column)} >= $1"
        if created_at_column:
            created = quote_identifier(created_at_column)
            where += f" AND ({created} <= $2 OR {created} IS NULL)"
        return self.select_sql(where)

    def live_row_filter(self, soft_delete_column: str | None) -> str:
        """Rows not soft-deleted: those ClickHouse keeps with `_is_deleted = 0`."""
        if soft_delete_column is None:
            return "TRUE"
        column = quote_identifier(soft_delete_column)
        if self.column(soft_delete_column).type.name == "bool":
            return f"{column} IS NOT TRUE"
        return f"{column} IS NULL"

    def bind(self, column_name: str, value: datetime) -> datetime:
        """A parameter of the column's own type, so the comparison can use its index."""
        utc = as_utc(value)
        is_naive = self.column(column_name).type.name == "timestamp"
        return utc.replace(tzinfo=None) if is_naive else utc

    def in_column_terms(
        self, connection: adbc.Connection, column_name: str, instant: datetime
    ) -> datetime:
        """`instant` as the column's values express it. A `timestamp` column (no time zone)
        filled by the database clock holds wall time in the server's default time zone."""
        if self.column(column_name).type.name != "timestamp":
            return instant
        ((wall_time,),) = fetch_all(connection, _WALL_TIME_SQL, (as_utc(instant),))
        return as_utc(wall_time)

    def read(
        self, connection: adbc.Connection, sql: str, parameters: tuple = ()
    ) -> Iterator[pa.RecordBatch]:
        """Stream the query's rows as Arrow batches of bounded size, checked and ready to load."""
        batches = _pages(connection, sql, parameters) if parameters else _copy(connection, sql)
        try:
            with closing(batches):  # a refused batch ends the read now, while connected
                for batch in batches:
                    if batch.num_rows:
                        yield self._checked(batch)
        except (adbc_driver_manager.DataError, adbc_driver_manager.InternalError) as error:
            raise SyncError(f"{self.source}: Postgres could not return a row: {error}") from None

    def _checked(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Values that Arrow or ClickHouse would store altered stop the sync instead.

        Postgres' ±infinity and BC dates arrive as extreme integers, NaN has no Decimal form,
        and 2-D arrays arrive flattened; each is refused here, naming the column.
        """
        for mapping in self.mappings:
            problem = _unstorable(batch.column(mapping.name), mapping)
            if mapping.is_array:
                guard = _ndims(mapping.name)
                if (pc.max(batch.column(guard)).as_py() or 1) > 1:
                    problem = _MULTIDIMENSIONAL
                batch = batch.drop_columns([guard])
            if problem:
                raise SyncError(f"{self.source}.{mapping.name}: {problem}")
        return batch


_OUT_OF_CALENDAR = (
    "holds a date or timestamp outside 0001-01-01..9999-12-31 (infinity, or BC), which "
    "ClickHouse cannot store; replace those values or sync a view that maps them."
)
_NAN_DECIMAL = (
    "holds NaN, which ClickHouse's Decimal cannot store; replace it with NULL or declare "
    "the column as unconstrained numeric (kept as text)."
)
_MULTIDIMENSIONAL = (
    "holds a multi-dimensional array, which ClickHouse's Array(T) cannot keep; make the "
    "column nullable (it is then stored as JSON text) or sync a view that flattens it."
)


def _unstorable(values: pa.Array, mapping: ColumnMapping) -> str | None:
    if pa.types.is_list(values.type):
        values = pc.list_flatten(values)
    if not _within_calendar(values):
        return _OUT_OF_CALENDAR
    if "Decimal(" in mapping.clickhouse_type and pc.any(pc.equal(values, "NaN")).as_py():
        return _NAN_DECIMAL
    return None


def read_ahead(*sources: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches of every source, in the order they are ready, each source read in its own
    thread while the caller still works on a batch before.

    Without it Postgres stops streaming while ClickHouse inserts a batch, and the two take
    turns; with it they run side by side. One batch per source is read ahead, never more, so
    memory stays bounded at two batches a source. The first failure of any source ends all.
    """
    with ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="pg2ch-read") as reader:
        pending = {reader.submit(next, source, None): source for source in sources}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    source = pending.pop(future)
                    if (batch := future.result()) is not None:
                        pending[reader.submit(next, source, None)] = source
                        yield batch
        finally:
            wait(pending)
            for source in sources:
                source.close()
            # A failed read's exception holds this frame, which holds the futures, which hold
            # the exception: breaking the cycle frees the cursors now, not at the next GC.
            del pending


# 0001-01-01 and 9999-12-31 (23:59:59.999999) as Arrow stores them: days or microseconds
_CALENDAR = {
    "date32": (-719_162, 2_932_896),
    "timestamp": (-62_135_596_800_000_000, 253_402_300_799_999_999),
}


def _within_calendar(values: pa.Array) -> bool:
    if pa.types.is_date32(values.type):
        (first, last), as_int = _CALENDAR["date32"], pa.int32()
    elif pa.types.is_timestamp(values.type):
        (first, last), as_int = _CALENDAR["timestamp"], pa.int64()
    else:
        return True
    extremes = pc.min_max(values.cast(as_int))
    lowest, highest = extremes["min"].as_py(), extremes["max"].as_py()
    return lowest is None or (first <= lowest and highest <= last)


def _copy(connection: adbc.Connection, sql: str) -> Iterator[pa.RecordBatch]:
    """The fast path: COPY ... TO STDOUT (BINARY), cut into batches of BATCH_SIZE_HINT_BYTES."""
    with connection.cursor() as cursor:
        cursor.adbc_statement.set_options(**{_BATCH_SIZE_OPTION: str(BATCH_SIZE_HINT_BYTES)})
        try:
            cursor.execute(sql)
            yield from cursor.fetch_record_batch()
        finally:
            connection.rollback()  # ends the read-only transaction: vacuum is not held back


def _pages(connection: adbc.Connection, sql: str, parameters: tuple) -> Iterator[pa.RecordBatch]:
    """A query with bound parameters, FETCH_ROWS rows at a time through a server-side cursor.

    COPY cannot take parameters, and without COPY libpq would hold the whole result in memory.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {sql}", parameters)
        cursor.adbc_statement.set_options(**{_USE_COPY_OPTION: "false"})
        try:
            while True:
                cursor.execute(f"FETCH FORWARD {FETCH_ROWS} FROM {_CURSOR}")
                page = cursor.fetch_arrow_table()
                if page.num_rows == 0:
                    return
                yield from page.to_batches()
        finally:
            connection.rollback()  # closes the cursor; the transaction only read


def _ndims(column: str) -> str:
    return f"{column}#ndims"


def max_timestamp(batch: pa.RecordBatch, column: str) -> datetime | None:
    value = pc.max(batch.column(column)).as_py()
    return None if value is None else as_utc(value)


def count_rows(connection: adbc.Connection, source: str, where: str = "TRUE") -> int:
    return fetch_all(connection, f"SELECT count(*) FROM {quote_table(source)} WHERE {where}")[0][0]


def latest_timestamps(
    connection: adbc.Connection, source: str, columns: list[str]
) -> list[datetime | None]:
    """`max()` of each timestamp column: a cheap index lookup when the columns are indexed."""
    select_list = ", ".join(f"max({quote_identifier(c)})" for c in columns)
    row = fetch_all(connection, f"SELECT {select_list} FROM {quote_table(source)}")[0]
    return [None if value is None else as_utc(value) for value in row]


# The start time of the oldest transaction open in this database, other than the sync's own
# sessions; with none open, this statement's transaction start. A transaction that has not
# written yet counts too: it can still stamp rows with its start time (`now()`) later.
_OPEN_SINCE_SQL = f"""
SELECT pg_is_in_recovery(),
       pg_has_role('pg_read_all_stats', 'USAGE'),
       least(now(), min(xact_start))
FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND xact_start IS NOT NULL
  AND application_name IS DISTINCT FROM '{APPLICATION_NAME}'
"""
UNSEEN_ON_REPLICA = (
    "Postgres is a read replica, which cannot see the primary's open transactions: reads "
    "start at watermark - lookback only, so a transaction open longer than `lookback` on the "
    "primary can commit rows the next read misses; point PG_URL at the primary to close that."
)
UNSEEN_WITHOUT_GRANT = (
    "the sync's role cannot see other sessions' transactions: reads start at watermark - "
    "lookback only, so a transaction open longer than `lookback` can commit rows the next read "
    "misses; run `GRANT pg_read_all_stats TO <the sync's role>` (or pg_monitor) to close that."
)


@dataclass(frozen=True)
class OpenTransactions:
    """What a read may have missed: rows of transactions open when it began.

    Every row committed after a read's snapshot comes from a transaction that started at or
    after `since`, so if stamped by the database clock (`now()`, a default, a trigger) its
    timestamp is `since` or later. `since` is None where Postgres does not show it (`unseen`).
    """

    since: datetime | None
    unseen: str | None = None


def open_transactions(connection: adbc.Connection) -> OpenTransactions:
    """Taken before a read's snapshot, in a transaction of its own: Postgres keeps one
    pg_stat_activity snapshot per transaction."""
    connection.rollback()
    try:
        ((on_replica, sees_every_session, since),) = fetch_all(connection, _OPEN_SINCE_SQL)
    finally:
        connection.rollback()
    if on_replica:
        return OpenTransactions(None, UNSEEN_ON_REPLICA)
    if not sees_every_session:
        return OpenTransactions(None, UNSEEN_WITHOUT_GRANT)
    return OpenTransactions(as_utc(since))


_UNIQUE_KEYS_SQL = """
SELECT array_agg(a.attname::text ORDER BY a.attname)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""


def has_unique_key(connection: adbc.Connection, source: str, columns: list[str]) -> bool:
    """True when a unique index (a primary key among them) covers exactly `columns`."""
    unique_keys = fetch_all(connection, _UNIQUE_KEYS_SQL, (quote_table(source),))
    return sorted(columns) in [list(key) for (key,) in unique_keys]
