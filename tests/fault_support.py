"""Faults injected into the sync's inserts, and readers that watch a ClickHouse table while the
sync writes it."""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from user_code.resources import ClickHouseResource
from user_code.sync import load
from user_code.sync.errors import SyncError
from user_code.sync.target_table import TargetTable

# Hands one batch on to the INSERT it was read for.
Insert = Callable[[pa.RecordBatch], None]


def intercept_inserts(
    patch: pytest.MonkeyPatch, interceptor: Callable[[TargetTable, pa.RecordBatch, Insert], None]
) -> None:
    """Every batch the sync hands to an INSERT passes through `interceptor(target, batch,
    insert)`, which may hand it on (`insert`), alter it, or raise. An INSERT takes a read's
    batches as one stream (load.py): ClickHouse writes a part whenever a block is full."""
    insert_batches = load.insert_batches

    def intercepted(client: Client, target: TargetTable, batches: Iterator[pa.RecordBatch], *args):
        def handed_on() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                passed: list[pa.RecordBatch] = []
                interceptor(target, batch, passed.append)
                yield from passed

        insert_batches(client, target, handed_on(), *args)

    patch.setattr(load, "insert_batches", intercepted)


def crash_after(
    patch: pytest.MonkeyPatch, batches: int, into: str = "", error: Exception | None = None
) -> None:
    """The sync dies once `batches` batches went into INSERTs of tables whose name ends with
    `into` (any table by default): right after the last of them, or at the first for 0."""
    error = error or SyncError("injected crash")
    inserted = 0

    def insert_then_crash(target: TargetTable, batch: pa.RecordBatch, insert: Insert) -> None:
        nonlocal inserted
        if not target.name.endswith(into):
            insert(batch)
            return
        if inserted == batches:
            raise error
        insert(batch)
        inserted += 1
        if inserted == batches:
            raise error

    intercept_inserts(patch, insert_then_crash)


@dataclass
class Readings:
    """What readers saw: the first row of their query, or the name of the error it raised."""

    seen: list[tuple | str] = field(default_factory=list)
    after_inserts: int = 0  # reads made between two batches of an INSERT

    def read(self, client: Client, sql: str) -> None:
        try:
            self.seen.append(tuple(client.query(sql).result_rows[0]))
        except Exception as error:  # a missing or half-built table shows here
            self.seen.append(type(error).__name__)


@contextmanager
def reading_throughout(
    clickhouse: ClickHouseResource, sql: str, patch: pytest.MonkeyPatch
) -> Iterator[Readings]:
    """Readers on connections of their own read `sql` while the block runs: one continuously,
    and one between every two batches the sync hands to an INSERT (the INSERT waits for its
    read), so that a batch that reached the table readers use shows however the threads are
    scheduled. Each reads in a thread of its own: the INSERT pulls its batches on ClickHouse's
    thread, where no query may run."""
    readings = Readings()
    done = threading.Event()
    requests: queue.Queue[threading.Event | None] = queue.Queue()

    def read_continuously() -> None:
        with clickhouse.get_client() as reader:
            while not done.is_set():
                readings.read(reader, sql)
                time.sleep(0.005)

    def read_on_request() -> None:
        with clickhouse.get_client() as reader:
            while (request := requests.get()) is not None:
                readings.read(reader, sql)
                readings.after_inserts += 1
                request.set()

    def read_then_insert(target: TargetTable, batch: pa.RecordBatch, insert: Insert) -> None:
        read = threading.Event()
        requests.put(read)
        read.wait()
        insert(batch)

    intercept_inserts(patch, read_then_insert)
    threads = [threading.Thread(target=read_continuously), threading.Thread(target=read_on_request)]
    for thread in threads:
        thread.start()
    try:
        yield readings
    finally:
        done.set()
        requests.put(None)
        for thread in threads:
            thread.join()
