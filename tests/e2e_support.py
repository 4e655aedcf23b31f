"""Helpers of the end-to-end tests: what the daemon's runs did, automation on and off through
the webserver's GraphQL, and headless Chromium."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg

from demo.stack import LOCATION_NAME, REPOSITORY_NAME, graphql

JOB = "postgres_to_clickhouse"
SCHEDULE = f"{JOB}_schedule"
SENSOR = f"{JOB}_sensor"
STEPS = ("initial_load", "new_records", "updates")
CHECKS = ("window_parity", "freshness")
STARTED_BY_TAG = {SENSOR: "dagster/sensor_name", SCHEDULE: "dagster/schedule_name"}

_NOT_FINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class SyncRun:
    """One run of the sync job as the instance recorded it: what each step and check reported."""

    run: dg.DagsterRun
    steps: dict[str, dict]  # {"new_records": {"rows_written": 100, ...}, ...}
    checks: dict[str, dict]  # {"window_parity": {"passed": True, "clickhouse_rows": ...}}

    @classmethod
    def load(cls, instance: dg.DagsterInstance, run: dg.DagsterRun) -> "SyncRun":
        steps = {}
        for entry in instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ):
            materialization = entry.asset_materialization
            metadata = {name: value.value for name, value in materialization.metadata.items()}
            steps[materialization.asset_key.path[-1]] = metadata
        checks = {}
        for entry in instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            evaluation = entry.dagster_event.asset_check_evaluation_data
            metadata = {name: value.value for name, value in evaluation.metadata.items()}
            checks[evaluation.check_name] = {"passed": evaluation.passed, **metadata}
        return cls(run, steps, checks)


def failures(instance: dg.DagsterInstance, since: datetime | None = None) -> list[str]:
    """Why the runs created since `since` (default: ever) failed, in Dagster's words."""
    failed = instance.get_runs(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], created_after=since)
    )
    messages = []
    for run in failed:
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            error = entry.dagster_event.step_failure_data.error
            messages.append(f"run {run.run_id}: {error.message if error else entry.message}")
    return messages


def finished_runs(
    instance: dg.DagsterInstance, since: datetime | None = None, started_by: str | None = None
) -> list[SyncRun]:
    """Successful runs of the sync job created since `since` (default: ever), oldest first,
    started by the schedule or sensor `started_by` if given. A failed run fails the test at
    once, with its error."""
    if messages := failures(instance, since):
        raise AssertionError("a sync run failed:\n" + "\n".join(messages))
    tags = {STARTED_BY_TAG[started_by]: started_by} if started_by else {}
    runs = instance.get_runs(
        dg.RunsFilter(
            job_name=JOB,
            statuses=[dg.DagsterRunStatus.SUCCESS],
            created_after=since,
            tags=tags,
        )
    )
    return [SyncRun.load(instance, run) for run in reversed(runs)]


def is_idle(instance: dg.DagsterInstance) -> bool:
    """No run waiting in the queue or in flight."""
    return not instance.get_runs(dg.RunsFilter(statuses=_NOT_FINISHED))


_STATES = """
query States($repository: RepositorySelector!) {
  repositoryOrError(repositorySelector: $repository) {
    ... on Repository {
      schedules { name scheduleState { id status } }
      sensors { name sensorState { id status } }
    }
  }
}
"""
_RESULT = "{ __typename ... on PythonError { message } }"
_STOP = {
    SCHEDULE: f"mutation Stop($id: String!) {{ stopRunningSchedule(id: $id) {_RESULT} }}",
    SENSOR: f"mutation Stop($id: String!) {{ stopSensor(id: $id) {_RESULT} }}",
}
_RESET = {
    SCHEDULE: "mutation Reset($selector: ScheduleSelector!) "
    f"{{ resetSchedule(scheduleSelector: $selector) {_RESULT} }}",
    SENSOR: "mutation Reset($selector: SensorSelector!) "
    f"{{ resetSensor(sensorSelector: $selector) {_RESULT} }}",
}
_REPOSITORY = {"repositoryName": REPOSITORY_NAME, "repositoryLocationName": LOCATION_NAME}


def automation_states(url: str) -> dict[str, dict]:
    """{name: {"id": ..., "status": "RUNNING" | "STOPPED"}} of the schedules and sensors."""
    repository = graphql(url, _STATES, {"repository": _REPOSITORY})["repositoryOrError"]
    states = {s["name"]: s["scheduleState"] for s in repository["schedules"]}
    return states | {s["name"]: s["sensorState"] for s in repository["sensors"]}


def _mutate(url: str, query: str, variables: dict) -> None:
    (result,) = graphql(url, query, variables).values()
    assert result["__typename"] != "PythonError", result["message"]


@contextmanager
def only(url: str, automation: str) -> Iterator[None]:
    """Only `automation` (the sync's schedule or its sensor) starts runs: the other one is
    stopped, as a user would in the UI, then reset to its default (running)."""
    (other,) = {SCHEDULE, SENSOR} - {automation}
    states = automation_states(url)
    assert states[automation]["status"] == "RUNNING", states
    _mutate(url, _STOP[other], {"id": states[other]["id"]})
    kind = "scheduleName" if other == SCHEDULE else "sensorName"
    try:
        yield
    finally:
        _mutate(url, _RESET[other], {"selector": {**_REPOSITORY, kind: other}})


_WORKSPACE = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories {
              jobs { name }
              schedules { name cronSchedule scheduleState { status } }
              sensors { name sensorState { status } }
              assetNodes {
                assetKey { path }
                kinds
                assetChecksOrError { ... on AssetChecks { checks { name } } }
              }
            }
          }
        }
      }
    }
  }
}
"""


def assert_lists_the_sync(url: str, location_name: str, schedule_cron: str) -> None:
    """The webserver lists the location, loaded, with the sync's job, the demo table's assets
    and checks, and the schedule and the sensor, both running."""
    entries = graphql(url, _WORKSPACE)["workspaceOrError"]["locationEntries"]
    (entry,) = [e for e in entries if e["name"] == location_name]
    location = entry["locationOrLoadError"]
    assert entry["loadStatus"] == "LOADED"
    assert location["__typename"] == "RepositoryLocation", location.get("message")
    (repository,) = location["repositories"]

    assert JOB in {job["name"] for job in repository["jobs"]}
    assets = {"/".join(node["assetKey"]["path"]): node for node in repository["assetNodes"]}
    for step in STEPS:
        assert {"postgres", "clickhouse"} <= set(assets[f"customers/{step}"]["kinds"])
    checks = assets["customers/updates"]["assetChecksOrError"]["checks"]
    assert set(CHECKS) <= {check["name"] for check in checks}
    schedules = {s["name"]: s for s in repository["schedules"]}
    assert schedules[SCHEDULE]["cronSchedule"] == schedule_cron
    assert schedules[SCHEDULE]["scheduleState"]["status"] == "RUNNING"
    sensors = {s["name"]: s for s in repository["sensors"]}
    assert sensors[SENSOR]["sensorState"]["status"] == "RUNNING"


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    # The UI is a JavaScript app that loads its data over GraphQL: let it settle first.
    "--virtual-time-budget=30000",
]


def chromium(url: str, profile: Path, action: str) -> subprocess.CompletedProcess:
    """Open `url` in headless Chromium with a fresh profile; `action` is `--dump-dom` or
    `--screenshot=<path>`."""
    executable = shutil.which("chromium")
    assert executable, "chromium is not installed: `make browser` installs it (apt-get)"
    return subprocess.run(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", action, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
