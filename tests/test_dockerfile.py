"""The Dockerfile read as text, and the code server its CMD starts, as a local process.

What is checked here: the Dockerfile's instructions (base, user, port, layer order, CMD), and
that CMD itself, run as a process in this environment (where the project is installed) with
the environment a pod gets from k8s/ and helm/values.yaml. It must come up healthy and serve
the assets over gRPC, with both databases unreachable, as it must in a cluster before they are
up. test_image.py builds the image and runs the same pods as its containers.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from k8s_support import (
    DOCKERFILE,
    REPO_ROOT,
    k8s_object,
    k8s_run_launcher_values,
    load_yaml,
    require_chart,
    secret_data,
    user_deployment,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_environment(tmp_path: Path) -> dict[str, str]:
    """The code server pod's environment: the demo Secrets, the env values, sync.yaml."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DAGSTER_")}
    for ref in user_deployment()["envSecrets"]:
        env.update(secret_data(ref["name"]))
    env.update({item["name"]: item["value"] for item in user_deployment()["env"]})
    sync_yaml = tmp_path / "sync.yaml"
    sync_yaml.write_text(k8s_object("ConfigMap", "sync-config")["data"]["sync.yaml"])
    env["SYNC_CONFIG"] = str(sync_yaml)
    (tmp_path / "dagster_home").mkdir()
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    return env


def wait_until_healthy(server: subprocess.Popen, port: int, env: dict[str, str], log: Path) -> None:
    """Poll the chart's readiness probe command until it passes."""
    probe = [sys.executable, "-m", "dagster", "api", "grpc-health-check", "-p", str(port)]
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the code server exited with {server.returncode}:\n{log.read_text()}")
        if subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"the code server was not healthy within {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")


def test_cmd_starts_a_healthy_code_server_that_serves_the_assets(tmp_path):
    port = free_port()
    command = cmd()
    command[command.index("-h") + 1] = "127.0.0.1"
    command[command.index("-p") + 1] = str(port)
    assert command[0] == "dagster"
    env = pod_environment(tmp_path)
    log = tmp_path / "code-server.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(server, port, env, log)
        origin = GrpcServerCodeLocationOrigin(
            host="127.0.0.1", port=port, location_name=user_deployment()["name"]
        )
        with (
            dg.DagsterInstance.ephemeral() as instance,
            origin.create_location(instance) as location,
        ):
            asset_keys = [
                node.asset_key.to_user_string()
                for repository in location.get_repositories().values()
                for node in repository.get_asset_node_snaps()
            ]
        assert any("customers" in key for key in asset_keys), (
            f"`{shlex.join(command)}` serves no asset for public.customers: {asset_keys}"
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
