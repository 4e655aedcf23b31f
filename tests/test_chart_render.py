"""What the chart renders from helm/values.yaml, together with k8s/: one consistent cluster.

Every object is valid for the kind node's Kubernetes version, and every name a pod relies on
resolves inside the namespace: Secrets and their keys, ConfigMaps and the files mounted from
them, service accounts and their roles, and every host a pod connects to, down to a container
that listens on the Service's target port. The images are the skaffold artifact and pinned tags.
"""

from __future__ import annotations

import itertools
import re
from urllib.parse import urlsplit

import kubernetes_validate
import yaml
from chart_support import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    USER_CODE_IMAGE,
    Objects,
    cluster,
    containers,
    instance_yaml,
    render_release,
    unresolved_references,
)
from k8s_support import NAMESPACE, helm_release, kubernetes_version
from local_cluster import CODE_SERVER

RELEASE = helm_release()["name"]
INIT_CONTAINER_TARGETS = [
    re.compile(r'pg_isready -h "?(?P<host>[\w.-]+)"? -p (?P<port>\d+)'),
    re.compile(r"nslookup (?P<host>[\w.-]+)"),
]


def test_release_is_valid_for_the_cluster_version():
    release = render_release()
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role"} <= {
        o["kind"] for o in release.items
    }
    errors = []
    for item in release.items:
        try:
            kubernetes_validate.validate(item, kubernetes_version(), strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {error}")
    assert errors == []


def run_launcher_config() -> dict:
    return instance_yaml()["run_launcher"]["config"]


def test_every_secret_config_map_and_key_a_pod_names_exists():
    objects = cluster()
    missing = {}
    for workload in objects.workloads():
        claims = tuple(
            c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])
        )
        if problems := unresolved_references(workload["spec"]["template"]["spec"], objects, claims):
            missing[workload["metadata"]["name"]] = problems
    assert missing == {}


def test_run_pods_name_only_existing_secrets_and_config_maps():
    objects, launcher = cluster(), run_launcher_config()
    for secret in launcher["env_secrets"]:
        objects.get("Secret", secret)
    password = objects.get("Secret", launcher["postgres_password_secret"])
    assert "postgresql-password" in password["stringData"]  # the key dagster-k8s reads
    assert "dagster.yaml" in objects.get("ConfigMap", launcher["instance_config_map"])["data"]
    for volume in launcher["volumes"]:
        objects.get("ConfigMap", volume["configMap"]["name"])


def test_service_accounts_exist_and_the_launcher_may_create_run_jobs():
    objects = cluster()
    accounts = set(objects.of_kind("ServiceAccount")) | {"default"}
    for workload, template in objects.pod_templates():
        assert template["spec"].get("serviceAccountName", "default") in accounts, workload
    roles = objects.of_kind("Role")
    granted: dict[str, list[dict]] = {}
    for binding in objects.of_kind("RoleBinding").values():
        assert binding["roleRef"]["name"] in roles, binding["metadata"]["name"]
        for subject in binding["subjects"]:
            assert subject["name"] in accounts, binding["metadata"]["name"]
            granted.setdefault(subject["name"], []).extend(
                roles[binding["roleRef"]["name"]]["rules"]
            )
    # The daemon launches runs; the run pods run as the launcher's service account.
    daemon = objects.get("Deployment", f"{RELEASE}-daemon")["spec"]["template"]["spec"]
    for account in [daemon["serviceAccountName"], run_launcher_config()["service_account_name"]]:
        assert any(
            "batch" in rule["apiGroups"]
            and "jobs" in rule["resources"]
            and ({"create", "*"} & set(rule["verbs"]))
            for rule in granted.get(account, [])
        ), f"service account {account} may not create Jobs"


def listening_ports(container: dict) -> set[int | str]:
    """Declared container ports (number and name), and the port a dagster server command
    listens on (its last `-p`: the last one given wins)."""
    ports: set[int | str] = set()
    for port in container.get("ports", []):
        ports |= {port["containerPort"], port.get("name", port["containerPort"])}
    words = " ".join([*container.get("command", []), *container.get("args", [])]).split()
    if any(word.startswith("dagster") for word in words[:3]):
        given = [int(value) for flag, value in itertools.pairwise(words) if flag == "-p"]
        ports |= set(given[-1:])
    return ports


def service_reaches_a_listening_container(objects: Objects, name: str, port: int | None) -> None:
    service = objects.get("Service", name)
    service_ports = {p["port"]: p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
    assert port is None or port in service_ports, f"Service {name} has no port {port}"
    selected = [
        (workload, template)
        for workload, template in objects.pod_templates()
        if service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, f"Service {name} must select one workload, not {selected}"
    (workload, template), targets = (
        selected[0],
        (service_ports.values() if port is None else [service_ports[port]]),
    )
    listening = set().union(*(listening_ports(c) for c in template["spec"]["containers"]))
    for target in targets:
        assert target in listening, (
            f"Service {name} targets {target}; {workload} listens on {listening}"
        )


def service_name(host: str) -> str:
    """A Service's DNS name within the namespace, short or qualified."""
    return host.removesuffix(".svc.cluster.local").removesuffix(f".{NAMESPACE}")


def connections() -> list[tuple[str, str, int | None]]:
    """(who, host, port) of every connection a pod opens inside the cluster."""
    objects, release = cluster(), render_release()
    found = []
    workspace = yaml.safe_load(release.file(f"{RELEASE}-workspace-yaml", "workspace.yaml"))
    for entry in workspace["load_from"]:
        grpc = entry["grpc_server"]
        found.append(("workspace.yaml", grpc["host"], grpc["port"]))
    instance = instance_yaml()
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        db = instance[storage]["config"]["postgres_db"]
        found.append((f"dagster.yaml {storage}", db["hostname"], db["port"]))
    for workload, template in objects.pod_templates():
        for init in template["spec"].get("initContainers", []):
            command = " ".join(init.get("command", []))
            for pattern in INIT_CONTAINER_TARGETS:
                for match in pattern.finditer(command):
                    port = match.groupdict().get("port")
                    found.append((f"{workload} {init['name']}", match["host"], port and int(port)))
    for name, secret in objects.of_kind("Secret").items():
        for key, value in secret.get("stringData", {}).items():
            url = urlsplit(value)
            if url.scheme and url.hostname:
                found.append((f"Secret {name} {key}", url.hostname, url.port))
    return found


def test_every_host_a_pod_connects_to_is_a_service_of_a_listening_container():
    found = connections()
    who = {w.split()[0] for w, _, _ in found}
    assert {"workspace.yaml", "dagster.yaml", "Deployment/dagster-daemon", "Secret"} <= who
    for _, host, port in found:
        service_reaches_a_listening_container(cluster(), service_name(host), port)


def test_every_service_selects_one_workload_that_listens_on_its_target_ports():
    objects = cluster()
    for name in objects.of_kind("Service"):
        service_reaches_a_listening_container(objects, name, None)


def test_the_code_server_pod_is_restricted():
    """Its pod, its container and its init container (the run pod's: test_chart_pods.py)."""
    pod = cluster().get("Deployment", CODE_SERVER)["spec"]["template"]["spec"]
    assert pod.get("securityContext") == RESTRICTED_POD
    security = {
        container["name"]: container.get("securityContext") for container in containers(pod)
    }
    assert security == dict.fromkeys(security, RESTRICTED_CONTAINER)
    assert len(security) == 2


def test_runs_use_the_skaffold_artifact_and_every_other_image_is_pinned():
    objects = cluster()
    code_server = objects.get("Deployment", CODE_SERVER)["spec"]["template"]["spec"]
    (container,) = code_server["containers"]
    assert container["image"] == USER_CODE_IMAGE
    # The code server reports this image to Dagster, which gives it to every run pod.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DAGSTER_CURRENT_IMAGE"] == USER_CODE_IMAGE
    version = str(helm_release()["version"])
    for workload, template in objects.pod_templates():
        for each in containers(template["spec"]):
            if each["image"] == USER_CODE_IMAGE:
                continue
            repository, _, tag = each["image"].rpartition(":")
            assert repository and tag not in {"", "latest"} and "/" not in tag, (
                f"{workload} {each['name']}: {each['image']} is not pinned"
            )
            if repository.endswith(("dagster/dagster-celery-k8s", "dagster/dagster-k8s")):
                assert tag == version, f"{workload}: {each['image']} is not the chart's version"
