"""The Dagster instance the chart builds from helm/values.yaml, loaded by Dagster itself.

The chart turns our values into dagster.yaml (its configmap-instance.yaml template). The
functions below write the same sections the same way, and the tests hand them to the real
classes: the run launcher, the run queue and the Postgres storage URL. The run launcher then
builds the Kubernetes Job a run would get, which is checked field by field and against the
cluster's API schema. No cluster is contacted.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
import sqlalchemy
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id
from dagster_postgres import PostgresRunStorage
from dagster_postgres.utils import pg_url_from_config
from k8s_support import (
    IMAGE,
    NAMESPACE,
    k8s_run_launcher_values,
    kubernetes_version,
    user_deployment,
    values,
)

RELEASE = "dagster"
RUN_IMAGE = f"{IMAGE}:0123abcd"
RUN_RESOURCES = k8s_run_launcher_values()["runK8sConfig"]["containerConfig"]["resources"]


def run_launcher_section(kubeconfig_file: str) -> dict[str, Any]:
    """dagster.yaml `run_launcher`, as the chart writes it for K8sRunLauncher.

    In the cluster the launcher loads its in-cluster credentials; here it reads a kubeconfig
    that points nowhere, the only change.
    """
    launcher = k8s_run_launcher_values()
    run_k8s_config = launcher["runK8sConfig"]
    config = {
        "load_incluster_config": False,
        "kubeconfig_file": kubeconfig_file,
        "job_namespace": NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": RELEASE,
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values()["global"]["postgresqlSecretName"],
        "env_secrets": [ref["name"] for ref in launcher["envSecrets"]],
        "env_vars": launcher["envVars"],
        "volume_mounts": launcher["volumeMounts"],
        "volumes": launcher["volumes"],
        "labels": launcher["labels"],
        "security_context": launcher["securityContext"],
        "run_k8s_config": {
            "container_config": run_k8s_config["containerConfig"],
            "pod_spec_config": run_k8s_config["podSpecConfig"],
            "job_spec_config": run_k8s_config["jobSpecConfig"],
        },
    }
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def run_coordinator_section() -> dict[str, Any]:
    coordinator = values()["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    return {
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {},
    }


def concurrency_section() -> dict[str, Any]:
    """The instance's `concurrency` block, as the chart writes it from our values."""
    concurrency = values()["concurrency"]
    assert concurrency["enabled"]
    pools, runs = concurrency["pools"], concurrency["runs"]
    return {
        "pools": {"default_limit": pools["defaultLimit"], "granularity": pools["granularity"]},
        "runs": {"max_concurrent_runs": runs["maxConcurrentRuns"]},
    }


def storage_config() -> dict[str, Any]:
    """The `config` of run_storage, event_log_storage and schedule_storage alike."""
    postgresql = values()["postgresql"]
    return {
        "postgres_db": {
            "username": postgresql["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": postgresql["postgresqlHost"],
            "db_name": postgresql["postgresqlDatabase"],
            "port": postgresql["service"]["port"],
            "params": postgresql.get("postgresqlParams", {}),
            "scheme": postgresql["postgresqlScheme"],
        }
    }


def rehydrate(section: dict[str, Any], as_type: type) -> Any:
    """What DagsterInstance does with a dagster.yaml section: validate it, then build it."""
    data = ConfigurableClassData(section["module"], section["class"], yaml.dump(section["config"]))
    return data.rehydrate(as_type=as_type)


@pytest.fixture
def launcher(tmp_path) -> K8sRunLauncher:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "none", "user": {"token": "none"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    return rehydrate(run_launcher_section(str(kubeconfig)), K8sRunLauncher)


def code_server_container_context() -> dict[str, Any] | None:
    """What the code server hands to its runs, as the user-deployments subchart writes it."""
    deployment = user_deployment()
    if not deployment["includeConfigInLaunchedRuns"]["enabled"]:
        return None
    return {
        "k8s": {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_secrets": [ref["name"] for ref in deployment.get("envSecrets", [])],
            "volume_mounts": deployment.get("volumeMounts", []),
            "volumes": deployment.get("volumes", []),
            "resources": deployment.get("resources", {}),
            "env": deployment.get("env", []),
            "namespace": NAMESPACE,
        }
    }


def run_job(launcher: K8sRunLauncher, container_context: dict[str, Any] | None) -> dict:
    """The Job the launcher creates for a run of our code location, as the API receives it."""
    origin = JobPythonOrigin(
        job_name="__ASSET_JOB",
        repository_origin=RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("user_code.definitions", "defs", working_directory=None),
            container_image=RUN_IMAGE,
            container_context=container_context,
        ),
    )
    run = dg.DagsterRun(
        job_name="__ASSET_JOB",
        run_id="0f1e2d3c-0000-4000-8000-000000000000",
        job_code_origin=origin,
    )
    # The same steps as K8sRunLauncher.launch_run, minus the API call.
    context = launcher.get_container_context_for_run(run)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=RUN_IMAGE, run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=get_job_name_from_run_id(run.run_id),
        user_defined_k8s_config=context.run_k8s_config,
        component="run_worker",
        labels={"dagster/run-id": run.run_id},
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def test_run_launcher_builds_from_the_chart_config(launcher):
    assert launcher.job_namespace == NAMESPACE
    assert launcher.image_pull_policy == "IfNotPresent"
    assert launcher.env_secrets == ["source-postgres", "clickhouse-sync"]


def test_a_run_job_gets_image_secrets_config_and_resources(launcher):
    job = run_job(launcher, code_server_container_context())
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    assert container["image"] == RUN_IMAGE
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == [
        "source-postgres",
        "clickhouse-sync",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["SYNC_CONFIG"]["value"] == "/etc/pg2ch/sync.yaml"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret",
        "key": "postgresql-password",
    }
    assert container["resources"] == RUN_RESOURCES
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "pg2ch"

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["sync-config"]["mountPath"] == "/etc/pg2ch"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["sync-config"]["configMap"]["name"] == "sync-config"
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600


def test_a_run_job_is_valid_for_the_cluster(launcher):
    kubernetes_validate.validate(
        run_job(launcher, code_server_container_context()), kubernetes_version(), strict=True
    )


def test_code_server_config_in_runs_would_replace_run_resources(launcher):
    """Why includeConfigInLaunchedRuns is off: the code server's resources would win."""
    assert code_server_container_context() is None
    code_server = user_deployment()["resources"]
    assert code_server != RUN_RESOURCES
    included = {"k8s": {"resources": code_server, "namespace": NAMESPACE}}
    (container,) = run_job(launcher, included)["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == code_server


def test_runs_writing_one_table_never_overlap(tmp_path):
    overrides = {
        "run_coordinator": run_coordinator_section(),
        "concurrency": concurrency_section(),
    }
    with dg.instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1  # one writer per `clickhouse_<table>` pool
        assert pools.pool_granularity.value == "run"
        assert queue.max_concurrent_runs >= 1


def test_storage_url_uses_psycopg2(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-a-real-password")
    processed = process_config(PostgresRunStorage.config_type(), storage_config())
    assert processed.success, processed.errors
    url = pg_url_from_config(processed.value)
    assert url == (
        "postgresql+psycopg2://dagster:not-a-real-password@dagster-storage-postgres:5432/dagster"
    )
    engine = sqlalchemy.create_engine(url)
    try:
        assert engine.dialect.driver == "psycopg2"
    finally:
        engine.dispose()
