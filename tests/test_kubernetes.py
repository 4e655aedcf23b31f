"""The release on a real Kubernetes: 1.20.2 built from Debian's source, one node, dockershim.

The cluster (tests/cluster/node.py) comes up in a network namespace of the test's own, and our
release is installed as `skaffold dev` installs it (tests/cluster/release.py). Then, through
the real API server, kubelet, scheduler, controllers, kube-proxy and DNS: every Deployment and
StatefulSet becomes Ready; the webserver loads the code location (GraphQL through `kubectl
port-forward`); the daemon's sensor starts a run, and the K8sRunLauncher creates its Job as
the daemon's own ServiceAccount, under RBAC; the run pod, our image as uid 1000, copies the demo
rows exactly; a second run takes new and updated rows; a run pod killed mid-run is retried as
the chart configures.

What cannot exist here is swapped, and only that:
- images no registry serves: stand-ins under the names the manifests give (cluster/images.py:
  Postgres from Debian's PostgreSQL 15, the webserver's and daemon's image from our image's
  dagster packages, busybox from Debian, the pod sandbox from the Kubernetes tree);
- ClickHouse: no server exists here. Run pods write to chDB in a directory of the node (a
  hostPath volume added to the run launcher), which the test reads back;
- storage: PersistentVolumes on the node's directories, for want of kind's local-path;
- cluster DNS: dnsmasq serving the API's Service names, for want of a CoreDNS image.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from chart_support import USER_CODE_IMAGE
from cluster.images import load_images
from cluster.node import Cluster, missing_prerequisites, single_node_cluster
from cluster.release import as_yaml, chdb_url, release_objects
from docker_support import DockerEngine, base_image
from e2e_support import JOB, SENSOR, assert_lists_the_sync, only
from k8s_support import (
    DOCKERFILE,
    NAMESPACE,
    Objects,
    helm_release,
    manifests,
    user_deployment,
)
from prerequisites import required_or_skipped
from waiting import wait_until

from demo.stack import LOCATION_NAME, graphql
from user_code.config import load_sync_config
from user_code.plan import load_plan
from user_code.resources import ClickHouseResource
from user_code.sync.compare import compare_content
from user_code.sync.postgres import connect
from user_code.sync.table import Session, read_table

RELEASE = helm_release()["name"]
DAEMON_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
WEBSERVER = f"{RELEASE}-dagster-webserver"
CODE_SERVER = f"{RELEASE}-dagster-user-deployments-{LOCATION_NAME}"
SOURCE = "postgres-source"
FORWARDED_WEBSERVER_PORT = 3000
FORWARDED_SOURCE_PORT = 15432
SOURCE_ROWS = 5000  # customers and events seeded by k8s/postgres-source.yaml's init script
EVENT_ROWS = 2000
READY_TIMEOUT_S = 420
RUN_TIMEOUT_S = 300
# Run monitoring polls every 120 s (the chart's default), then the retry is queued.
RETRY_TIMEOUT_S = 420
RUN_USER = 1000
ENDED = {"SUCCESS", "FAILURE", "CANCELED"}

_RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""

_LOGS = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events { ... on MessageEvent { message } ... on ErrorEvent { error { message } } }
    }
  }
}
"""


@dataclass
class Release:
    cluster: Cluster
    objects: Objects
    chdb_dir: Path  # the node's directory the run pods write chDB to
    webserver_url: str  # forwarded, on the namespace's loopback
    source_url: str  # the source database as its superuser, forwarded

    def runs(self) -> list[dict[str, Any]]:
        """The sync job's runs, newest first, each with its tags as a dict."""
        filter_ = {"pipelineName": JOB}
        found = graphql(self.webserver_url, _RUNS, {"filter": filter_})["runsOrError"]
        return [
            {**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in found["results"]
        ]

    def story(self, run: dict[str, Any]) -> str:
        """The run's status and its last events, with their errors."""
        logs = graphql(self.webserver_url, _LOGS, {"runId": run["runId"]})["logsForRun"]
        lines = [f"run {run['runId']}: {run['status']}"]
        for event in logs.get("events", [])[-8:]:
            lines.append(event.get("message", ""))
            if event.get("error"):
                lines.append(event["error"]["message"])
        return "\n".join(lines)

    def run_pods(self, run_id: str) -> list[dict[str, Any]]:
        return self.cluster.get("pods", "-n", NAMESPACE, "-l", f"dagster/run-id={run_id}")["items"]


def _forwarded_url(secret_url: str, user: str, password: str, port: int) -> str:
    parts = urlsplit(secret_url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@127.0.0.1:{port}"))


@pytest.fixture(scope="module")
def release(docker: DockerEngine, image_with_chdb: str, tmp_path_factory) -> Iterator[Release]:
    if os.geteuid() != 0:
        required_or_skipped(
            "the Kubernetes test runs as root: it makes a network namespace and runs a kubelet"
        )
    if missing := missing_prerequisites():
        required_or_skipped(f"missing for the Kubernetes test: {', '.join(missing)} (as root, "
                            "`make test` installs them with apt-get)")  # fmt: skip
    state = tmp_path_factory.mktemp("kubernetes")
    with single_node_cluster(docker, state / "node") as cluster:
        load_images(
            docker, cluster.pause_binary, base_image(DOCKERFILE), image_with_chdb, USER_CODE_IMAGE
        )
        objects = release_objects(state / "node-dirs")
        cluster.kubectl("apply", "-f", "-", input=as_yaml(objects))
        wait_until(
            lambda: _all_ready(cluster, objects), READY_TIMEOUT_S,
            "readiness of every Deployment and StatefulSet",
            lambda: _pods_and_events(cluster) + cluster.log_tails(),
        )  # fmt: skip
        cluster.forward(f"service/{WEBSERVER}", FORWARDED_WEBSERVER_PORT, 80)
        cluster.forward(f"service/{SOURCE}", FORWARDED_SOURCE_PORT, 5432)
        server = manifests().values("Secret", "source-postgres-server")
        source_url = _forwarded_url(
            manifests().values("Secret", "source-postgres")["PG_URL"],
            "postgres", server["POSTGRES_PASSWORD"], FORWARDED_SOURCE_PORT,
        )  # fmt: skip
        webserver_url = f"http://127.0.0.1:{FORWARDED_WEBSERVER_PORT}"
        with cluster.namespace.entered():
            wait_until(lambda: _answers(webserver_url), 60, "the forwarded webserver")
            yield Release(cluster, objects, state / "node-dirs" / "chdb", webserver_url, source_url)


def _answers(url: str) -> bool:
    try:
        graphql(url, "{ version }")
    except OSError:
        return False
    return True


def _workloads(cluster: Cluster) -> dict[str, dict[str, Any]]:
    listed = cluster.get("deployments,statefulsets", "-n", NAMESPACE)["items"]
    return {f"{w['kind']}/{w['metadata']['name']}": w for w in listed}


def _all_ready(cluster: Cluster, objects: Objects) -> bool:
    expected = {f"{w['kind']}/{w['metadata']['name']}" for w in objects.workloads()}
    workloads = _workloads(cluster)
    assert expected <= set(workloads), f"not created: {expected - set(workloads)}"
    return all(
        workloads[name]["status"].get("readyReplicas", 0) == workloads[name]["spec"]["replicas"]
        for name in expected
    )


def _pods_and_events(cluster: Cluster) -> str:
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
    events = cluster.kubectl("get", "events", "-n", NAMESPACE, check=False).stdout
    return f"{pods}\n{events[-3000:]}"


def test_every_deployment_and_statefulset_becomes_ready(release):
    workloads = _workloads(release.cluster)
    expected = {f"{w['kind']}/{w['metadata']['name']}" for w in release.objects.workloads()}
    assert set(workloads) == expected
    assert expected == {
        "Deployment/dagster-daemon", f"Deployment/{WEBSERVER}", f"Deployment/{CODE_SERVER}",
        "StatefulSet/dagster-storage-postgres", f"StatefulSet/{SOURCE}",
    }  # fmt: skip
    for name, workload in workloads.items():
        assert workload["status"]["readyReplicas"] == workload["spec"]["replicas"] == 1, name


def test_webserver_loads_the_code_location(release):
    cron = {env["name"]: env["value"] for env in user_deployment()["env"]}["SYNC_SCHEDULE_CRON"]
    assert_lists_the_sync(release.webserver_url, LOCATION_NAME, cron)


def _wait_for_run(release: Release, what: str, matches, timeout: float = RUN_TIMEOUT_S) -> dict:
    """The newest run `matches` picks, once it has ended."""

    def ended() -> dict | None:
        found = [run for run in release.runs() if matches(run)]
        if found and found[0]["status"] in ENDED:
            return found[0]
        return None

    return wait_until(
        ended, timeout, what, lambda: str(release.runs()) + _pods_and_events(release.cluster)
    )


def _sensor_run(run: dict) -> bool:
    return run["tags"].get("dagster/sensor_name") == SENSOR


@pytest.fixture(scope="module")
def first_run(release) -> Iterator[dict]:
    """The sensor's first run: every table with cursors is stale, so all of them are loaded.
    Only the sensor starts runs in this module (the schedule is stopped, as a user would in
    the UI), so the test knows which run it waits for."""
    with only(release.webserver_url, SENSOR):
        run = _wait_for_run(release, "first run started by the sensor", _sensor_run)
        yield run


def test_sensor_run_is_a_job_the_daemon_account_creates(release, first_run):
    assert first_run["status"] == "SUCCESS", release.story(first_run)
    job = f"dagster-run-{first_run['runId']}"
    (created,) = [
        event
        for event in release.cluster.audit_events()
        if event["verb"] == "create" and event["objectRef"].get("name") == job
    ]
    assert created["user"]["username"] == DAEMON_ACCOUNT
    assert created["responseStatus"]["code"] == 201
    assert "RBAC: allowed" in created["annotations"]["authorization.k8s.io/reason"]
    # The chart's Role, as the API server enforces it: runs, yes; the Secrets, no.
    permissions = [("create", "jobs.batch", "yes"), ("delete", "jobs.batch", "yes"),
                   ("get", "pods/log", "yes"), ("get", "secrets", "no")]  # fmt: skip
    for verb, resource, answer in permissions:
        can = release.cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", NAMESPACE, f"--as={DAEMON_ACCOUNT}", check=False
        )
        assert can.stdout.strip() == answer, (verb, resource, can.stdout, can.stderr)


def test_run_pod_of_our_image_as_its_user_copies_the_demo_rows(release, first_run):
    _wait_until_idle(release)
    (pod,) = release.run_pods(first_run["runId"])
    (container,) = pod["spec"]["containers"]
    assert container["image"] == USER_CODE_IMAGE
    assert pod["spec"]["securityContext"]["runAsUser"] == RUN_USER
    assert pod["status"]["phase"] == "Succeeded"
    written = [path for path in release.chdb_dir.rglob("*") if path.is_file()]
    assert written and {path.stat().st_uid for path in written} == {RUN_USER}
    assert _compare_synced_tables(release) == {"customers": SOURCE_ROWS, "events": EVENT_ROWS}


def _wait_until_idle(release: Release) -> None:
    """No run in flight and every run pod ended: nothing writes the chDB directory."""

    def idle() -> bool:
        if any(run["status"] not in ENDED for run in release.runs()):
            return False
        pods = release.cluster.get("pods", "-n", NAMESPACE, "-l", "dagster/run-id")["items"]
        return all(pod["status"]["phase"] in {"Succeeded", "Failed"} for pod in pods)

    wait_until(idle, RUN_TIMEOUT_S, "no run in flight", lambda: str(release.runs()))


def _compare_synced_tables(release: Release) -> dict[str, int]:
    """Every table the sensor syncs (those with cursors: a table replaced whole is the
    schedule's, stopped here), every column of every row, Postgres against what the run pods
    wrote, each engine hashing its own values; returns the rows per table."""
    _wait_until_idle(release)
    copy = release.chdb_dir.parent / f"chdb-read-{time.monotonic_ns()}"
    # A copy, with its relative links: chDB lets one process at a time open a directory.
    shutil.copytree(release.chdb_dir, copy, symlinks=True)
    config = load_sync_config(str(_sync_config_file(release.chdb_dir.parent)))
    plan = load_plan(config, release.source_url)
    clickhouse = ClickHouseResource(url=chdb_url(copy))
    rows = {}
    with connect(release.source_url) as postgres, clickhouse.get_client() as client:
        for spec in (spec for spec in plan.tables if spec.cursors):
            table = read_table(postgres, spec, clickhouse.database)
            comparison = compare_content(Session(postgres, client), table)
            assert comparison.equal, (spec.target, comparison)
            rows[spec.target] = comparison.clickhouse_rows
    shutil.rmtree(copy)
    return rows


def _sync_config_file(directory: Path) -> Path:
    path = directory / "sync.yaml"
    path.write_text(manifests().values("ConfigMap", "sync-config")["sync.yaml"])
    return path


NEW_ROWS = 100
UPDATED_ROWS = 50


@contextmanager
def _source(release: Release) -> Iterator[Any]:
    """A connection to the source database as its superuser, each statement committed."""
    connection = psycopg2.connect(release.source_url)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def test_a_second_run_takes_new_and_updated_rows(release, first_run):
    before = {run["runId"] for run in release.runs()}
    with _source(release) as source, source.cursor() as cursor:
        cursor.execute(
            "INSERT INTO public.customers (name, created_by, updated_by) "
            "SELECT 'New customer ' || g, 'test', 'test' FROM generate_series(1, %s) AS g",
            (NEW_ROWS,),
        )
        cursor.execute(
            "UPDATE public.customers SET name = name || ' (renamed)', updated_by = 'test' "
            "WHERE id <= %s",
            (UPDATED_ROWS,),
        )
    run = _wait_for_run(
        release, "a second run started by the sensor",
        lambda run: _sensor_run(run) and run["runId"] not in before,
    )  # fmt: skip
    assert run["status"] == "SUCCESS", release.story(run)
    # Every column of every row equal: the renamed customers included.
    assert _compare_synced_tables(release)["customers"] == SOURCE_ROWS + NEW_ROWS


def test_a_run_pod_killed_mid_run_is_retried(release, first_run):
    """A run whose pod dies (SIGKILL to its container, as the OOM killer or a lost node would)
    while it reads the source: run monitoring marks it failed and the daemon retries it
    (runRetries in helm/values.yaml), and the retry completes the sync. The run is held in its
    read by a lock the test takes on the source table, so the kill lands mid-run."""
    before = {run["runId"] for run in release.runs()}
    with _source(release) as source, source.cursor() as cursor:
        cursor.execute(
            "INSERT INTO public.customers (name, created_by, updated_by) VALUES ('Late', 't', 't')"
        )
    killed = wait_until(
        lambda: _new_sensor_run(release, before), RUN_TIMEOUT_S, "a run started by the sensor"
    )
    with _source(release) as locker, locker.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("LOCK TABLE public.customers IN ACCESS EXCLUSIVE MODE")
        pod = wait_until(
            lambda: _waiting_on_the_lock(release, killed["runId"]), RUN_TIMEOUT_S,
            "the run pod waiting on the source table", lambda: _pods_and_events(release.cluster),
        )  # fmt: skip
        container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("docker://")
        release.cluster.docker.run("kill", container)
        cursor.execute("ROLLBACK")
    failed = _wait_for_run(
        release, "the killed run marked failed", lambda run: run["runId"] == killed["runId"],
        RETRY_TIMEOUT_S,
    )  # fmt: skip
    assert failed["status"] == "FAILURE", release.story(failed)
    retry = _wait_for_run(
        release, "the killed run retried",
        lambda run: run["tags"].get("dagster/parent_run_id") == killed["runId"], RETRY_TIMEOUT_S,
    )  # fmt: skip
    assert retry["status"] == "SUCCESS", release.story(retry)
    assert retry["tags"]["dagster/retry_number"] == "1"
    assert _compare_synced_tables(release)["customers"] == SOURCE_ROWS + NEW_ROWS + 1


def _new_sensor_run(release: Release, before: set[str]) -> dict[str, Any] | None:
    return next((r for r in release.runs() if _sensor_run(r) and r["runId"] not in before), None)


def _waiting_on_the_lock(release: Release, run_id: str) -> dict[str, Any] | None:
    """The run's pod, once it runs and its connection to the source waits on a lock."""
    pods = release.run_pods(run_id)
    if not pods or pods[0]["status"]["phase"] != "Running":
        return None
    with _source(release) as source, source.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND host(client_addr) = %s",
            (pods[0]["status"]["podIP"],),
        )
        (waiting,) = cursor.fetchone()
    return pods[0] if waiting else None
