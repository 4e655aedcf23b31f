"""Our image, built from this checkout and run as containers (see docker_support).

The code server's pod, as the chart renders it, runs as a container of the image; Dagster's
commands run in it as the image's user with telemetry on and off. The run pod's container is
in test_chart_pods.py, beside the same pod run as a process.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from chart_support import cluster
from clickhouse_connect import get_client
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from docker_support import DockerEngine
from e2e_support import CHECKS, JOB, SCHEDULE, SENSOR, STEPS
from k8s_support import helm_release, secret_data
from local_cluster import docker_run_options, localize, security_context
from waiting import wait_until

from demo.stack import REPOSITORY_NAME
from user_code.automation import VERIFY_JOB
from user_code.state import CONTENT_CHECKSUM

CODE_SERVER = f"{helm_release()['name']}-dagster-user-deployments-pg2ch"
CODE_SERVICE = "pg2ch"
READY_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300
SOURCE_ROWS = 5000  # seeded by k8s/postgres-source.yaml's init script
CONTAINER_CHDB_DIR = "/var/lib/pg2ch-chdb"
ANALYTICS = urlsplit(secret_data("clickhouse-sync")["CLICKHOUSE_URL"]).path.strip("/")


@pytest.fixture
def pod_objects(cluster_postgres, loopback):
    """The rendered cluster with Service hosts on loopback; CLICKHOUSE_URL a chdb:// path in
    the container (no ClickHouse server runs here)."""
    return localize(cluster(), loopback, f"chdb://{CONTAINER_CHDB_DIR}?database={ANALYTICS}")


@pytest.fixture
def code_server(docker: DockerEngine, image: str, pod_objects, loopback, tmp_path) -> Iterator:
    """The code server pod's container: the image's CMD, listening on the Service's address."""
    pod_spec = pod_objects.get("Deployment", CODE_SERVER)["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["args"] == json.loads(docker.inspect_image(image, "{{json .Config.Cmd}}"))
    address = loopback[CODE_SERVICE]
    name = f"pg2ch-code-server-{uuid.uuid4().hex[:8]}"
    docker.run(
        "run", "--detach", "--name", name, *docker_run_options(pod_spec, pod_objects, tmp_path),
        image, *[arg.replace("0.0.0.0", address) for arg in container["args"]],
    )  # fmt: skip
    try:
        # The chart's readiness probe, run in the container as kubelet runs it.
        probe = [*container["readinessProbe"]["exec"]["command"], "-h", address]

        def logs() -> str:
            output = docker.run("logs", name, check=False)
            return output.stdout + output.stderr

        def ready() -> bool:
            state = docker.run("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"the code server {state}:\n{logs()}"
            return docker.run("exec", name, *probe, check=False).returncode == 0

        wait_until(ready, READY_TIMEOUT_S, "ready code server container", logs)
        yield name, address, int(container["args"][container["args"].index("-p") + 1])
    finally:
        docker.run("rm", "--force", name, check=False)


def test_code_server_container_serves_the_location(docker, code_server):
    name, address, port = code_server
    assert docker.run("exec", name, "id", "-u").stdout.strip() == "1000"
    origin = GrpcServerCodeLocationOrigin(host=address, port=port, location_name=CODE_SERVICE)
    with dg.DagsterInstance.ephemeral() as instance, origin.create_location(instance) as location:
        repository = location.get_repository(REPOSITORY_NAME)
        jobs = {job.name for job in repository.get_all_jobs()}
        assets = {node.asset_key.to_user_string() for node in repository.get_asset_node_snaps()}
        checks = {
            (c.asset_key.to_user_string(), c.name) for c in repository.get_asset_check_node_snaps()
        }
        schedules = {schedule.name for schedule in repository.get_schedules()}
        sensors = {sensor.name for sensor in repository.get_sensors()}
    assert {JOB, VERIFY_JOB} <= jobs
    assert {f"customers/{step}" for step in STEPS} <= assets
    assert {("customers/updates", check) for check in (*CHECKS, CONTENT_CHECKSUM)} <= checks
    assert {SCHEDULE, f"{VERIFY_JOB}_schedule"} <= schedules
    assert sensors == {SENSOR}


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry-on", "telemetry-off"])
def test_job_execute_in_the_image_as_its_user(
    docker, image_with_chdb, pod_objects, tmp_path: Path, telemetry: bool
):
    """`dagster job execute`, as the run pod's user, with Dagster's telemetry on (the chart's
    default) and off: every run-time write lands in places the image's user may write."""
    # The code server's pod: the image's user, PG_URL and CLICKHOUSE_URL, sync.yaml.
    pod_spec = pod_objects.get("Deployment", CODE_SERVER)["spec"]["template"]["spec"]
    options = docker_run_options(pod_spec, pod_objects, tmp_path / "pod")
    dagster_home = next(
        entry.removeprefix("DAGSTER_HOME=")
        for entry in json.loads(docker.inspect_image(image_with_chdb, "{{json .Config.Env}}"))
        if entry.startswith("DAGSTER_HOME=")
    )
    instance = tmp_path / "dagster.yaml"
    instance.write_text(yaml.safe_dump({"telemetry": {"enabled": telemetry}}))
    clickhouse = tmp_path / "clickhouse"
    clickhouse.mkdir()
    security = security_context(pod_spec)
    os.chown(clickhouse, security["runAsUser"], security["runAsGroup"])
    finished = docker.run(
        "run", "--rm", *options,
        "--volume", f"{instance}:{dagster_home}/dagster.yaml:ro",
        "--volume", f"{clickhouse}:{CONTAINER_CHDB_DIR}",
        image_with_chdb, "dagster", "job", "execute", "-m", "user_code.definitions", "-j", JOB,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-4000:]
    assert "RUN_SUCCESS" in output, output[-4000:]
    with get_client(dsn=f"chdb://{clickhouse}?database={ANALYTICS}") as client:
        rows = client.query(f"SELECT count() FROM {ANALYTICS}.customers FINAL").result_rows
    assert rows == [(SOURCE_ROWS,)]
