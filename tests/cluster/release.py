"""Our release, installed the way `skaffold dev` installs it, on the single-node cluster.

k8s/ as it is, then the official chart rendered by Helm's engine with helm/values.yaml and
skaffold's setValueTemplates, applied with kubectl. Only what cannot exist here is swapped:

- No ClickHouse server runs here (none is packaged anywhere we can reach): the `clickhouse`
  StatefulSet is left out, CLICKHOUSE_URL in the Secret `clickhouse-sync` names chDB in a
  directory of the node, and the run launcher mounts that directory into run pods (a
  hostPath volume added to its volumes). The test reads the tables back from there.
- A bare cluster has no StorageClass (kind ships local-path): each StatefulSet's claim binds
  a PersistentVolume on a directory of the node, world-writable as local-path makes them.
- The images (see images.py).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from chart_support import render_chart, skaffold_values
from k8s_support import NAMESPACE, REPO_ROOT, Objects, manifests, skaffold

CHDB_MOUNT = "/var/lib/pg2ch-chdb"  # in run pods
CHDB_VOLUME = "chdb"
LEFT_OUT = {("StatefulSet", "clickhouse")}


def release_objects(node_dirs: Path) -> Objects:
    """k8s/ and the rendered chart, swapped as above; node directories below `node_dirs`."""
    return Objects(
        (
            *_persistent_volumes(node_dirs / "volumes"),
            *_k8s_objects(),
            *_in_namespace(render_chart(_chart_values(node_dirs / "chdb"))).items,
        )
    )


def chdb_url(directory: str | Path) -> str:
    """CLICKHOUSE_URL for chDB in `directory`, with the database of k8s/'s URL."""
    database = urlsplit(manifests().values("Secret", "clickhouse-sync")["CLICKHOUSE_URL"]).path
    return f"chdb://{directory}?database={database.strip('/')}"


def _k8s_objects() -> list[dict[str, Any]]:
    """k8s/ in the order skaffold.yaml lists its files: the namespace first."""
    objects = []
    for name in skaffold()["manifests"]["rawYaml"]:
        for item in yaml.safe_load_all((REPO_ROOT / name).read_text()):
            if (item["kind"], item["metadata"]["name"]) in LEFT_OUT:
                continue
            if item["kind"] == "Secret" and item["metadata"]["name"] == "clickhouse-sync":
                item["stringData"]["CLICKHOUSE_URL"] = chdb_url(CHDB_MOUNT)
            objects.append(item)
    return objects


def _chart_values(chdb_dir: Path) -> dict[str, Any]:
    chart_values = skaffold_values()
    launcher = chart_values["runLauncher"]["config"]["k8sRunLauncher"]
    # The kubelet sets no owner on a hostPath volume: the run pods' user gets it here.
    security = launcher["runK8sConfig"]["podSpecConfig"]["securityContext"]
    chdb_dir.mkdir(parents=True)
    os.chown(chdb_dir, security["runAsUser"], security["runAsGroup"])
    launcher["volumes"].append(
        {"name": CHDB_VOLUME, "hostPath": {"path": str(chdb_dir), "type": "Directory"}}
    )
    launcher["volumeMounts"].append({"name": CHDB_VOLUME, "mountPath": CHDB_MOUNT})
    return chart_values


def _in_namespace(objects: Objects) -> Objects:
    """Helm puts the chart's objects in the release namespace (`helm install -n`)."""
    items = copy.deepcopy(objects.items)
    for item in items:
        item["metadata"]["namespace"] = NAMESPACE
    return Objects(items)


def _persistent_volumes(directory: Path) -> list[dict[str, Any]]:
    """One PersistentVolume per claim template of the StatefulSets we apply."""
    volumes = []
    for statefulset in manifests().of_kind("StatefulSet").values():
        if ("StatefulSet", statefulset["metadata"]["name"]) in LEFT_OUT:
            continue
        for claim in statefulset["spec"]["volumeClaimTemplates"]:
            name = f"{statefulset['metadata']['name']}-{claim['metadata']['name']}"
            path = directory / name
            path.mkdir(parents=True)
            path.chmod(0o777)
            spec = {
                "capacity": claim["spec"]["resources"]["requests"],
                "accessModes": claim["spec"]["accessModes"],
                "hostPath": {"path": str(path), "type": "Directory"},
            }
            volumes.append({"apiVersion": "v1", "kind": "PersistentVolume",
                            "metadata": {"name": name}, "spec": spec})  # fmt: skip
    return volumes


def as_yaml(objects: Objects) -> str:
    return yaml.safe_dump_all(objects.items, sort_keys=False)
