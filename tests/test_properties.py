"""Random inserts, updates and deletes with syncs in between: ClickHouse always ends equal.

`lookback: 0`, so rows that a transaction open across a sync commits late arrive only because
reads start no later than the oldest open transaction. `PROPERTY_HISTORIES` sets how many
random histories run (`make soak` runs 200).
"""

import os

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_support import compare, demo_config, run_sync

from demo.seed import insert_customers

pytestmark = pytest.mark.usefixtures("sync_env")

CONFIG = demo_config(hard_deletes=True, lookback=0, snapshot_partitions=3)  # loads partitioned

change = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 40)),
    st.tuples(st.just("update"), st.integers(2, 5), st.integers(0, 4)),
    st.tuples(st.just("null_email"), st.integers(2, 5), st.integers(0, 4)),
    st.tuples(st.just("delete"), st.integers(2, 7), st.integers(0, 6)),
    st.tuples(st.just("reinsert"), st.integers(1, 20)),
    # an insert and an update in a transaction that stays open across the next sync
    st.tuples(st.just("open_across_sync"), st.integers(2, 5), st.integers(0, 4)),
)
history = st.lists(st.lists(change, min_size=1, max_size=4), min_size=1, max_size=3)

_SQL = {
    "update": "UPDATE customers SET balance = coalesce(balance, 0) + 1, name = name || '!', "
    "updated_at = clock_timestamp() WHERE id % $1 = $2",
    "null_email": "UPDATE customers SET email = CASE WHEN email IS NULL THEN 'x@y.z' END, "
    "updated_at = clock_timestamp() WHERE id % $1 = $2",
    "delete": "DELETE FROM customers WHERE id % $1 = $2",
    # A key the identity already handed out (so later inserts never collide), if now free.
    # The new row is stamped with the transaction's start (`now()`, the column default), behind
    # rows committed meanwhile; the change with the time of the change, as a row's version
    # must never go backwards (a `now()` there would, in a transaction older than the row's
    # last change, and ClickHouse would keep the newer-stamped, older row).
    "open_across_sync": "WITH touched AS (UPDATE customers SET name = name || '?', "
    "updated_at = clock_timestamp() WHERE id % $1 = $2) "
    "INSERT INTO customers (name, created_by, updated_by) VALUES ('late', 'x', 'x')",
    "reinsert": "INSERT INTO customers (id, name, created_by, updated_by) "
    "SELECT $1, 'again', 'x', 'x' WHERE NOT EXISTS (SELECT 1 FROM customers WHERE id = $1) "
    "AND $1 <= coalesce(pg_sequence_last_value("
    "pg_get_serial_sequence('customers', 'id')::regclass), 0)",
}


def apply(connection, step: tuple, late_session) -> None:
    kind, *arguments = step
    if kind == "insert":
        insert_customers(connection, arguments[0])
        return
    session = late_session if kind == "open_across_sync" else connection
    with session.cursor() as cursor:
        cursor.execute(_SQL[kind], tuple(arguments))
    if session is connection:
        connection.commit()


@settings(
    max_examples=int(os.environ.get("PROPERTY_HISTORIES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=history)
def test_random_changes_then_sync_leave_both_sides_equal(
    customers, pg_url, ch, clickhouse, history
):
    with customers.cursor() as cursor:
        cursor.execute("TRUNCATE customers RESTART IDENTITY")
    customers.commit()
    ch.command(f"DROP TABLE IF EXISTS `{clickhouse.database}`.`customers`")
    instance = dg.DagsterInstance.ephemeral()

    for changes in history:
        with adbc.connect(pg_url) as late_session:  # an application's session, not the sync's
            with late_session.cursor() as cursor:
                cursor.execute("SELECT now()")  # begins: its rows are stamped with this time
            # its writes last: their row locks would hold up the round's other writes
            for step in sorted(changes, key=lambda step: step[0] == "open_across_sync"):
                apply(customers, step, late_session)
            run_sync(instance, CONFIG)
            late_session.commit()
        run_sync(instance, CONFIG)
        run_sync(instance, CONFIG, job_name="verify_clickhouse")
        comparison = compare(CONFIG)
        assert comparison.equal, (history, comparison)
