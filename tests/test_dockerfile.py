"""The Dockerfile read as text, and the code server its CMD starts, as a local process.

What is checked here: the Dockerfile's instructions (base, user, port, layer order, CMD), and
that CMD itself, run as a process in this environment (where the project is installed) with
the environment a pod gets from k8s/ and helm/values.yaml. It must come up healthy and serve
the assets over gRPC, with both databases unreachable, as it must in a cluster before they are
up. test_image.py builds the image and runs the same pods as its containers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
from chart_support import Objects, cluster
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from k8s_support import (
    DOCKERFILE,
    REPO_ROOT,
    helm_release,
    k8s_run_launcher_values,
    load_yaml,
    require_chart,
    secret_data,
    user_deployment,
)
from local_cluster import local_pod, localize
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from waiting import free_port, wait_until

from demo.stack import start_service, stop_services

STARTUP_TIMEOUT_S = 60


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def last(instruction: str) -> str:
    found = [args for name, args in instructions() if name == instruction]
    assert found, f"the Dockerfile has no {instruction}"
    return found[-1]


def cmd() -> list[str]:
    return json.loads(last("CMD"))


def test_base_image_is_slim_python_311():
    assert instructions()[0] == ("FROM", "python:3.11-slim-bookworm")


def test_cmd_serves_the_code_location_the_chart_expects():
    command = cmd()
    assert command == [
        "dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "user_code.definitions",
    ]  # fmt: skip
    # The chart runs `dagster api grpc -h 0.0.0.0 -p <port> <dagsterApiGrpcArgs>` as the
    # container's args: CMD itself (test_image.py compares the rendered args with it).
    deployment = user_deployment()
    assert command[7:] == deployment["dagsterApiGrpcArgs"]
    assert int(command[command.index("-p") + 1]) == deployment["port"]
    assert str(deployment["port"]) in last("EXPOSE").split()


def test_runs_as_a_non_root_user():
    user, _, group = last("USER").partition(":")
    assert user not in {"root", "0"} and group not in {"root", "0"}
    assert int(user) == user_deployment()["podSecurityContext"]["runAsUser"]
    run_pod = k8s_run_launcher_values()["runK8sConfig"]["podSpecConfig"]["securityContext"]
    assert int(user) == run_pod["runAsUser"]


def test_dependencies_install_in_a_layer_before_the_source():
    steps = [f"{name} {args}" for name, args in instructions()]

    def first(text: str) -> int:
        return next(i for i, step in enumerate(steps) if text in step)

    assert first("COPY requirements.lock") < first("pip install -r requirements.lock")
    assert first("pip install -r requirements.lock") < first("COPY user_code")
    assert first("COPY user_code") < first("pip install --no-deps")


def test_lock_satisfies_every_dependency_of_the_project():
    """requirements.lock may lag pyproject.toml; then the image would not be what we test."""
    locked = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            locked[canonicalize_name(name)] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in locked, f"{name} is missing from requirements.lock: run `make lock`"
        assert dependency.specifier.contains(locked[name]), (
            f"requirements.lock has {name}=={locked[name]}, pyproject.toml asks "
            f"{dependency.specifier}: run `make lock`"
        )


def test_dagster_home_is_where_the_chart_mounts_the_instance():
    chart_global = load_yaml(require_chart() / "values.yaml")["global"]
    assert f"DAGSTER_HOME={chart_global['dagsterHome']}" in last("ENV").split()


@contextmanager
def cmd_code_server(objects: Objects, tmp_path: Path) -> Iterator[GrpcServerCodeLocationOrigin]:
    """CMD as a process, with the code server pod's environment and sync.yaml from `objects`,
    healthy; stopped after, with nothing left to stop by force."""
    port = free_port()
    command = cmd()
    command[command.index("-h") + 1] = "127.0.0.1"
    command[command.index("-p") + 1] = str(port)
    assert command[0] == "dagster"
    deployment = f"{helm_release()['name']}-dagster-user-deployments-pg2ch"
    pod_spec = objects.get("Deployment", deployment)["spec"]["template"]["spec"]
    env = local_pod(pod_spec, objects, tmp_path / "pod").env
    server = start_service("code-server", [sys.executable, "-m", *command], env, tmp_path)
    probe = [sys.executable, "-m", "dagster", "api", "grpc-health-check", "-p", str(port)]

    def healthy() -> bool:
        assert server.process.poll() is None, f"the code server exited\n{server.log_tail()}"
        return subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0

    try:
        wait_until(healthy, STARTUP_TIMEOUT_S, "healthy code server", server.log_tail, 0.5)
        yield GrpcServerCodeLocationOrigin(
            host="127.0.0.1", port=port, location_name=user_deployment()["name"]
        )
    finally:
        stopped_by_force = stop_services([server])
    assert stopped_by_force == []


def test_cmd_serves_the_tables_sync_config_plans(cluster_postgres, loopback, tmp_path):
    """With the source reachable (its Service on loopback), the code server plans sync.yaml's
    patterns from the catalog and serves the steps of every seeded table."""
    objects = localize(cluster(), loopback, "chdb:///unused?database=analytics")
    with (
        cmd_code_server(objects, tmp_path) as origin,
        dg.DagsterInstance.ephemeral() as instance,
        origin.create_location(instance) as location,
    ):
        asset_keys = {
            node.asset_key.to_user_string()
            for repository in location.get_repositories().values()
            for node in repository.get_asset_node_snaps()
        }
    assert {"customers/updates", "events/new_records", "countries/snapshot"} <= asset_keys


def test_cmd_with_the_source_unreachable_stops_with_the_reason(tmp_path):
    """The cluster's host names do not resolve here. Planning needs the source's catalog, so
    the code server stops, saying which host it could not reach, never the password; in the
    cluster its init container waits for the source first (helm/values.yaml)."""
    command = cmd()
    command[command.index("-h") + 1] = "127.0.0.1"
    command[command.index("-p") + 1] = str(free_port())
    deployment = f"{helm_release()['name']}-dagster-user-deployments-pg2ch"
    pod_spec = cluster().get("Deployment", deployment)["spec"]["template"]["spec"]
    env = local_pod(pod_spec, cluster(), tmp_path / "pod").env
    stopped = subprocess.run(
        [sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=120
    )
    assert stopped.returncode != 0
    output = stopped.stdout + stopped.stderr
    assert "cannot connect to Postgres at postgresql://postgres-source:5432/app" in output
    password = urlsplit(secret_data("source-postgres")["PG_URL"]).password
    assert password and password not in output
