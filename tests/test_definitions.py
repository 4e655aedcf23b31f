"""The code location as Dagster loads it: jobs, assets, checks, automation, the CLI."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from sync_support import ORDER_LINES, demo_config, execute, run_sync, step_metadata
from waiting import wait_until

from demo.seed import insert_customers
from demo.stack import REPO_ROOT
from user_code import assets, resources
from user_code.automation import build_sensor
from user_code.definitions import build_definitions
from user_code.resources import PostgresResource
from user_code.sync.errors import ConnectionFailed, SyncError


@pytest.fixture
def defs(monkeypatch) -> dg.Definitions:
    monkeypatch.setenv("SYNC_SCHEDULE_CRON", "*/2 * * * *")
    return build_definitions(
        demo_config(hard_deletes=True, owners=["team:data-platform"]), "chdb:///tmp/unused"
    )


def test_code_location_loads_with_every_piece(defs):
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()

    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "customers/initial_load",
        "customers/new_records",
        "customers/updates",
        "customers/reconcile_deletes",
    }
    assert all(
        graph.get(key).owners == ["team:data-platform"] for key in graph.get_all_asset_keys()
    )
    assert {key.name for key in graph.asset_check_keys} == {
        "window_parity",
        "freshness",
        "content_checksum",
        "row_count_parity",
    }
    sync_job = defs.resolve_job_def("postgres_to_clickhouse")
    assert {node.name for node in sync_job.nodes} == {"sync_customers"}  # checks run inside
    sync_op = graph.assets_def_for_key(dg.AssetKey(["customers", "updates"]))
    assert {key.name for key in sync_op.check_keys} == {"window_parity", "freshness"}
    assert {key.name for key in sync_job.asset_layer.asset_graph.asset_check_keys} >= {
        "window_parity"
    }
    verify_job = defs.resolve_job_def("verify_clickhouse")
    assert {node.name for node in verify_job.nodes} == {
        "customers__reconcile_deletes",
        "verify_customers",  # content_checksum and row_count_parity, from one comparison
    }
    schedule = defs.resolve_schedule_def("postgres_to_clickhouse_schedule")
    assert schedule.cron_schedule == "*/2 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = defs.resolve_sensor_def("postgres_to_clickhouse_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_writers_of_a_table_share_one_pool_and_retry_with_backoff(defs):
    sync_op = defs.resolve_job_def("postgres_to_clickhouse").graph.node_named("sync_customers")
    reconcile_op = defs.resolve_job_def("verify_clickhouse").graph.node_named(
        "customers__reconcile_deletes"
    )

    assert sync_op.definition.pool == reconcile_op.definition.pool == "clickhouse_customers"
    policy = sync_op.definition.retry_policy
    assert policy.max_retries >= 3
    assert (policy.backoff, policy.jitter) == (dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS)


def test_runs_are_in_process_unless_a_server_and_multiprocess_are_asked_for(monkeypatch):
    def executor(url: str, setting: str) -> str:
        definitions = build_definitions(demo_config(), url, setting)
        return definitions.resolve_job_def("postgres_to_clickhouse").executor_def.name

    assert executor("http://ch:8123/analytics", "in_process") == "in_process"
    assert executor("chdb:///tmp/x", "multiprocess") == "in_process"  # one process per chDB
    assert executor("http://ch:8123/analytics", "multiprocess") == "multiprocess"
    with pytest.raises(SyncError, match="SYNC_EXECUTOR must be in_process or multiprocess"):
        executor("http://ch:8123/analytics", "k8s")


def test_sensor_requests_a_run_only_when_the_source_is_ahead(sync_env, customers, pg_url):
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_sensor(demo_config())

    def evaluate():
        resources = {"postgres": PostgresResource(url=pg_url)}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            return sensor(context)

    assert isinstance(evaluate(), dg.SkipReason)  # an empty source is up to date
    insert_customers(customers, 5)
    request = evaluate()
    assert isinstance(request, dg.RunRequest)
    assert request.asset_selection == [
        dg.AssetKey(["customers", step]) for step in ("initial_load", "new_records", "updates")
    ]
    assert {key.name for key in request.asset_check_keys} == {"window_parity", "freshness"}

    run_sync(instance)
    assert isinstance(evaluate(), dg.SkipReason)


_BIN = Path(sys.executable).parent
RUN_COMMANDS = {
    # what a run pod and a shell user without `dg` run
    "dagster job execute": [
        str(_BIN / "dagster"),
        *("job", "execute", "-m", "user_code.definitions", "-j", "postgres_to_clickhouse"),
    ],
    # the dg project's way, from the repository root (pyproject.toml's [tool.dg])
    "dg launch": [str(_BIN / "dg"), "launch", "--job", "postgres_to_clickhouse"],
}


@pytest.mark.parametrize("command", RUN_COMMANDS.values(), ids=RUN_COMMANDS.keys())
def test_the_job_runs_from_the_command_line(command, pg_url, pg, tmp_path: Path):
    """The README's commands, in their own process with their own chDB directory, on a table
    named by SYNC_CONFIG."""
    execute(
        pg,
        ORDER_LINES,
        "INSERT INTO order_lines (order_id, line, sku) SELECT o, l, gen_random_uuid() "
        "FROM generate_series(1, 500) AS o, generate_series(1, 2) AS l",
    )
    sync_config = tmp_path / "sync.yaml"
    sync_config.write_text(
        "tables:\n"
        "  - source: public.order_lines\n"
        "    primary_key: [order_id, line]\n"
        "    created_at: created_at\n"
        "    updated_at: updated_at\n"
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "PG_URL": pg_url,
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}?database=analytics",
        "SYNC_CONFIG": str(sync_config),
        "DAGSTER_HOME": str(home),
        "VIRTUAL_ENV": sys.prefix,
    }

    completed = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["order_lines", "initial_load"])
        )
        assert event.asset_materialization.metadata["rows_written"].value == 1000


def test_a_second_writer_of_a_table_waits_for_the_first(sync_env, customers, tmp_path):
    """With the pool limit the deployment sets (1), a run waits while another holds the table:
    its step is seen pending on the pool, and nothing is written until the slot is freed."""
    insert_customers(customers, 10)
    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    pool = "clickhouse_customers"
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(pool)
        held = storage.claim_concurrency_slot(pool, "other-run", "sync_customers")
        assert held.is_claimed
        results = []
        waiting = threading.Thread(target=lambda: results.append(run_sync(instance)))
        waiting.start()

        pending = wait_until(
            lambda: storage.get_concurrency_info(pool).pending_run_ids,
            60,
            "step pending on the pool",
        )
        time.sleep(1)  # had the pool no hold on the step, the run would write now
        assert waiting.is_alive() and not results
        initial_load = dg.AssetKey(["customers", "initial_load"])
        assert instance.get_latest_materialization_event(initial_load) is None

        storage.free_concurrency_slots_for_run("other-run")
        waiting.join(timeout=120)

    assert results and results[0].success
    assert results[0].run_id in pending


def test_a_lost_connection_is_retried_and_the_step_then_succeeds(sync_env, customers, monkeypatch):
    """The first connection to Postgres fails as an unreachable server does (ConnectionFailed):
    the retry policy runs the step again, which then syncs every row. (A configuration error
    is not retried: test_sync.py.)"""
    monkeypatch.setattr(assets, "SYNC_RETRY_POLICY", dg.RetryPolicy(max_retries=3, delay=0.1))
    open_connection, attempts = resources.open_connection, []

    def lost_once(url: str):
        attempts.append(url)
        if len(attempts) == 1:
            raise ConnectionFailed("cannot connect to Postgres (injected by the test)")
        return open_connection(url)

    monkeypatch.setattr(resources, "open_connection", lost_once)
    insert_customers(customers, 10)
    result = run_sync(dg.DagsterInstance.ephemeral())

    assert result.success
    retried = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert [e.step_key for e in retried] == ["sync_customers"]
    assert step_metadata(result)["initial_load"]["rows_written"] == 10
