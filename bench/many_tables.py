"""The many-tables phase of `make bench`: a schema of TABLES tables of ROWS rows each, synced by
one pattern, as the code location, the sensor and `dagster job execute` meet it.

Measured: loading the definitions (the plan read from the catalog, every table's assets), the
first run (every initial load), the sensor's evaluation once each table has one new row, and
the run that then syncs them, per table. Each in a process of its own, as in a deployment.
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc

REPOSITORY = Path(__file__).resolve().parents[1]
JOB = "postgres_to_clickhouse"
SYNC_CONFIG = """
defaults:
  created_at: created_at
  updated_at: updated_at
tables:
  - source: many.*
"""

_CREATE = """
DO $$
BEGIN
  FOR i IN 1..{tables} LOOP
    EXECUTE format('CREATE TABLE many.t%s (id bigint PRIMARY KEY, name text,
      amount numeric(10, 2), created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now())', lpad(i::text, 4, '0'));
    EXECUTE format('CREATE INDEX ON many.t%s (created_at)', lpad(i::text, 4, '0'));
    EXECUTE format('CREATE INDEX ON many.t%s (updated_at)', lpad(i::text, 4, '0'));
    EXECUTE format('INSERT INTO many.t%s SELECT g, ''n'' || g, g / 3.0,
      now() - interval ''1 day'' + g * interval ''1 second'',
      now() - interval ''1 day'' + g * interval ''1 second''
      FROM generate_series(1, {rows}) g', lpad(i::text, 4, '0'));
  END LOOP;
END $$
"""

_ONE_NEW_ROW_EACH = """
DO $$
BEGIN
  FOR i IN 1..{tables} LOOP
    EXECUTE format('INSERT INTO many.t%s (id, name) VALUES (1000000, ''new'')',
                   lpad(i::text, 4, '0'));
  END LOOP;
END $$
"""

# What each probe process runs: the time of the one thing measured, printed as JSON.
_LOAD_PROBE = """
import json, time
from user_code.definitions import defs
started = time.monotonic()
definitions = defs()
seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "assets": len(list(definitions.assets or []))}))
"""
_SENSOR_PROBE = """
import json, os, time
import dagster as dg
from user_code.definitions import defs
from user_code.resources import PostgresResource
definitions = defs()
sensor = definitions.resolve_sensor_def("postgres_to_clickhouse_sensor")
with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
    resources = {"postgres": PostgresResource(url=os.environ["PG_URL"])}
    started = time.monotonic()
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "stale_steps": len(result.asset_selection or [])}))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the process's own: a busy machine stretches the wall time,
    not this) and stdout of `command`."""
    started, cpu = time.monotonic(), _children_cpu_seconds()
    completed = subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"{command[:4]} failed:\n{completed.stderr[-4000:]}")
    return time.monotonic() - started, _children_cpu_seconds() - cpu, completed.stdout


def _probe(script: str, env: dict[str, str]) -> dict:
    _, _, output = _run([sys.executable, "-c", script], env)
    return json.loads(output.strip().splitlines()[-1])


def measure(url: str, workdir: Path, tables: int, rows: int) -> dict:
    with adbc.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA many")
        started = time.monotonic()
        cursor.execute(_CREATE.format(tables=tables, rows=rows))
        cursor.execute("VACUUM ANALYZE")
        log(f"created {tables} tables of {rows:,} rows in {time.monotonic() - started:.0f} s")
    config = workdir / "many-tables.yaml"
    config.write_text(SYNC_CONFIG)
    home = workdir / "dagster-many"
    home.mkdir()
    env = {**os.environ, "PG_URL": url, "SYNC_CONFIG": str(config), "DAGSTER_HOME": str(home),
           "CLICKHOUSE_URL": f"chdb://{workdir}/chdb-many?database=pg2ch"}  # fmt: skip
    job = [sys.executable, "-m", "dagster", "job", "execute", "-m", "user_code.definitions"]
    job += ["-j", JOB]

    loaded = _probe(_LOAD_PROBE, env)
    log(f"definitions: {loaded['seconds']:.2f} s for {tables} tables")
    first_run, _, _ = _run(job, env)
    log(f"first run (initial loads): {first_run:.1f} s")
    with adbc.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
        cursor.execute(_ONE_NEW_ROW_EACH.format(tables=tables))
    sensor = _probe(_SENSOR_PROBE, env)
    log(f"sensor: {sensor['seconds']:.2f} s, {sensor['stale_steps']} steps to run")
    second_run, second_cpu, _ = _run(job, env)
    log(f"run with one new row in each table: {second_run:.1f} s, {second_cpu:.1f} CPU-s")
    return {
        "tables": tables,
        "rows_per_table": rows,
        "definitions_load_seconds": round(loaded["seconds"], 3),
        "first_run_seconds": round(first_run, 2),
        "sensor_seconds": round(sensor["seconds"], 3),
        "sensor_stale_steps": sensor["stale_steps"],
        "one_new_row_run_seconds": round(second_run, 2),
        "one_new_row_run_seconds_per_table": round(second_run / tables, 3),
        "one_new_row_run_cpu_seconds_per_table": round(second_cpu / tables, 3),
    }


def report(figures: dict) -> str:
    tables = figures["tables"]
    return "\n".join(
        [
            f"| {tables} tables of {figures['rows_per_table']:,} rows | seconds | target |",
            "|---|---:|---:|",
            f"| loading the definitions | {figures['definitions_load_seconds']:.2f} | <= 5 |",
            f"| sensor evaluation, one new row in each | {figures['sensor_seconds']:.2f} | <= 5 |",
            f"| run syncing one new row in each | {figures['one_new_row_run_seconds']:.1f} | |",
            f"|   per table | {figures['one_new_row_run_seconds_per_table']:.3f} | <= 0.3 |",
            f"|   CPU-s per table | {figures['one_new_row_run_cpu_seconds_per_table']:.3f} | |",
            f"| first run, every initial load | {figures['first_run_seconds']:.1f} | |",
        ]
    )
