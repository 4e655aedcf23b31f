"""The Dagster instance the chart renders (its dagster.yaml), loaded and used by Dagster itself.

It must load in the pinned Dagster under both versions of the chart's run-coordinator template,
and the instance it describes must work on real Postgres: with the Service host names replaced
by loopback addresses (nothing else changed), it creates its schema in the storage database of
k8s/, with the password of k8s/'s Secret, stores runs, and its run queue keeps a second run of
the same pool waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import sqlalchemy
import yaml
from chart_support import OLD_RUN_COORDINATOR, cluster, instance_yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from k8s_support import secret_data, values
from local_cluster import INSTANCE_CONFIG_MAP, WORKSPACE_CONFIG_MAP, localize, pod_instance

from user_code.definitions import defs

JOB = "postgres_to_clickhouse"
POOL = "clickhouse_customers"  # the pool of the demo table's sync step


def write_dagster_home(path: Path, dagster_yaml: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(dagster_yaml)
    return path


@pytest.mark.parametrize("template", [None, OLD_RUN_COORDINATOR], ids=["chart", "7b875469"])
def test_rendered_instance_loads_under_both_run_coordinator_templates(template, tmp_path):
    rendered = yaml.safe_dump(instance_yaml(template))
    config, _ = dagster_instance_config(str(write_dagster_home(tmp_path, rendered)))
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    pools = config["concurrency"]["pools"]
    assert pools == {"default_limit": 1, "granularity": "run"}
    # a run whose pod died (run monitoring marks it failed) is started again
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"] == {"enabled": True, "max_retries": 2}


@pytest.fixture(scope="module")
def instance(cluster_postgres, loopback, tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    local = localize(cluster(), loopback, clickhouse_url="chdb:///unused")
    home = write_dagster_home(
        tmp_path_factory.mktemp("instance") / "dagster_home",
        local.file(INSTANCE_CONFIG_MAP, "dagster.yaml"),
    )
    password = secret_data(values()["global"]["postgresqlSecretName"])["postgresql-password"]
    # A run's config names PG_URL and CLICKHOUSE_URL (the run pods' Secrets).
    secrets = {
        **local.values("Secret", "source-postgres"),
        **local.values("Secret", "clickhouse-sync"),
    }
    with pod_instance(home, {"DAGSTER_PG_PASSWORD": password, **secrets}) as loaded:
        yield loaded


def storage_tables(cluster_postgres) -> set[str]:
    database = values()["postgresql"]["postgresqlDatabase"]
    connection = psycopg2.connect(host=cluster_postgres.socket, dbname=database, user="postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


def test_instance_creates_its_schema_and_stores_runs(instance, cluster_postgres):
    assert {"runs", "event_logs", "jobs", "concurrency_limits"} <= storage_tables(cluster_postgres)
    url = sqlalchemy.make_url(instance.run_storage.postgres_url)
    assert url.drivername == "postgresql+psycopg2"
    run = instance.create_run_for_job(job_def=defs().resolve_job_def(JOB))
    stored = instance.get_run_by_id(run.run_id)
    assert stored is not None and stored.job_name == JOB


def queued_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    """A queued run of the sync job from the code server the workspace names."""
    workspace = yaml.safe_load(cluster().file(WORKSPACE_CONFIG_MAP, "workspace.yaml"))
    (entry,) = workspace["load_from"]
    server = entry["grpc_server"]
    location = GrpcServerCodeLocationOrigin(
        host=server["host"], port=server["port"], location_name=server["location_name"]
    )
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(location, "__repository__"), job_name=JOB
    )
    return instance.create_run_for_job(
        job_def=defs().resolve_job_def(JOB),
        status=dg.DagsterRunStatus.QUEUED,
        remote_job_origin=origin,
    )


def test_run_queue_keeps_a_second_run_of_the_same_pool_waiting(instance):
    """A run of the table is in progress; another one waits, though the run limit is higher.

    Dagster sets a pool's limit from `default_limit` in the first queue pass that meets the
    pool, after it has read which pools are limited: two runs queued together before any pass
    has met the pool both start (seen with Dagster 1.13.27). Here, as in the deployment's
    steady state, an earlier pass has met it.
    """
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs > 1
    queue = QueuedRunCoordinatorDaemon(interval_seconds=5)

    def next_pass() -> list[str]:
        runs = queue._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
        return [run.run_id for run in runs]

    first = queued_run(instance)
    assert first.run_op_concurrency and POOL in first.run_op_concurrency.all_pools
    assert next_pass() == [first.run_id]
    # What `launch_run` reports before the run launcher creates the run's Job.
    starting = dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.PIPELINE_STARTING.value, job_name=JOB
    )
    instance.report_dagster_event(starting, run_id=first.run_id)

    second = queued_run(instance)
    assert next_pass() == [], f"run {second.run_id} went ahead while {first.run_id} held {POOL}"
