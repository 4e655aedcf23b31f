"""Faults injected into the sync's inserts, and readers that watch a ClickHouse table while the
sync writes it."""

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

# The sync's own insert of one batch, into the table it was meant for.
Insert = Callable[[pa.RecordBatch], None]


def intercept_inserts(
    patch: pytest.MonkeyPatch, interceptor: Callable[[TargetTable, pa.RecordBatch, Insert], None]
) -> None:
    """Every batch the sync inserts passes through `interceptor(target, batch, insert)`."""
    insert_batch = load.insert_batch

    def intercepted(client: Client, target: TargetTable, batch: pa.RecordBatch, *args, **kwargs):
        interceptor(target, batch, lambda b: insert_batch(client, target, b, *args, **kwargs))

    patch.setattr(load, "insert_batch", intercepted)


def crash_after(
    patch: pytest.MonkeyPatch, batches: int, into: str = "", error: Exception | None = None
) -> None:
    """The sync dies once `batches` batches went into tables whose name ends with `into` (any
    table by default): right after the last of them, or at the first insert for 0."""
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
    after_inserts: int = 0  # reads made right after a batch was inserted

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
    in a thread of its own, and one right after each batch the sync inserts, so that a batch
    that reached the table readers use shows however the threads are scheduled."""
    readings = Readings()
    done = threading.Event()

    def read_continuously() -> None:
        with clickhouse.get_client() as reader:
            while not done.is_set():
                readings.read(reader, sql)
                time.sleep(0.005)

    with clickhouse.get_client() as between_inserts:

        def insert_then_read(target: TargetTable, batch: pa.RecordBatch, insert: Insert) -> None:
            insert(batch)
            readings.read(between_inserts, sql)
            readings.after_inserts += 1

        intercept_inserts(patch, insert_then_read)
        thread = threading.Thread(target=read_continuously)
        thread.start()
        try:
            yield readings
        finally:
            done.set()
            thread.join()
