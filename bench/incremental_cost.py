"""`make bench`'s incremental phase: what one run of the job costs as the table grows.

For a size, in a process of its own (chDB allows one per directory, and its counters are per
process): the demo table seeded with rows a second apart, the initial load, a first run of
CHANGED new + CHANGED updated rows, then a second run of as many, measured: the rows Postgres
read by sequential scans of the table and the entries it read from its indexes
(`pg_stat_user_tables`, `pg_stat_user_indexes`), the rows
ClickHouse selected (its `SelectedRows` event), and the run's wall time. The run is the whole
`postgres_to_clickhouse` job, checks included, as the daemon starts it.
"""

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
from clickhouse_connect.driver.client import Client

from demo.seed import create_customers, insert_customers, update_customers
from user_code.config import DEMO_CONFIG, parse_sync_config
from user_code.definitions import build_definitions
from user_code.plan import plan_tables
from user_code.resources import ClickHouseResource
from user_code.sync.postgres import APPLICATION_NAME, connect, fetch_all

CHANGED = 1_000  # rows inserted and rows updated before each run
JOB = "postgres_to_clickhouse"

# Index entries count too: a count(*) of a vacuumed table reads a whole index, not the heap.
_TABLE_READS_SQL = """
SELECT t.seq_scan, t.seq_tup_read, coalesce(t.idx_scan, 0),
       (SELECT sum(i.idx_tup_read)::bigint FROM pg_catalog.pg_stat_user_indexes i
        WHERE i.relid = t.relid)
FROM pg_catalog.pg_stat_user_tables t WHERE t.relid = 'public.customers'::regclass
"""
_SYNC_SESSIONS_SQL = f"""
SELECT count(*) FROM pg_catalog.pg_stat_activity
WHERE application_name = '{APPLICATION_NAME}' AND pid <> pg_backend_pid()
"""


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def selected_rows(client: Client) -> int:
    sql = "SELECT sum(value) FROM system.events WHERE event = 'SelectedRows'"
    return int(client.query(sql).result_rows[0][0])


def change(connection: adbc.Connection, rows: int, remainder: int) -> None:
    """CHANGED rows updated, spread over the table by id, and CHANGED rows inserted."""
    update_customers(connection, ids_modulo=rows // CHANGED, remainder=remainder)
    insert_customers(connection, CHANGED)


def table_reads(connection: adbc.Connection) -> dict[str, int]:
    """What Postgres read of the table since the last reset, once the run's sessions ended
    (a backend reports its counts as it exits)."""
    deadline = time.monotonic() + 30
    while fetch_all(connection, _SYNC_SESSIONS_SQL)[0][0] and time.monotonic() < deadline:
        time.sleep(0.1)
    ((sequential_scans, rows_scanned, index_scans, entries_read),) = fetch_all(
        connection, _TABLE_READS_SQL
    )
    return {
        "postgres_sequential_scans": sequential_scans,
        "postgres_rows_scanned": rows_scanned,
        "postgres_index_scans": index_scans,
        "postgres_index_entries_read": int(entries_read or 0),
    }


def measure(pg_url: str, chdb_dir: str, rows: int) -> dict:
    clickhouse_url = f"chdb://{chdb_dir}?database=pg2ch"
    os.environ.update(PG_URL=pg_url, CLICKHOUSE_URL=clickhouse_url)
    definitions = build_definitions(plan_tables(parse_sync_config(DEMO_CONFIG)), clickhouse_url)
    sync = definitions.resolve_job_def(JOB)
    instance = dg.DagsterInstance.ephemeral()
    with connect(pg_url) as connection:
        create_customers(connection)
        ending = datetime.now(UTC) - timedelta(days=1)
        insert_customers(connection, rows, ending_at=ending, spacing=timedelta(seconds=1))
        fetch_all(connection, "VACUUM ANALYZE public.customers")
        sync.execute_in_process(instance=instance)
        log(f"{rows:,} rows loaded")
        change(connection, rows, remainder=1)
        sync.execute_in_process(instance=instance)  # the lookback settles on a run's rows
        change(connection, rows, remainder=2)
        fetch_all(connection, "SELECT pg_stat_force_next_flush()")
        fetch_all(connection, "SELECT pg_stat_reset()")
        with ClickHouseResource(url=clickhouse_url).get_client() as client:
            before = selected_rows(client)
            started = time.monotonic()
            result = sync.execute_in_process(instance=instance)
            seconds = time.monotonic() - started
            selected = selected_rows(client) - before
        reads = table_reads(connection)
    if not result.success:
        sys.exit("the incremental run failed")
    log(f"incremental run: {seconds:.2f} s, ClickHouse selected {selected:,} rows, {reads}")
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "clickhouse_rows_selected": selected,
        **reads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--chdb-dir", required=True)
    parser.add_argument("--rows", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(measure(args.pg_url, args.chdb_dir, args.rows)))


if __name__ == "__main__":
    main()
