"""What the deployment tests share: where the files are, and the objects read from them.

The deployment is described in five places that must agree: k8s/ (databases, Secrets,
ConfigMaps), helm/values.yaml (the official Dagster chart), skaffold.yaml, kind-config.yaml
and the Dockerfile. The helpers here read each of them once.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prerequisites import required_or_skipped

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"
HELM_VALUES = REPO_ROOT / "helm" / "values.yaml"
SKAFFOLD = REPO_ROOT / "skaffold.yaml"
KIND_CONFIG = REPO_ROOT / "kind-config.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# An unmodified copy of the official chart's values and schemas, beside the repository.
CHART_DIR = REPO_ROOT.parent / "shared" / "dagster-chart"

NAMESPACE = "pg2ch"
IMAGE = "pg2ch-user-code"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifest_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml"))


@functools.cache
def _k8s_documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    return tuple(
        (path, doc)
        for path in manifest_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    )


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every object in k8s/*.yaml, with the file it comes from."""
    return list(_k8s_documents())


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    """The objects of one kind in k8s/, by name."""
    return {doc["metadata"]["name"]: doc for _, doc in _k8s_documents() if doc["kind"] == kind}


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    objects = k8s_objects(kind)
    assert name in objects, f"k8s/ has no {kind} named {name!r}; it has {sorted(objects)}"
    return objects[name]


def secret_data(name: str) -> dict[str, str]:
    """A Secret's plain-text values, from stringData and (base64) data alike."""
    return manifests().values("Secret", name)


@dataclass(frozen=True)
class Objects:
    """Kubernetes objects, looked up by kind and name."""

    items: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.items if o["kind"] == kind}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert name in found, f"no {kind} named {name!r}; there are {sorted(found)}"
        return found[name]

    def values(self, kind: str, name: str) -> dict[str, str]:
        """A ConfigMap's or Secret's plain-text values (a Secret's `data` base64-decoded)."""
        found = self.get(kind, name)
        values = found.get("data") or {}
        if kind == "Secret":
            values = {key: base64.b64decode(value).decode() for key, value in values.items()}
        return {**values, **(found.get("stringData") or {})}

    def file(self, config_map: str, key: str) -> str:
        return self.get("ConfigMap", config_map)["data"][key]

    def workloads(self) -> Iterator[dict[str, Any]]:
        return (item for item in self.items if item["kind"] in {"Deployment", "StatefulSet"})

    def pod_templates(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(kind/name, pod template) of every workload."""
        for item in self.workloads():
            yield f"{item['kind']}/{item['metadata']['name']}", item["spec"]["template"]

    def __add__(self, other: Objects) -> Objects:
        return Objects(self.items + other.items)


def manifests() -> Objects:
    """The objects of k8s/."""
    return Objects(tuple(doc for _, doc in _k8s_documents()))


def resolved_env(container: dict[str, Any], objects: Objects) -> dict[str, str]:
    """A container's environment as the kubelet gives it: envFrom, then env, with values from
    the ConfigMaps and Secrets in `objects` (an optional source that is missing adds nothing)."""

    def data(kind: str, name: str, optional: bool = False) -> dict[str, str]:
        if optional and name not in objects.of_kind(kind):
            return {}
        return objects.values(kind, name)

    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, field in [("ConfigMap", "configMapRef"), ("Secret", "secretRef")]:
            if field in source:
                ref = source[field]
                env.update(data(kind, ref["name"], ref.get("optional", False)))
    for entry in container.get("env", []):
        value_from = entry.get("valueFrom", {})
        for kind, field in [("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")]:
            if field in value_from:
                ref = value_from[field]
                env[entry["name"]] = data(kind, ref["name"])[ref["key"]]
        if "value" in entry:
            env[entry["name"]] = entry["value"]
    return env


def workloads() -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_documents() if doc["kind"] in {"StatefulSet", "Deployment"}]


def container_env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The env entries of a workload's containers, by variable name."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    return {env["name"]: env for c in containers for env in c.get("env", [])}


@functools.cache
def values() -> dict[str, Any]:
    return load_yaml(HELM_VALUES)


def user_deployment() -> dict[str, Any]:
    (deployment,) = values()["dagster-user-deployments"]["deployments"]
    return deployment


def k8s_run_launcher_values() -> dict[str, Any]:
    return values()["runLauncher"]["config"]["k8sRunLauncher"]


@functools.cache
def skaffold() -> dict[str, Any]:
    return load_yaml(SKAFFOLD)


def helm_release() -> dict[str, Any]:
    (release,) = skaffold()["deploy"]["helm"]["releases"]
    return release


def kubernetes_version() -> str:
    """The Kubernetes version of the kind node image, e.g. "1.34.0"."""
    (node,) = load_yaml(KIND_CONFIG)["nodes"]
    match = re.fullmatch(r"kindest/node:v(\d+\.\d+\.\d+)(@sha256:[0-9a-f]+)?", node["image"])
    assert match, f"kind-config.yaml must pin kindest/node:vX.Y.Z, not {node['image']!r}"
    return match.group(1)


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted path, leaf value) in nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")
    else:
        yield path, value


def require_chart() -> Path:
    """The chart copy in ../shared/dagster-chart, or a skip where it is absent."""
    if not (CHART_DIR / "values.schema.json").is_file():
        required_or_skipped(
            f"the official Dagster chart's values and schema are not at {CHART_DIR} "
            "(they sit beside the repository in the project's workspace)"
        )
    return CHART_DIR
