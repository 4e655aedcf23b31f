"""The rendered pods as local processes: code server, webserver, daemon, and a run pod.

Each process gets exactly its rendered container's command, arguments and environment (env
and envFrom resolved from the rendered ConfigMaps and k8s/'s Secrets), and the files mounted
from ConfigMaps at their mount paths (below a directory of its own, see local_cluster). Hosts
are Service names turned into loopback addresses. Two things differ from the cluster, both
for want of a server here: ClickHouse is chDB (CLICKHOUSE_URL becomes a chdb:// URL), and the
run launcher hands its Job to a recorder instead of the Kubernetes API, which the test then
runs as the pod would.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import kubernetes
import kubernetes_validate
import psycopg2
import pytest
import yaml
from chart_support import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    USER_CODE_IMAGE,
    Objects,
    cluster,
    unresolved_references,
)
from clickhouse_connect import get_client
from cluster_postgres import PSQL
from dagster._config import process_config
from dagster._core.launcher import LaunchRunContext
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from dagster_k8s import K8sRunLauncher
from docker_support import UNPRIVILEGED, privileges
from e2e_support import JOB, SENSOR, assert_lists_the_sync
from k8s_support import (
    NAMESPACE,
    helm_release,
    k8s_run_launcher_values,
    kubernetes_version,
    resolved_env,
    secret_data,
    values,
)
from local_cluster import (
    ANALYTICS,
    CODE_SERVER,
    CODE_SERVICE,
    CONTAINER_CHDB_DIR,
    INSTANCE_CONFIG_MAP,
    RUN_TIMEOUT_S,
    SOURCE_ROWS,
    LocalPod,
    docker_run_options,
    local_pod,
    localize,
    pod_instance,
    security_context,
    wait_until_ready,
)
from waiting import wait_until

from demo.stack import (
    REPOSITORY_NAME,
    Deployment,
    Service,
    graphql,
    start_service,
    stop_services,
)
from user_code.config import load_sync_config
from user_code.definitions import PLAN_STATE_KEY
from user_code.plan import Plan, load_plan
from user_code.sync.errors import SyncError

RELEASE = helm_release()["name"]
WEBSERVER = (f"{RELEASE}-dagster-webserver", f"{RELEASE}-dagster-webserver")
DAEMON = (f"{RELEASE}-daemon", None)
SENSOR_TIMEOUT_S = 90  # the sensor ticks every 30 s


@dataclass
class LocalCluster:
    objects: Objects  # localized: loopback hosts, chdb:// CLICKHOUSE_URL
    pods: dict[str, LocalPod]
    loopback: dict[str, str]
    chdb_url: str
    webserver_url: str


def wait_until_serving(pod: LocalPod, address: str, service: Service) -> None:
    """Poll the pod's readiness probe; it asks localhost, which is `address` here."""
    assert pod.readiness, "the code server has no readiness probe"
    probe = [*pod.readiness, "-h", address]
    wait_until_ready(
        service.name,
        lambda: subprocess.run(probe, env=pod.env, capture_output=True, timeout=60).returncode == 0,
        lambda: service.process.poll() is None,
        service.log_tail,
    )


def start_pod(
    name: str, service: str | None, local: Objects, loopback: dict, root: Path, logs: Path
) -> tuple[LocalPod, Service]:
    pod_spec = local.get("Deployment", name)["spec"]["template"]["spec"]
    pod = local_pod(pod_spec, local, root / name, loopback.get(service))
    return pod, start_service(name, pod.argv, pod.env, logs)


@pytest.fixture(scope="module")
def local_cluster(cluster_postgres, loopback, tmp_path_factory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("pods")
    chdb_url = f"chdb://{root / 'clickhouse'}?database={ANALYTICS}"
    local = localize(cluster(), loopback, chdb_url)
    pods, services = {}, []
    webserver_port = next(p["port"] for p in local.get("Service", WEBSERVER[1])["spec"]["ports"])
    try:
        for name, service in ((CODE_SERVER, CODE_SERVICE), WEBSERVER, DAEMON):
            pod, process = start_pod(name, service, local, loopback, root, root)
            pods[name], services = pod, [*services, process]
            if name == CODE_SERVER:  # the webserver and daemon wait for it in the cluster too
                wait_until_serving(pod, loopback[service], process)
        webserver = Deployment(
            pods[WEBSERVER[0]].env,
            port=webserver_port,
            host=loopback[WEBSERVER[1]],
            log_dir=root,
            services=services,
            location_name=CODE_SERVICE,
        )
        webserver.wait_until_loaded()
        yield LocalCluster(local, pods, loopback, chdb_url, webserver.url)
    finally:
        stopped_by_force = stop_services(services)
    assert stopped_by_force == [], "pods' processes had to be stopped by force"


def test_webserver_lists_the_code_location_loaded(local_cluster):
    cron = local_cluster.pods[CODE_SERVER].env["SYNC_SCHEDULE_CRON"]
    assert_lists_the_sync(local_cluster.webserver_url, CODE_SERVICE, cron)


class JobRecorder:
    """Stands for the Kubernetes batch API: keeps the Job the run launcher creates."""

    def __init__(self) -> None:
        self.jobs: list[kubernetes.client.V1Job] = []

    def create_namespaced_job(self, body, namespace, **_options) -> None:
        assert namespace == NAMESPACE
        self.jobs.append(body)


def run_launcher(config: dict[str, Any], recorder: JobRecorder, tmp_path: Path) -> K8sRunLauncher:
    """The rendered K8sRunLauncher, as dagster-k8s builds it from dagster.yaml. The one
    change: it reads a kubeconfig that points nowhere instead of in-cluster credentials."""
    processed = process_config(K8sRunLauncher.config_type(), config)
    assert processed.success, processed.errors
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(NOWHERE_KUBECONFIG))
    return K8sRunLauncher(
        **{**processed.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)},
        k8s_client_batch_api=recorder,
    )


NOWHERE_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "none", "user": {"token": "none"}}],
    "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    "current-context": "none",
}


@pytest.fixture(scope="module")
def daemon_instance(local_cluster) -> Iterator[dg.DagsterInstance]:
    """The daemon pod's instance (its DAGSTER_HOME), which launches runs in the cluster. The
    run's config names PG_URL and CLICKHOUSE_URL, which the code server's pod has."""
    daemon, code_server = local_cluster.pods[DAEMON[0]], local_cluster.pods[CODE_SERVER]
    with pod_instance(daemon.env["DAGSTER_HOME"], {**code_server.env, **daemon.env}) as instance:
        yield instance


def sync_run(instance: dg.DagsterInstance, local_cluster: LocalCluster) -> dg.DagsterRun:
    """A run of the sync job made as the daemon makes one: from the running code server's job
    and execution plan, which carry the definitions' reconstruction metadata (the plan)."""
    origin = GrpcServerCodeLocationOrigin(
        host=local_cluster.loopback[CODE_SERVICE],
        port=values()["dagster-user-deployments"]["deployments"][0]["port"],
        location_name=CODE_SERVICE,
    )
    with origin.create_location(instance) as location:
        repository = location.get_repository(REPOSITORY_NAME)
        remote_job = repository.get_full_job(JOB)
        plan = location.get_execution_plan(
            remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance
        )
        return instance.create_run(
            job_name=JOB,
            run_id=None,
            run_config={},
            resolved_op_selection=None,
            step_keys_to_execute=None,
            status=dg.DagsterRunStatus.NOT_STARTED,
            op_selection=None,
            root_run_id=None,
            parent_run_id=None,
            tags={},
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repository.asset_graph,
        )


def launch_sync_run(
    local_cluster: LocalCluster, instance: dg.DagsterInstance, tmp_path: Path
) -> tuple[dg.DagsterRun, dict]:
    """A real run of the sync job, and the Job dagster-k8s makes for it, as the API gets it."""
    config = yaml.safe_load(local_cluster.objects.file(INSTANCE_CONFIG_MAP, "dagster.yaml"))
    recorder = JobRecorder()
    launcher = run_launcher(config["run_launcher"]["config"], recorder, tmp_path)
    launcher.register_instance(instance)
    run = sync_run(instance, local_cluster)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    (job,) = recorder.jobs
    return run, kubernetes.client.ApiClient().sanitize_for_serialization(job)


@pytest.fixture(scope="module")
def run_job(local_cluster, daemon_instance, tmp_path_factory) -> tuple[dg.DagsterRun, dict]:
    return launch_sync_run(local_cluster, daemon_instance, tmp_path_factory.mktemp("launcher"))


def test_run_job_gets_the_image_command_env_and_mounts_of_the_chart(run_job, local_cluster):
    _, job = run_job
    launcher = k8s_run_launcher_values()
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == USER_CODE_IMAGE
    assert container["imagePullPolicy"] == launcher["imagePullPolicy"]
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [
        s["name"] for s in launcher["envSecrets"]
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": values()["global"]["postgresqlSecretName"],
        "key": "postgresql-password",
    }
    for pair in launcher["envVars"]:
        name, _, value = pair.partition("=")
        assert env[name]["value"] == value
    assert container["volumeMounts"] == launcher["volumeMounts"]
    assert pod["spec"]["volumes"] == launcher["volumes"]
    # dagster-k8s hands the run its instance in the command, not as a mounted dagster.yaml.
    instance_ref = deserialize_value(container["args"][3], ExecuteRunArgs).instance_ref
    rendered = yaml.safe_load(local_cluster.objects.file(INSTANCE_CONFIG_MAP, "dagster.yaml"))
    assert (
        yaml.safe_load(instance_ref.run_storage_data.config_yaml)
        == (rendered["run_storage"]["config"])
    )
    assert unresolved_references(pod["spec"], cluster()) == []
    kubernetes_validate.validate(job, kubernetes_version(), strict=True)


def test_run_job_gets_the_account_labels_resources_and_security_of_the_chart(run_job):
    run, job = run_job
    launcher = k8s_run_launcher_values()
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert pod["spec"]["serviceAccountName"] == RELEASE
    labels = pod["metadata"]["labels"]
    assert launcher["labels"].items() <= labels.items()
    assert labels["dagster/run-id"] == run.run_id
    assert labels["dagster/code-location"] == CODE_SERVICE
    run_config = launcher["runK8sConfig"]
    assert container["resources"] == run_config["containerConfig"]["resources"]
    assert container.get("securityContext") == RESTRICTED_CONTAINER
    assert pod["spec"].get("securityContext") == RESTRICTED_POD
    assert (
        job["spec"]["ttlSecondsAfterFinished"]
        == run_config["jobSpecConfig"]["ttlSecondsAfterFinished"]
    )


def test_run_pod_command_syncs_the_table(run_job, local_cluster, daemon_instance, tmp_path):
    """The Job's container, run as a process with its env and mounts: the sync succeeds and
    ClickHouse (chDB here, through CLICKHOUSE_URL) holds every source row."""
    run, job = run_job
    pod = local_pod(job["spec"]["template"]["spec"], local_cluster.objects, tmp_path / "run")
    assert pod.env["CLICKHOUSE_URL"] == local_cluster.chdb_url  # the one swapped value
    log = tmp_path / "run.log"
    with log.open("w") as output:
        finished = subprocess.run(
            pod.argv, env=pod.env, stdout=output, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S
        )
    assert finished.returncode == 0, log.read_text()[-3000:]
    assert_run_synced_the_table(daemon_instance, run, local_cluster.chdb_url)


def run_story(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The run's last events, each failure with its error."""
    story = []
    for entry in instance.all_logs(run.run_id)[-8:]:
        story.append(entry.message)
        error = getattr(
            entry.dagster_event and entry.dagster_event.event_specific_data, "error", None
        )
        if error is not None:
            story.append(error.to_string())
    return story


def assert_run_synced_the_table(
    instance: dg.DagsterInstance, run: dg.DagsterRun, chdb_url: str
) -> None:
    stored = instance.get_run_by_id(run.run_id)
    assert stored.status == dg.DagsterRunStatus.SUCCESS, "\n".join(run_story(instance, run))
    database = urlsplit(chdb_url).query.removeprefix("database=")
    with get_client(dsn=chdb_url) as client:
        rows = client.query(f"SELECT count() FROM {database}.customers FINAL").result_rows
    assert rows == [(SOURCE_ROWS,)]


def run_container_options(job: dict, local_cluster: LocalCluster, files: Path) -> list[str]:
    """`docker run` options of the run Job's container (docker_run_options), with a chDB
    directory of its own mounted where CLICKHOUSE_URL points: no ClickHouse server runs here.
    The directory is made below `files`."""
    pod_spec = job["spec"]["template"]["spec"]
    clickhouse = files / "clickhouse"
    clickhouse.mkdir(parents=True)
    security = security_context(pod_spec)
    os.chown(clickhouse, security["runAsUser"], security["runAsGroup"])
    chdb_path = f"chdb://{CONTAINER_CHDB_DIR}?database={ANALYTICS}"
    options = docker_run_options(
        pod_spec, local_cluster.objects, files / "pod", {"CLICKHOUSE_URL": chdb_path}
    )
    return [*options, "--volume", f"{clickhouse}:{CONTAINER_CHDB_DIR}"]


def test_run_pod_container_of_our_image_syncs_the_table_without_privileges(
    docker, image_with_chdb, local_cluster, daemon_instance, tmp_path
):
    """The run's Job as a container of our image (plus chDB, a test-only layer), started with
    the Job's command, env and envFrom, mounts, user and group, dropped capabilities, no
    privilege escalation, seccomp profile and limits. A process started in it holds no
    privilege at all."""
    run, job = launch_sync_run(local_cluster, daemon_instance, tmp_path)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == USER_CODE_IMAGE  # built by skaffold; ours stands for it
    options = run_container_options(job, local_cluster, tmp_path)
    status = docker.run("run", "--rm", *options, image_with_chdb, "cat", "/proc/self/status")
    assert privileges(status.stdout) == UNPRIVILEGED

    argv = [*container.get("command", []), *container.get("args", [])]
    finished = docker.run(
        "run", "--rm", *options, image_with_chdb, *argv, timeout=RUN_TIMEOUT_S, check=False
    )
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-4000:]
    chdb_url = f"chdb://{tmp_path / 'clickhouse'}?database={ANALYTICS}"
    assert_run_synced_the_table(daemon_instance, run, chdb_url)


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry-on", "telemetry-off"])
def test_job_execute_in_the_run_pod_container(
    docker, image_with_chdb, run_job, local_cluster, tmp_path: Path, telemetry: bool
):
    """`dagster job execute` in a container of the run Job's spec (its user, env, mounts and
    security), with Dagster's telemetry on (the chart's default) and off: every run-time
    write lands in places the image's user may write."""
    _, job = run_job
    dagster_home = next(
        entry.removeprefix("DAGSTER_HOME=")
        for entry in json.loads(docker.inspect_image(image_with_chdb, "{{json .Config.Env}}"))
        if entry.startswith("DAGSTER_HOME=")
    )
    instance = tmp_path / "dagster.yaml"
    instance.write_text(yaml.safe_dump({"telemetry": {"enabled": telemetry}}))
    finished = docker.run(
        "run", "--rm", *run_container_options(job, local_cluster, tmp_path),
        "--volume", f"{instance}:{dagster_home}/dagster.yaml:ro",
        image_with_chdb, "dagster", "job", "execute", "-m", "user_code.definitions", "-j", JOB,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-4000:]
    assert "RUN_SUCCESS" in output, output[-4000:]
    with get_client(dsn=f"chdb://{tmp_path / 'clickhouse'}?database={ANALYTICS}") as client:
        rows = client.query(f"SELECT count() FROM {ANALYTICS}.customers FINAL").result_rows
    assert rows == [(SOURCE_ROWS,)]


_DAEMON_HEALTH = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""


def test_daemon_runs_on_the_rendered_instance_and_its_sensor_queues_a_sync(
    local_cluster, daemon_instance
):
    """Every daemon the instance asks for heartbeats (the scheduler, the sensor daemon, the
    run queue and run monitoring among them), and the sensor, evaluated through the code
    server, queues a run. Launching it needs the Kubernetes API, which is not here."""
    expected = set(daemon_instance.get_required_daemon_types())
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= expected

    def healthy_daemons() -> set[str]:
        health = graphql(local_cluster.webserver_url, _DAEMON_HEALTH)["instance"]["daemonHealth"]
        return {s["daemonType"] for s in health["allDaemonStatuses"] if s["healthy"]}

    wait_until(
        lambda: expected <= healthy_daemons(),
        SENSOR_TIMEOUT_S,
        "heartbeat of every required daemon",
        lambda: f"healthy: {sorted(healthy_daemons())}, expected: {sorted(expected)}",
    )
    sensor_runs = dg.RunsFilter(job_name=JOB, tags={"dagster/sensor_name": SENSOR})
    wait_until(
        lambda: daemon_instance.get_runs(sensor_runs), SENSOR_TIMEOUT_S, "run queued by the sensor"
    )


def test_code_server_init_container_waits_for_the_source(local_cluster):
    """The code server's init container, run as a process with its rendered command and env
    (pg_isready from the embedded server's binaries): it ends once the source accepts
    connections, as it does here, where the code server has already planned from it."""
    pod_spec = local_cluster.objects.get("Deployment", CODE_SERVER)["spec"]["template"]["spec"]
    (init,) = pod_spec["initContainers"]
    env = {**resolved_env(init, local_cluster.objects), "PATH": f"{PSQL.parent}:/usr/bin:/bin"}
    finished = subprocess.run(init["command"], env=env, capture_output=True, timeout=60)
    assert finished.returncode == 0, finished.stderr


# Created after the code server planned: both names derive the ClickHouse table late_arrivals,
# so a new plan of the source is an error, and a run process that planned again would not load.
LATE_TABLES = ['public."late-arrivals"', "public.late_arrivals"]


def test_a_run_builds_the_tables_the_code_server_planned(
    local_cluster, daemon_instance, cluster_postgres, tmp_path
):
    """Tables created after the code server loaded are not in a run until the code location
    is reloaded: the run's process takes the code server's plan from the run (reconstruction
    metadata), never the catalog, and succeeds; planning anew, as a reload does, sees them."""
    database = urlsplit(secret_data("source-postgres")["PG_URL"]).path.strip("/")
    source = psycopg2.connect(host=cluster_postgres.socket, dbname=database, user="postgres")
    source.autocommit = True
    with source.cursor() as cursor:
        for table in LATE_TABLES:
            cursor.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, created_at timestamptz NOT NULL "
                "DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())"
            )
    try:
        run, job = launch_sync_run(local_cluster, daemon_instance, tmp_path)
        snapshot = daemon_instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        metadata = snapshot.repository_load_data.reconstruction_metadata
        (stored,) = [value for key, value in metadata.items() if PLAN_STATE_KEY in key]
        planned = {spec.target for spec in Plan.model_validate_json(stored).tables}
        assert planned == {"customers", "events", "countries"}

        pod = local_pod(job["spec"]["template"]["spec"], local_cluster.objects, tmp_path / "run")
        finished = subprocess.run(pod.argv, env=pod.env, capture_output=True, timeout=RUN_TIMEOUT_S)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert_run_synced_the_table(daemon_instance, run, local_cluster.chdb_url)

        config = load_sync_config(pod.env["SYNC_CONFIG"])
        with pytest.raises(SyncError, match="same ClickHouse table 'late_arrivals'"):
            load_plan(config, pod.env["PG_URL"])  # what the code server meets on reload
    finally:
        with source.cursor() as cursor:
            for table in LATE_TABLES:
                cursor.execute(f"DROP TABLE {table}")
        source.close()
