"""k8s/: every object is valid for the kind cluster's Kubernetes version, and is deployable.

The schemas are the OpenAPI definitions that kubernetes-validate bundles per version, in strict
mode (unknown fields are errors, as with `kubectl apply --validate=strict`).
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from k8s_support import (
    NAMESPACE,
    k8s_documents,
    k8s_object,
    k8s_objects,
    kubernetes_version,
    manifest_files,
    skaffold,
    workloads,
)

DOCUMENTS = k8s_documents()


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in DOCUMENTS],
    ids=[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in DOCUMENTS],
)
def test_object_is_valid_for_the_cluster_version(doc):
    kubernetes_validate.validate(doc, kubernetes_version(), strict=True)


@pytest.mark.parametrize(
    ("field", "broken_value"),
    [("containerPort", "8123"), ("containerPortt", 8123)],
    ids=["string-port", "unknown-field"],
)
def test_a_broken_object_is_rejected(field, broken_value):
    statefulset = copy.deepcopy(k8s_object("StatefulSet", "clickhouse"))
    port = statefulset["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    port.pop("containerPort")
    port[field] = broken_value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, kubernetes_version(), strict=True)


def test_skaffold_applies_every_manifest_namespace_first():
    listed = skaffold()["manifests"]["rawYaml"]
    assert sorted(listed) == sorted(f"k8s/{path.name}" for path in manifest_files())
    assert listed[0] == "k8s/namespace.yaml"


def test_every_object_lives_in_the_release_namespace():
    assert set(k8s_objects("Namespace")) == {NAMESPACE}
    outside = [
        f"{doc['kind']}/{doc['metadata']['name']}"
        for _, doc in DOCUMENTS
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE
    ]
    assert outside == []


@pytest.mark.parametrize("workload", workloads(), ids=lambda w: w["metadata"]["name"])
def test_workload_is_hardened_probed_and_sized(workload):
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    for container in pod["containers"]:
        image_tag = container["image"].rpartition(":")[2]
        assert image_tag not in {"", "latest"} and "/" not in image_tag, container["image"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"readinessProbe", "livenessProbe", "startupProbe"} <= container.keys()
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]
    claims = {claim["metadata"]["name"] for claim in workload["spec"]["volumeClaimTemplates"]}
    mounted = {mount["name"] for c in pod["containers"] for mount in c["volumeMounts"]}
    assert claims <= mounted


def test_every_secret_is_marked_as_demo_credentials():
    for name, secret in k8s_objects("Secret").items():
        assert secret["metadata"]["annotations"]["pg2ch/credentials"] == "demo-only", name
