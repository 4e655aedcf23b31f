"""Random inserts, updates and deletes with syncs in between: ClickHouse always ends equal."""

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_support import compare, demo_config, run_sync

from demo.seed import insert_customers

pytestmark = pytest.mark.usefixtures("sync_env")

CONFIG = demo_config(hard_deletes=True)

change = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 40)),
    st.tuples(st.just("update"), st.integers(2, 5), st.integers(0, 4)),
    st.tuples(st.just("null_email"), st.integers(2, 5), st.integers(0, 4)),
    st.tuples(st.just("delete"), st.integers(2, 7), st.integers(0, 6)),
    st.tuples(st.just("reinsert"), st.integers(1, 20)),
)
history = st.lists(st.lists(change, min_size=1, max_size=4), min_size=1, max_size=3)

_SQL = {
    "update": "UPDATE customers SET balance = coalesce(balance, 0) + 1, name = name || '!', "
    "updated_at = clock_timestamp() WHERE id % $1 = $2",
    "null_email": "UPDATE customers SET email = CASE WHEN email IS NULL THEN 'x@y.z' END, "
    "updated_at = clock_timestamp() WHERE id % $1 = $2",
    "delete": "DELETE FROM customers WHERE id % $1 = $2",
    # A key the identity already handed out (so later inserts never collide), if now free.
    "reinsert": "INSERT INTO customers (id, name, created_by, updated_by) "
    "SELECT $1, 'again', 'x', 'x' WHERE NOT EXISTS (SELECT 1 FROM customers WHERE id = $1) "
    "AND $1 <= coalesce(pg_sequence_last_value("
    "pg_get_serial_sequence('customers', 'id')::regclass), 0)",
}


def apply(connection, step: tuple) -> None:
    kind, *arguments = step
    if kind == "insert":
        insert_customers(connection, arguments[0])
        return
    with connection.cursor() as cursor:
        cursor.execute(_SQL[kind], tuple(arguments))
    connection.commit()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=history)
def test_random_changes_then_sync_leave_both_sides_equal(customers, ch, clickhouse, history):
    with customers.cursor() as cursor:
        cursor.execute("TRUNCATE customers RESTART IDENTITY")
    customers.commit()
    ch.command(f"DROP TABLE IF EXISTS `{clickhouse.database}`.`customers`")
    instance = dg.DagsterInstance.ephemeral()

    for changes in history:
        for step in changes:
            apply(customers, step)
        run_sync(instance, CONFIG)
        run_sync(instance, CONFIG, job_name="verify_clickhouse")
        comparison = compare(CONFIG)
        assert comparison.equal, (history, comparison)
