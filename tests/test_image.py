"""Our image, built from this checkout and run as containers (see docker_support).

The code server's pod, as the chart renders it, runs as a container of the image, and serves
the code location as the image's user with no privileges. The run pod's container is in
test_chart_pods.py, beside the same pod run as a process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
from chart_support import cluster
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from docker_support import UNPRIVILEGED, DockerEngine, privileges
from e2e_support import CHECKS, JOB, SCHEDULE, SENSOR, STEPS
from local_cluster import (
    ANALYTICS,
    CODE_SERVER,
    CODE_SERVICE,
    CONTAINER_CHDB_DIR,
    docker_run_options,
    localize,
    wait_until_ready,
)

from demo.stack import REPOSITORY_NAME
from user_code.automation import VERIFY_JOB
from user_code.state import CONTENT_CHECKSUM


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

        wait_until_ready(
            "the code server container",
            lambda: docker.run("exec", name, *probe, check=False).returncode == 0,
            lambda: (
                docker.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                == "true"
            ),
            logs,
        )
        yield name, address, int(container["args"][container["args"].index("-p") + 1])
    finally:
        docker.run("rm", "--force", name, check=False)


def test_code_server_container_serves_the_location_without_privileges(docker, code_server):
    name, address, port = code_server
    status = docker.run("exec", name, "cat", "/proc/1/status").stdout  # the server itself
    assert privileges(status) == UNPRIVILEGED
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
