"""Connections to the source, and the plain queries every part of the sync asks."""

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.errors import ConnectionFailed, describe_url, redact, require_scheme
from user_code.sync.postgres_names import quote_pg_name, quote_pg_table
from user_code.sync.watermark import as_utc

# The sync's sessions call themselves this, so their own reads never hold back the read start.
APPLICATION_NAME = "pg2ch"

Isolation = Literal["READ COMMITTED", "REPEATABLE READ"]

# Connections inside a transaction `begin` opened: the driver does not say, and a ROLLBACK
# outside a transaction puts a warning in the server's log.
_in_transaction: "weakref.WeakSet[adbc.Connection]" = weakref.WeakSet()


def open_connection(url: str) -> adbc.Connection:
    """An ADBC connection whose session reads timestamps in UTC and intervals as ISO 8601; the
    caller closes it.

    The connection runs in autocommit: every statement is its own transaction unless the sync
    opens one itself (`begin`). The driver then never begins, chains or ends a
    transaction on its own, whose timing and properties differ between driver releases
    (1.8.0 begins the next transaction at once on commit and rollback, and its rollback keeps
    the isolation level and READ ONLY of the transaction it ends; later releases begin
    lazily). The open-transaction bound and the snapshots depend on exactly when a
    transaction begins.
    """
    require_scheme(url, "PG_URL", ("postgresql", "postgres"))
    try:
        connection = adbc.connect(url, autocommit=True)
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
    except Exception:
        connection.close()
        raise
    return connection


@contextmanager
def connect(url: str) -> Iterator[adbc.Connection]:
    connection = open_connection(url)
    try:
        yield connection
    finally:
        connection.close()


def begin(connection: adbc.Connection, isolation: Isolation = "READ COMMITTED") -> None:
    """A read-only transaction, begun now; `end` ends it."""
    with connection.cursor() as cursor:
        cursor.execute(f"BEGIN ISOLATION LEVEL {isolation}, READ ONLY")
    _in_transaction.add(connection)


def end(connection: adbc.Connection) -> None:
    """Ends the transaction `begin` opened, if it is still open: nothing was written, so
    rolling back releases the snapshot and any cursor."""
    if connection in _in_transaction:
        _in_transaction.discard(connection)
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK")


def fetch_all(
    connection: adbc.Connection, sql: str, parameters: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, parameters or None)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def count_rows(connection: adbc.Connection, source: str, where: str = "TRUE") -> int:
    sql = f"SELECT count(*) FROM {quote_pg_table(source)} WHERE {where}"
    count: int = fetch_all(connection, sql)[0][0]
    return count


def latest_timestamps(
    connection: adbc.Connection, source: str, columns: list[str]
) -> list[datetime | None]:
    """`max()` of each timestamp column: a cheap index lookup when the columns are indexed."""
    select_list = ", ".join(f"max({quote_pg_name(c)})" for c in columns)
    row = fetch_all(connection, f"SELECT {select_list} FROM {quote_pg_table(source)}")[0]
    return [None if value is None else as_utc(value) for value in row]


def latest_timestamps_of(
    connection: adbc.Connection, tables: list[tuple[str, Sequence[str]]]
) -> list[list[datetime | None]]:
    """`latest_timestamps` of many (table, columns) at once: one query per hundred tables."""
    found: list[list[datetime | None]] = []
    for start in range(0, len(tables), 100):
        chunk = tables[start : start + 100]
        width = max(len(columns) for _, columns in chunk)
        selects = []
        for index, (source, columns) in enumerate(chunk):
            maxima = [f"max({quote_pg_name(c)})::timestamptz" for c in columns]
            maxima += ["NULL::timestamptz"] * (width - len(columns))
            selects.append(f"SELECT {index}, {', '.join(maxima)} FROM {quote_pg_table(source)}")
        rows = sorted(fetch_all(connection, " UNION ALL ".join(selects)))
        for (_, *values), (_, columns) in zip(rows, chunk, strict=True):
            found.append([None if v is None else as_utc(v) for v in values[: len(columns)]])
    return found
