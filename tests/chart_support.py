"""The official Dagster chart, rendered by Helm's own engine as `skaffold dev` installs it.

`../shared/dagster-chart-full/` holds the chart with its templates (see its SOURCE.md). A temp
copy gets the published chart's version in `Chart.yaml` (so the chart's own images get the
tags a real install gets) and local Kubernetes definitions in its schemas (so the schema check
Helm runs before rendering works offline). Rendering takes well under a second and is cached:
the tests share one render per template variant.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from helm_python.chart import Chart
from k8s_support import (
    IMAGE,
    NAMESPACE,
    REPO_ROOT,
    Objects,
    helm_release,
    k8s_documents,
    kubernetes_version,
    values,
)
from prerequisites import required_or_skipped

CHART_FULL_DIR = REPO_ROOT.parent / "shared" / "dagster-chart-full"
CHART_VARIANTS_DIR = REPO_ROOT.parent / "shared" / "dagster-chart-variants"
RUN_COORDINATOR_TEMPLATE = Path("templates/helpers/instance/_run-coordinator.tpl")
# The older upstream version of that template (see the variants' README).
OLD_RUN_COORDINATOR = "_run-coordinator.tpl.7b875469"
# The Pod Security Standards' `restricted` profile as the code server's and the run's pods meet
# it: the image's user (never root), the runtime's seccomp profile, and containers that drop
# every capability and cannot gain privileges.
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# Stands for the tag skaffold computes from the build context (tagPolicy: inputDigest).
ARTIFACT_TAG = "3f1c2a9b8d7e"
USER_CODE_IMAGE = f"{IMAGE}:{ARTIFACT_TAG}"

# Every form of remote Kubernetes-definitions reference found in the chart's schemas.
REMOTE_DEFINITIONS = re.compile(
    r"https://(?:raw\.githubusercontent\.com/yannh/kubernetes-json-schema/master"
    r"|kubernetesjsonschema\.dev)/v[0-9.]+/_definitions\.json#/definitions/"
)


def require_shared(path: Path) -> Path:
    """`path` under ../shared/, or a skip that says what is missing."""
    if not path.exists():
        required_or_skipped(
            f"{path} is absent: the official Dagster chart (with its templates) sits beside "
            "the repository in the project's workspace, and these tests render it"
        )
    return path


def local_definitions() -> Path:
    version = kubernetes_version()
    path = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{version}-local"
        / "_definitions.json"
    )
    assert path.is_file(), f"kubernetes-validate bundles no definitions for {version}"
    return path


def copy_chart_for_offline_use(source: Path, target: Path) -> Path:
    """A writable copy of the chart whose schemas' remote $refs point at local definitions."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:  # the shared copy is read-only
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    local_prefix = f"file://{local_definitions()}#/$defs/"
    rewritten = 0
    for schema in target.rglob("values.schema.json"):
        text, count = REMOTE_DEFINITIONS.subn(local_prefix, schema.read_text())
        schema.write_text(text)
        rewritten += count
        assert "kubernetesjsonschema.dev" not in text and "yannh/" not in text, schema
    assert rewritten > 0, "no remote $ref found: has the chart's schema changed?"
    return target


def set_chart_version(chart_dir: Path, version: str) -> None:
    """The version the published chart carries, in the chart and its user-code subchart."""
    for chart_yaml in [chart_dir / "Chart.yaml", *chart_dir.glob("charts/*/Chart.yaml")]:
        chart = yaml.safe_load(chart_yaml.read_text())
        chart["version"] = chart["appVersion"] = version
        for dependency in chart.get("dependencies", []):
            if (chart_dir / "charts" / dependency["name"]).is_dir():
                dependency["version"] = version
        chart_yaml.write_text(yaml.safe_dump(chart, sort_keys=False))


def set_value(tree: dict[str, Any], dotted_path: str, value: Any) -> None:
    """Helm's `--set` path syntax: `a.b[0].c`."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", dotted_path)]
    node: Any = tree
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value


def skaffold_values() -> dict[str, Any]:
    """helm/values.yaml plus skaffold's setValueTemplates, filled as skaffold fills them."""
    token = IMAGE.replace("-", "_")
    template_values = {f"IMAGE_REPO_{token}": IMAGE, f"IMAGE_TAG_{token}": ARTIFACT_TAG}
    merged = copy.deepcopy(values())
    for path, template in helm_release()["setValueTemplates"].items():
        filled = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: template_values[m.group(1)], template)
        set_value(merged, path, filled)
    return merged


@functools.cache
def render_release(run_coordinator_template: str | None = None) -> Objects:
    """The objects `skaffold dev` installs with the chart: release `dagster` in `pg2ch`.

    `run_coordinator_template` names a file of ../shared/dagster-chart-variants/ that replaces
    the chart's `_run-coordinator.tpl`.
    """
    return render_chart(skaffold_values(), run_coordinator_template)


def render_chart(
    chart_values: dict[str, Any], run_coordinator_template: str | None = None
) -> Objects:
    """The chart rendered with `chart_values`, as skaffold's release `dagster` in `pg2ch`."""
    source = require_shared(CHART_FULL_DIR / "Chart.yaml").parent
    release = helm_release()
    with tempfile.TemporaryDirectory() as temp:
        chart_dir = copy_chart_for_offline_use(source, Path(temp) / "dagster")
        set_chart_version(chart_dir, str(release["version"]))
        if run_coordinator_template:
            variant = require_shared(CHART_VARIANTS_DIR / run_coordinator_template)
            shutil.copyfile(variant, chart_dir / RUN_COORDINATOR_TEMPLATE)
        with Chart.load(str(chart_dir)) as chart:
            rendered = chart.render(
                values=chart_values, name=release["name"], namespace=release["namespace"]
            )
    assert release["namespace"] == NAMESPACE
    documents = [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return Objects(tuple(documents))


def cluster() -> Objects:
    """Everything in the namespace after `skaffold dev`: the release plus k8s/."""
    return render_release() + Objects(tuple(doc for _, doc in k8s_documents()))


def instance_yaml(run_coordinator_template: str | None = None) -> dict[str, Any]:
    """The rendered dagster.yaml, as the webserver, the daemon and run pods read it."""
    release = render_release(run_coordinator_template)
    return yaml.safe_load(release.file(f"{helm_release()['name']}-instance", "dagster.yaml"))


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def unresolved_references(
    pod_spec: dict[str, Any], objects: Objects, claims: tuple[str, ...] = ()
) -> list[str]:
    """Every Secret, ConfigMap, key and volume a pod names that `objects` does not hold;
    `claims` are the volumes a StatefulSet's volumeClaimTemplates add."""
    missing = []

    def check(kind: str, name: str, key: str | None = None, optional: bool = False) -> None:
        found = objects.of_kind(kind).get(name)
        if found is None:
            if not optional:
                missing.append(f"{kind} {name}")
            return
        data = {**(found.get("data") or {}), **(found.get("stringData") or {})}
        if key is not None and key not in data:
            missing.append(f"key {key!r} of {kind} {name}")

    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    volumes |= {claim: {"name": claim} for claim in claims}
    for volume in volumes.values():
        for kind, source in [("ConfigMap", "configMap"), ("Secret", "secret")]:
            if source in volume:
                ref = volume[source]
                name = ref.get("name", ref.get("secretName"))
                check(kind, name, optional=ref.get("optional", False))
                for item in ref.get("items", []):
                    check(kind, name, item["key"])
    for container in containers(pod_spec):
        for source in container.get("envFrom", []):
            for kind, field in [("ConfigMap", "configMapRef"), ("Secret", "secretRef")]:
                if field in source:
                    check(kind, source[field]["name"], optional=source[field].get("optional"))
        for env in container.get("env", []):
            value_from = env.get("valueFrom", {})
            for kind, field in [("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")]:
                if field in value_from:
                    ref = value_from[field]
                    check(kind, ref["name"], ref["key"], optional=ref.get("optional", False))
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                missing.append(f"volume {mount['name']} mounted by {container['name']}")
            elif "subPath" in mount and "configMap" in volume:
                check("ConfigMap", volume["configMap"]["name"], mount["subPath"])
    return missing
