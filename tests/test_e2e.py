"""End to end, with the real processes: `dagster-daemon run` starts the runs, `dagster-webserver`
shows them, and Dagster's own storage is Postgres, as on Kubernetes.

The daemon, the webserver and their runs use a chDB directory of their own. chDB allows one
process per directory (and one directory per process), so this test process never opens it:
it reads what reached ClickHouse from the runs' records (the row-count parity check counts
ClickHouse with FINAL).
"""

import os
import shutil
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
import pytest
from conftest import unique_name
from e2e_support import (
    JOB,
    SCHEDULE,
    SENSOR,
    STARTED_BY_TAG,
    STEPS,
    SyncRun,
    assert_lists_the_sync,
    automation_states,
    chromium,
    failures,
    finished_runs,
    is_idle,
    only,
)
from waiting import free_port, wait_until

from demo.seed import create_customers, insert_customers
from demo.stack import (
    LOCATION_NAME,
    Deployment,
    create_database,
    dagster_storage_url,
    graphql,
    sync_environment,
    write_instance,
)
from user_code.sync.postgres import connect, count_rows

pytestmark = pytest.mark.e2e

SEED_ROWS = 1_000
TABLE = "customers"
# How often each trigger is evaluated: the sensor every 30 s, the test's schedule every minute.
# A trigger asks for a run within three of its intervals, however busy the machine.
TRIGGER_INTERVAL_S = {SENSOR: 30, SCHEDULE: 60}
RUN_TIMEOUT = 300  # for a requested run to finish, once it exists
ASSET_GRAPH = f"/locations/{LOCATION_NAME}/asset-groups/public/lineage"


@pytest.fixture(scope="module")
def source_url(postgres_server) -> str:
    """A source database with the demo `customers` table, seeded."""
    url = create_database(postgres_server.get_uri(), unique_name("e2e_source"))
    with connect(url) as connection:
        create_customers(connection)
        insert_customers(connection, SEED_ROWS)
    return url


@pytest.fixture(scope="module")
def source(source_url: str) -> Iterator[adbc.Connection]:
    with connect(source_url) as connection:
        yield connection


@pytest.fixture(scope="module")
def deployment(postgres_server, source_url: str, tmp_path_factory) -> Iterator[Deployment]:
    """Daemon and webserver on a fresh DAGSTER_HOME whose storage is a Postgres database."""
    root = tmp_path_factory.mktemp("e2e")
    dagster_home = root / "dagster_home"
    storage = create_database(postgres_server.get_uri(), unique_name("e2e_dagster"))
    write_instance(dagster_home, dagster_storage_url(storage))
    env = sync_environment(
        pg_url=source_url,
        clickhouse_url=f"chdb://{root / 'clickhouse'}?database=analytics",
        dagster_home=dagster_home,
        SYNC_SCHEDULE_CRON="* * * * *",
    )
    env.pop("SYNC_CONFIG", None)
    deployment = Deployment(env, port=free_port(), log_dir=root)
    try:
        deployment.start_separately()
        deployment.wait_until_loaded()
        yield deployment
    finally:
        assert deployment.stop() == [], "processes had to be stopped by force"
        assert not deployment.stray_processes(), "processes outlived the deployment"


@pytest.fixture(scope="module")
def instance(deployment: Deployment) -> Iterator[dg.DagsterInstance]:
    """The deployment's instance, read from this process: runs, events, check results."""
    instance = dg.DagsterInstance.from_config(str(deployment.dagster_home))
    yield instance
    instance.dispose()


def wait_until_synced(deployment: Deployment, instance: dg.DagsterInstance) -> None:
    """At least one successful sync, and no run queued or in flight."""
    wait_until(
        lambda: finished_runs(instance) and is_idle(instance),
        timeout=TRIGGER_INTERVAL_S[SCHEDULE] * 3 + RUN_TIMEOUT,
        what="successful sync with the queue empty",
        context=deployment.logs,
    )


def first_run(
    deployment: Deployment, instance: dg.DagsterInstance, since: datetime, started_by: str
) -> SyncRun:
    """The first run `started_by` asked for since `since`, once it has finished: two waits on
    two events, the request (bounded by the trigger's interval) and the run's end."""
    requested = dg.RunsFilter(
        job_name=JOB, created_after=since, tags={STARTED_BY_TAG[started_by]: started_by}
    )
    runs = wait_until(
        lambda: instance.get_runs(requested),
        timeout=TRIGGER_INTERVAL_S[started_by] * 3,
        what=f"run requested by {started_by}",
        context=deployment.logs,
    )
    run_id = runs[-1].run_id  # the oldest
    run = wait_until(
        lambda: (found := instance.get_run_by_id(run_id)) and found.is_finished and found,
        timeout=RUN_TIMEOUT,
        what=f"end of run {run_id}",
        context=deployment.logs,
    )
    assert run.status == dg.DagsterRunStatus.SUCCESS, failures(instance, since)
    return SyncRun.load(instance, run)


def assert_synced(run: SyncRun, new_rows: int, source: adbc.Connection) -> None:
    """The run wrote exactly the new rows, its window's rows were equal on both sides, and the
    table's row count, counted on from the initial load, equals the source's (no row of the
    source is ever deleted here)."""
    assert "initial_load" not in run.steps, "the table was loaded again from scratch"
    assert run.steps["new_records"]["rows_written"] == new_rows
    parity = run.checks["window_parity"]
    assert parity["passed"], parity
    assert parity["clickhouse_rows"] >= new_rows
    assert run.steps["updates"]["dagster/row_count"] == count_rows(source, f"public.{TABLE}")


def test_webserver_lists_the_sync(deployment: Deployment):
    assert_lists_the_sync(deployment.url, LOCATION_NAME, schedule_cron="* * * * *")


@pytest.mark.parametrize(("trigger", "rows"), [(SENSOR, 100), (SCHEDULE, 50)])
def test_daemon_syncs_inserted_rows(deployment, instance, source, trigger, rows):
    """The sensor, then the per-minute schedule, each alone: the daemon's run syncs new rows."""
    with only(deployment.url, trigger):
        wait_until_synced(deployment, instance)
        inserted_at = datetime.now(UTC)
        insert_customers(source, rows)
        run = first_run(deployment, instance, inserted_at, started_by=trigger)
    assert_synced(run, new_rows=rows, source=source)


_LATEST_MATERIALIZATION = """
query ($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
          ... on TableSchemaMetadataEntry { schema { columns { name type description } } }
        }
      }
    }
  }
}
"""


def test_asset_page_shows_row_count_table_name_and_column_schema(deployment, instance, source):
    """What the asset page of `customers/updates` shows from Dagster's standard metadata."""
    wait_until_synced(deployment, instance)
    variables = {"path": [TABLE, "updates"]}
    asset = graphql(deployment.url, _LATEST_MATERIALIZATION, variables)["assetOrError"]
    (materialization,) = asset["assetMaterializations"]
    entries = {entry["label"]: entry for entry in materialization["metadataEntries"]}
    assert entries["dagster/row_count"]["intValue"] == count_rows(source, f"public.{TABLE}")
    assert entries["dagster/table_name"]["text"] == f"analytics.{TABLE}"
    columns = {c["name"]: c for c in entries["dagster/column_schema"]["schema"]["columns"]}
    assert columns["id"] == {"name": "id", "type": "Int64", "description": "Postgres: bigint"}
    assert columns["balance"]["description"] == "Postgres: numeric(12,2)"
    assert columns["_is_deleted"]["type"] == "UInt8"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_asset_graph_renders_in_the_browser(deployment, instance, tmp_path: Path):
    """The page a user opens first shows the synced assets. `E2E_SCREENSHOT=docs/asset-graph.png`
    keeps the screenshot, e.g. for the README."""
    wait_until_synced(deployment, instance)
    page = deployment.url + ASSET_GRAPH

    dom = chromium(page, tmp_path / "profile", "--dump-dom").stdout
    for step in STEPS:
        assert f">{step}<" in dom, f"asset {step} not rendered"
    assert f"/assets/{TABLE}/" in dom

    screenshot = tmp_path / "asset-graph.png"
    for _ in range(3):  # on a busy machine the graph may still be loading: look again
        chromium(page, tmp_path / "profile", f"--screenshot={screenshot}")
        if screenshot.stat().st_size > 50_000:
            break
    assert _png_size(screenshot) == (1600, 1000)
    assert screenshot.stat().st_size > 50_000, "the screenshot looks blank"
    if keep := os.environ.get("E2E_SCREENSHOT"):
        shutil.copyfile(screenshot, keep)


def test_watermark_survives_a_restart(deployment, instance, source):
    """Stop daemon and webserver, start them again: the watermark stored in Dagster's Postgres
    storage is found, so only the rows inserted since are written."""
    with only(deployment.url, SENSOR):
        wait_until_synced(deployment, instance)
        assert deployment.stop() == [], "processes had to be stopped by force"
        assert not deployment.stray_processes(), "processes outlived the stop"

        restarted_at = datetime.now(UTC)
        deployment.start_separately()
        deployment.wait_until_loaded()
        assert automation_states(deployment.url)[SCHEDULE]["status"] == "STOPPED"
        insert_customers(source, 30)
        run = first_run(deployment, instance, restarted_at, started_by=SENSOR)
    assert_synced(run, new_rows=30, source=source)


def test_dg_dev_serves_the_project(source_url, tmp_path: Path):
    """`make dev`'s command: `dg dev` loads the project pyproject.toml declares, under the
    location name the cluster uses, with no superseded-command warning, and stops cleanly."""
    dagster_home = tmp_path / "dagster_home"
    write_instance(dagster_home)
    env = sync_environment(
        source_url, f"chdb://{tmp_path / 'clickhouse'}?database=analytics", dagster_home
    )
    env.pop("SYNC_CONFIG", None)
    deployment = Deployment(env, port=free_port(), log_dir=tmp_path)
    try:
        deployment.start_dev()
        deployment.wait_until_loaded()
        assert_lists_the_sync(deployment.url, LOCATION_NAME, schedule_cron="*/5 * * * *")
    finally:
        stopped_by_force = deployment.stop()
    assert stopped_by_force == [], "dg dev left processes to be stopped by force"
    assert not deployment.stray_processes(), "processes outlived dg dev"
    logs = (tmp_path / "dg-dev.log").read_text()
    assert "Serving dagster-webserver" in logs
    assert "superseded" not in logs.lower(), logs
