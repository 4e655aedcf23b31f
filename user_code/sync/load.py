"""Rows into ClickHouse: a read's Arrow batches as one INSERT, and the rows a table serves."""

import os
from collections.abc import Generator, Iterable, Iterator
from itertools import chain
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from user_code.sync.target_table import DELETED_COLUMN, LIVE_ROWS, TargetTable, quote_ch_name

# ClickHouse would otherwise run ReplacingMergeTree's merge over each inserted block, to drop
# keys repeated within it: an extra pass and copy that cost about as much as the rest of the
# insert. A read returns each key once (a snapshot's partitions are disjoint), so there is
# nothing to drop; versions of a key across blocks are resolved by merges and FINAL as before.
# The rows arrive as one stream: more threads only squashed more blocks at once (peak memory
# of an 8M-row load 2.0-2.2 GB with chDB's default, 1.5 GB with one).
_INSERT_SETTINGS = {"optimize_on_insert": 0, "max_threads": 1}
# ClickHouse's own `min_insert_block_size_rows`: a load's parts hold about this many rows, or
# fewer where the table's `insert_block_mb` fills first.
INSERT_BLOCK_ROWS = 1_048_449
# The end of an Arrow IPC stream: a message of length 0.
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def deleted_flags(batch: pa.RecordBatch, soft_delete_column: str | None) -> pa.Array:
    """`_is_deleted`: a true boolean, or any non-NULL value (a `deleted_at`), marks a deletion."""
    if soft_delete_column is None:
        return pa.nulls(batch.num_rows, pa.uint8()).fill_null(0)
    values = batch.column(soft_delete_column)
    flags = values.fill_null(False) if pa.types.is_boolean(values.type) else values.is_valid()
    return pc.cast(flags, pa.uint8())


def insert_batches(
    client: Client,
    target: TargetTable,
    batches: Iterable[pa.RecordBatch],
    soft_delete_column: str | None,
    block_mb: int,
) -> None:
    """Every batch of one read in one INSERT, streamed to ClickHouse as the batches arrive.

    ClickHouse squashes the stream into blocks of INSERT_BLOCK_ROWS rows or `block_mb`, whichever
    fills first, and writes each block as one part, as it does for its own `INSERT … SELECT FROM
    postgresql()`: memory holds one block, whatever the table's size.
    An INSERT per batch made parts a third that size, which background merges re-read while the
    load still ran. The blocks are committed one by one: a read that fails leaves those written
    before it, which a rerun writes again at the same version (ReplacingMergeTree keeps one).
    """
    rows = (
        batch.append_column(DELETED_COLUMN, deleted_flags(batch, soft_delete_column))
        for batch in batches
        if batch.num_rows
    )
    first = next(rows, None)
    if first is None:
        return
    settings = {
        **_INSERT_SETTINGS,
        "min_insert_block_size_rows": INSERT_BLOCK_ROWS,
        "min_insert_block_size_bytes": block_mb << 20,
    }
    failures: list[Exception] = []
    stream = _failures_kept(chain([first], rows), failures)
    in_process = urlsplit(client.uri).scheme == "chdb"
    insert = insert_in_process if in_process else insert_over_http
    try:
        insert(client, target, first.schema, stream, settings)
    except Exception:
        if failures:  # the read's own error, not ClickHouse's report that its input broke off
            raise failures[0] from None
        raise


def _failures_kept(
    batches: Iterator[pa.RecordBatch], failures: list[Exception]
) -> Iterator[pa.RecordBatch]:
    try:
        yield from batches
    except Exception as error:
        failures.append(error)
        raise


def insert_in_process(
    client: Client,
    target: TargetTable,
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    settings: dict[str, int],
) -> None:
    """chDB reads the batches itself through its `Python()` table function, which pulls them
    from an Arrow stream on its own thread; clickhouse-connect would spool the whole input to a
    file first. A second connection to the engine the client opened costs nothing."""
    import chdb

    # Read by name from this frame by `Python(pg2ch_rows)` below, unseen by linters.
    pg2ch_rows = pa.RecordBatchReader.from_batches(schema, batches)  # noqa: F841
    columns = ", ".join(quote_ch_name(name) for name in schema.names)
    options = ", ".join(f"{name} = {value}" for name, value in settings.items())
    connection = chdb.connect(os.path.realpath(urlsplit(client.uri).path))
    try:
        connection.query(
            f"INSERT INTO {target.qualified_name} ({columns}) "
            f"SELECT {columns} FROM Python(pg2ch_rows) SETTINGS {options}"
        )
    finally:
        connection.close()


def insert_over_http(
    client: Client,
    target: TargetTable,
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    settings: dict[str, int],
) -> None:
    """One HTTP request whose body is an Arrow IPC stream, sent chunk by chunk as the batches
    arrive (clickhouse-connect never replays such a body: a broken request fails the step)."""
    client.raw_insert(
        target.qualified_name, schema.names, arrow_stream(schema, batches), settings, "ArrowStream"
    )


def arrow_stream(
    schema: pa.Schema, batches: Iterator[pa.RecordBatch]
) -> Generator[bytes, None, None]:
    """The Arrow IPC stream format: the schema, each batch, the end marker."""
    yield schema.serialize().to_pybytes()
    for batch in batches:
        yield batch.serialize().to_pybytes()
    yield _END_OF_STREAM


def count_live_rows(client: Client, target: TargetTable) -> int:
    """Rows ClickHouse serves: one per key (`FINAL`), deletions left out."""
    sql = f"SELECT count() FROM {target.qualified_name} FINAL WHERE {LIVE_ROWS}"
    count: Any = client.query(sql).result_rows[0][0]
    return int(count)
