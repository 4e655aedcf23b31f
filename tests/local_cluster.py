"""The rendered cluster on this machine: each Service gets a loopback address of its own.

In the cluster a pod reaches `dagster-storage-postgres:5432` through Service DNS. Here each
Service name maps to its own address in 127.0.0.0/8 (random per test session, so concurrent
sessions never meet), and the processes standing for its pods listen there on the Service's
own port. The only rewrite of the rendered configuration is host names: in dagster.yaml,
workspace.yaml and the URLs of the Secrets. ClickHouse is the one exception (see
`localize`): no ClickHouse server runs here.
"""

from __future__ import annotations

import copy
import random
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest
import yaml
from chart_support import Objects
from k8s_support import NAMESPACE, helm_release, resolved_env, secret_data
from waiting import wait_until

RELEASE = helm_release()["name"]
INSTANCE_CONFIG_MAP = f"{RELEASE}-instance"
WORKSPACE_CONFIG_MAP = f"{RELEASE}-workspace-yaml"
STORAGES = ("run_storage", "event_log_storage", "schedule_storage")
CODE_SERVER = f"{RELEASE}-dagster-user-deployments-pg2ch"  # the code server's Deployment
CODE_SERVICE = "pg2ch"  # its Service, and the code location's name
SOURCE_ROWS = 5000  # seeded by k8s/postgres-source.yaml's init script
# The database CLICKHOUSE_URL names; in a container it is a chDB directory mounted here, since
# no ClickHouse server runs on this machine.
ANALYTICS = urlsplit(secret_data("clickhouse-sync")["CLICKHOUSE_URL"]).path.strip("/")
CONTAINER_CHDB_DIR = "/var/lib/pg2ch-chdb"
READY_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300


def wait_until_ready(
    what: str, ready: Callable[[], bool], running: Callable[[], bool], logs: Callable[[], str]
) -> None:
    """Poll a pod's readiness probe (`ready`) until it passes; fail at once, with the pod's
    logs, if its process is no longer `running`."""

    def passes() -> bool:
        assert running(), f"{what} exited\n{logs()}"
        return ready()

    wait_until(passes, READY_TIMEOUT_S, f"{what} ready", logs)


def loopback_addresses(objects: Objects) -> dict[str, str]:
    """Service name -> an address of its own on the loopback network."""
    base = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"
    return {name: f"{base}.{i}" for i, name in enumerate(sorted(objects.of_kind("Service")), 1)}


def loopback_host(host: str, addresses: dict[str, str]) -> str:
    service = host.removesuffix(".svc.cluster.local").removesuffix(f".{NAMESPACE}")
    assert service in addresses, f"{host} is not a Service of the cluster"
    return addresses[service]


def _with_host(url: str, address: str) -> str:
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{address}" if userinfo else address
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def localize(objects: Objects, addresses: dict[str, str], clickhouse_url: str) -> Objects:
    """The cluster's objects with Service host names replaced by their loopback addresses.

    `CLICKHOUSE_URL` is the one value replaced whole, by `clickhouse_url` (a chdb:// URL):
    no ClickHouse server can run here, and chDB is ClickHouse in-process.
    """
    items = copy.deepcopy(list(objects.items))
    for item in items:
        name = item["metadata"]["name"]
        if item["kind"] == "ConfigMap" and name == INSTANCE_CONFIG_MAP:
            instance = yaml.safe_load(item["data"]["dagster.yaml"])
            for storage in STORAGES:
                db = instance[storage]["config"]["postgres_db"]
                db["hostname"] = loopback_host(db["hostname"], addresses)
            item["data"]["dagster.yaml"] = yaml.safe_dump(instance, sort_keys=False)
        elif item["kind"] == "ConfigMap" and name == WORKSPACE_CONFIG_MAP:
            workspace = yaml.safe_load(item["data"]["workspace.yaml"])
            for entry in workspace["load_from"]:
                grpc = entry["grpc_server"]
                grpc["host"] = loopback_host(grpc["host"], addresses)
            item["data"]["workspace.yaml"] = yaml.safe_dump(workspace, sort_keys=False)
        elif item["kind"] == "Secret":
            item["stringData"] = {
                key: localized_value(key, value, addresses, clickhouse_url)
                for key, value in item.get("stringData", {}).items()
            }
    return Objects(tuple(items))


def localized_value(key: str, value: str, addresses: dict[str, str], clickhouse_url: str) -> Any:
    if key == "CLICKHOUSE_URL":
        return clickhouse_url
    url = urlsplit(value)
    if url.scheme and url.hostname:
        return _with_host(value, loopback_host(url.hostname, addresses))
    return value


@contextmanager
def pod_instance(dagster_home: str | Path, pod_env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance at `dagster_home`, as a pod loads it: with the storage password
    (DAGSTER_PG_PASSWORD) and the URLs a run's config names (PG_URL, CLICKHOUSE_URL) taken
    from `pod_env`."""
    with pytest.MonkeyPatch.context() as patch:
        for key in ("DAGSTER_PG_PASSWORD", "PG_URL", "CLICKHOUSE_URL"):
            patch.setenv(key, pod_env[key])
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            yield instance


@dataclass(frozen=True)
class LocalPod:
    """A pod's container as a local process: its command, its environment, its files."""

    argv: list[str]
    env: dict[str, str]
    root: Path  # stands for the container's filesystem: mount paths live below it
    readiness: list[str] | None  # the readiness probe's command, if it runs one


def _write_volume(volume: dict[str, Any], mount: dict[str, Any], objects: Objects, target: Path):
    if "configMap" not in volume:
        target.mkdir(parents=True, exist_ok=True)  # emptyDir and the like
        return
    files = objects.get("ConfigMap", volume["configMap"]["name"])["data"]
    if "subPath" in mount:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[mount["subPath"]])
        return
    items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in files]
    for item in items:
        (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (target / item["path"]).write_text(files[item["key"]])


def local_pod(
    pod_spec: dict[str, Any], objects: Objects, root: Path, address: str | None = None
) -> LocalPod:
    """The pod's (only) container, ready to start as a process.

    Files mounted from ConfigMaps are written below `root`, and each path that names them
    (mount paths, and DAGSTER_HOME, a directory the image creates) in the command and the
    environment points there. A server told to listen on 0.0.0.0 listens on `address`, the
    loopback address of the pod's Service, as the pod listens on its own IP.
    """
    (container,) = pod_spec["containers"]
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    pod_paths = []
    for mount in container.get("volumeMounts", []):
        target = root / mount["mountPath"].lstrip("/")
        _write_volume(volumes[mount["name"]], mount, objects, target)
        pod_paths.append(mount["mountPath"].rstrip("/"))
    env = resolved_env(container, objects)
    if "DAGSTER_HOME" in env:
        (root / env["DAGSTER_HOME"].lstrip("/")).mkdir(parents=True, exist_ok=True)
        pod_paths.append(env["DAGSTER_HOME"].rstrip("/"))
    pattern = re.compile(
        "|".join(rf"(?<![\w./-]){re.escape(p)}(?=/|\b|$)" for p in sorted(pod_paths, key=len)[::-1])
    )

    def relocate(text: str) -> str:
        text = pattern.sub(lambda m: str(root) + m.group(0), text) if pod_paths else text
        return text.replace("0.0.0.0", address) if address else text

    argv = [relocate(arg) for arg in [*container.get("command", []), *container.get("args", [])]]
    probe = container.get("readinessProbe", {}).get("exec", {}).get("command")
    image_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(root)}
    env = image_env | {name: relocate(value) for name, value in env.items()}
    return LocalPod(argv, env, root, [relocate(arg) for arg in probe] if probe else None)


_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (`2Gi`, `512M`, `1000`) in bytes."""
    for suffix, factor in {**_BINARY_SUFFIXES, **_DECIMAL_SUFFIXES}.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity (`2`, `250m`) in cores."""
    return int(quantity.removesuffix("m")) / 1000 if quantity.endswith("m") else float(quantity)


def security_context(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The (only) container's security context, the pod's settings beneath its own."""
    (container,) = pod_spec["containers"]
    return {**(pod_spec.get("securityContext") or {}), **(container.get("securityContext") or {})}


def docker_run_options(
    pod_spec: dict[str, Any],
    objects: Objects,
    files: Path,
    env_overrides: dict[str, str] | None = None,
) -> list[str]:
    """`docker run` options that give a container what the pod spec gives the pod's (only)
    container: its user and group, no privilege escalation, its capabilities, its seccomp
    profile, its memory and CPU limits, its environment (env and envFrom resolved, then
    `env_overrides`; written to a file below `files`, not to the command line), and its
    volumes (ConfigMaps written below `files`) mounted at their mount paths.
    Containers share the host's network: the Services' stand-ins listen on its loopback."""
    (container,) = pod_spec["containers"]
    options = ["--network", "host", *_security_options(security_context(pod_spec))]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        options += ["--memory", str(memory_bytes(limits["memory"]))]
    if "cpu" in limits:
        options += ["--cpus", str(cpus(limits["cpu"]))]
    env = resolved_env(container, objects) | (env_overrides or {})
    env_file = files / "env"
    files.mkdir(parents=True, exist_ok=True)
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    env_file.chmod(0o600)
    options += ["--env-file", str(env_file)]
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        source = files / mount["mountPath"].lstrip("/")
        _write_volume(volumes[mount["name"]], mount, objects, source)
        source.chmod(0o755 if source.is_dir() else 0o644)
        read_only = mount.get("readOnly") or "configMap" in volumes[mount["name"]]
        options += ["--volume", f"{source}:{mount['mountPath']}{':ro' if read_only else ''}"]
    return options


def _security_options(security: dict[str, Any]) -> list[str]:
    """A security context as `docker run` options. Without a seccompProfile a kubelet runs the
    container unconfined (its default), where Docker would apply its own profile."""
    options = []
    if "runAsUser" in security:
        options += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    capabilities = security.get("capabilities", {})
    options += [f"--cap-drop={name}" for name in capabilities.get("drop", [])]
    options += [f"--cap-add={name}" for name in capabilities.get("add", [])]
    seccomp = security.get("seccompProfile", {}).get("type", "Unconfined")
    assert seccomp in {"Unconfined", "RuntimeDefault"}, f"no Docker form of seccomp {seccomp}"
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    return options
