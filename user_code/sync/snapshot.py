"""The initial snapshot in partitions: one Postgres snapshot, read on several connections.

One COPY stream keeps one Postgres backend busy, so it reads at most one core's worth. With
`snapshot_partitions` > 1 the table is cut into ranges of pages (CTID ranges: any table has
them whatever its key, and Postgres reads each with a TID Range Scan), each read by its own
connection. Every connection runs a REPEATABLE READ transaction on the snapshot the first
one exports (`pg_export_snapshot()`, `SET TRANSACTION SNAPSHOT`), so the partitions together
are exactly the table at one instant, as a single COPY would read it, and the watermarks taken
from their rows are that instant's.
"""

import re
from collections.abc import Sequence
from itertools import pairwise

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.errors import SyncError
from user_code.sync.postgres import begin, fetch_all

_SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")


def page_ranges(pages: int, partitions: int) -> list[str]:
    """`partitions` WHERE conditions on `ctid` that together cover every row of the table.

    The first range is open below and the last open above, so a page added after `pages` was
    read (by a concurrent insert, invisible to the snapshot anyway) is still covered. Offsets
    start at 1, so `(page,0)` lies before every row of `page`. The bounds are integers computed
    here, written into the SQL because COPY takes no parameters.
    """
    bounds = [None, *(pages * i // partitions for i in range(1, partitions)), None]
    conditions: list[str] = []
    for lower, upper in pairwise(bounds):
        limits = []
        if lower is not None:
            limits.append(f"ctid >= '({lower},0)'::tid")
        if upper is not None:
            limits.append(f"ctid < '({upper},0)'::tid")
        conditions.append(" AND ".join(limits))
    return conditions


def share_snapshot(connections: Sequence[adbc.Connection]) -> None:
    """One REPEATABLE READ transaction on each connection, all on the first one's snapshot.

    Every connection imports the snapshot here, before any of them reads: the exporting
    transaction may end (its partition read) as soon as the others hold the snapshot.
    """
    first, *others = connections
    begin(first, "REPEATABLE READ")
    if not others:
        return
    (snapshot_id,) = fetch_all(first, "SELECT pg_export_snapshot()")[0]
    if not _SNAPSHOT_ID.fullmatch(snapshot_id):
        raise SyncError(f"Postgres exported an unexpected snapshot id {snapshot_id!r}.")
    for connection in others:
        begin(connection, "REPEATABLE READ")
        with connection.cursor() as cursor:
            cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
