"""Rows from Postgres as Arrow record batches of bounded size, read ahead of their inserts."""

from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import adbc_driver_postgresql
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from user_code.sync.postgres import begin, end

# Arrow batches of about this size stream from Postgres' COPY output: memory stays bounded
# whatever the table size (two batches are in flight, see `read_ahead`). ClickHouse gathers
# them into parts of its own size (load.py), so the size of a part does not follow it.
# Larger batches were no faster and left the process holding more after a long load: peak
# RSS of an 8M-row load 1.46 GB with 8 or 16 MB, 1.64 GB with 32 MB, 1.93 GB with 64 MB.
BATCH_SIZE_HINT_BYTES = 8 * 1024 * 1024
_BATCH_SIZE_OPTION = adbc_driver_postgresql.StatementOptions.BATCH_SIZE_HINT_BYTES.value
# Rows per FETCH when a query with parameters pages through a server-side cursor.
FETCH_ROWS = 50_000
_USE_COPY_OPTION = adbc_driver_postgresql.StatementOptions.USE_COPY.value
_CURSOR = "pg2ch_rows"

# A stream of batches that can be closed early: its cursor is released at once.
Batches = Generator[pa.RecordBatch, None, None]


def copy_batches(connection: adbc.Connection, sql: str) -> Batches:
    """The fast path: COPY ... TO STDOUT (BINARY), cut into batches of BATCH_SIZE_HINT_BYTES,
    in the transaction the caller began (`share_snapshot`), which ends with the read."""
    with connection.cursor() as cursor:
        cursor.adbc_statement.set_options(**{_BATCH_SIZE_OPTION: str(BATCH_SIZE_HINT_BYTES)})
        try:
            cursor.execute(sql)
            yield from cursor.fetch_record_batch()
        finally:
            end(connection)  # vacuum is not held back by a snapshot no longer read


def cursor_pages(connection: adbc.Connection, sql: str, parameters: tuple[Any, ...]) -> Batches:
    """A query with bound parameters, FETCH_ROWS rows at a time through a server-side cursor.

    COPY cannot take parameters, and without COPY libpq would hold the whole result in memory.
    """
    begin(connection)  # a cursor lives in a transaction
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR {sql}", parameters)
            cursor.adbc_statement.set_options(**{_USE_COPY_OPTION: "false"})
            while True:
                cursor.execute(f"FETCH FORWARD {FETCH_ROWS} FROM {_CURSOR}")
                page = cursor.fetch_arrow_table()
                if page.num_rows == 0:
                    return
                yield from page.to_batches()
        finally:
            end(connection)  # closes the cursor


def read_ahead(*sources: Batches) -> Batches:
    """The batches of every source, in the order they are ready, each source read in its own
    thread while the caller still works on a batch before.

    Without it Postgres stops streaming while ClickHouse inserts a batch, and the two take
    turns; with it they run side by side. One batch per source is read ahead, never more, so
    memory stays bounded at two batches a source. The first failure of any source ends all.
    """
    with ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="pg2ch-read") as reader:
        pending: dict[Future[pa.RecordBatch | None], Batches] = {
            reader.submit(next, source, None): source for source in sources
        }
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
