"""Postgres and ClickHouse as Dagster resources; embedded or server is decided here, by URL."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import adbc_driver_postgresql.dbapi as adbc
import clickhouse_connect
import dagster as dg
from clickhouse_connect.driver.client import Client
from pydantic import Field, PrivateAttr

from user_code.sync.errors import (
    ConnectionFailed,
    SyncError,
    describe_url,
    redact,
    require_scheme,
)
from user_code.sync.postgres import connect, end, fetch_all, open_connection
from user_code.sync.settings import Progress, TableSpec, no_progress
from user_code.sync.table import Session, Table, read_table


def is_embedded(clickhouse_url: str) -> bool:
    """`chdb:///dir` is ClickHouse in-process: one process at a time may open the directory."""
    return urlsplit(clickhouse_url).scheme == "chdb"


# Dagster's resources subclass ConfigurableResource unparametrized (the resource is its own
# value); its type parameter is for factories of other values.
class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The source database. Within a run, one connection serves every step of the run's
    process, opened on first use and closed with the run: a run of hundreds of tables logs
    in once, not once per table and check. Elsewhere (a sensor), one connection per use."""

    url: str = Field(description="libpq URI, e.g. postgresql://user:pass@host:5432/db")
    _shared: adbc.Connection | None = PrivateAttr(default=None)
    _in_run: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    @contextmanager
    def connect(self) -> Iterator[adbc.Connection]:
        if not self._in_run:
            with connect(self.url) as connection:
                yield connection
            return
        yield self._shared_connection()

    def _shared_connection(self) -> adbc.Connection:
        """The run's connection, with no transaction left open by a step before; a fresh one
        if it broke (a retried step may follow a lost connection)."""
        if self._shared is not None:
            try:
                end(self._shared)  # a step that failed before its read began or ended
                fetch_all(self._shared, "SELECT 1")  # still connected
                return self._shared
            except Exception:
                self._shared.close()
        self._shared = open_connection(self.url)
        return self._shared


class ClickHouseResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The destination: a ClickHouse server over HTTP(S), or chDB in this process. Within a run,
    one client serves every step of the run's process, as with Postgres."""

    url: str = Field(
        description="http(s)://user:pass@host:8123/database, or chdb:///dir?database=name"
    )
    cluster: str = Field(
        "", description="a ClickHouse cluster for DDL (ON CLUSTER, replicated tables); '' none"
    )
    _shared: Client | None = PrivateAttr(default=None)
    _in_run: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    @property
    def database(self) -> str:
        parts = urlsplit(self.url)
        if is_embedded(self.url):
            return parse_qs(parts.query).get("database", ["default"])[0]
        return parts.path.strip("/") or "default"

    @contextmanager
    def get_client(self) -> Iterator[Client]:
        if self._in_run:
            self._shared = self._shared or self._open_client()
            yield self._shared
            return
        client = self._open_client()
        try:
            yield client
        finally:
            client.close()

    def _open_client(self) -> Client:
        require_scheme(self.url, "CLICKHOUSE_URL", ("http", "https", "chdb"))
        embedded = is_embedded(self.url)
        try:
            if embedded:
                return clickhouse_connect.get_client(dsn=f"chdb://{urlsplit(self.url).path}")
            return clickhouse_connect.get_client(
                dsn=self.url, database=self.database, autogenerate_session_id=False
            )
        except Exception as error:
            hint = (
                "only one process may open a chdb directory: wait for the running sync to "
                "finish, or point CLICKHOUSE_URL at a ClickHouse server"
                if embedded
                else "check CLICKHOUSE_URL and that the server is up"
            )
            raise ConnectionFailed(
                f"cannot open ClickHouse at {describe_url(self.url)}: "
                f"{redact(str(error), self.url)}; {hint}."
            ) from None


@contextmanager
def open_table(
    spec: TableSpec,
    postgres: PostgresResource,
    clickhouse: ClickHouseResource,
    progress: Progress = no_progress,
) -> Iterator[tuple[Session, Table]]:
    """One table, read from the catalog, and the connections of both resources to sync it."""
    with postgres.connect() as connection, clickhouse.get_client() as client:
        table = read_table(connection, spec, clickhouse.database, clickhouse.cluster)
        yield Session(connection, client, progress, postgres.url), table


def build_resources() -> dict[str, PostgresResource | ClickHouseResource]:
    return {
        "postgres": PostgresResource(url=dg.EnvVar("PG_URL")),
        "clickhouse": ClickHouseResource(
            url=dg.EnvVar("CLICKHOUSE_URL"), cluster=os.environ.get("CLICKHOUSE_CLUSTER", "")
        ),
    }


def build_executor(clickhouse_url: str, executor: str = "in_process") -> dg.ExecutorDefinition:
    """How a run's table ops execute (SYNC_EXECUTOR). `in_process`, the default: one after the
    other in the run's process, on one connection to each database; an incremental step
    takes milliseconds, so a run of hundreds of tables spends its time starting processes
    otherwise. `multiprocess`: each table's op in a process of its own, SYNC_MAX_CONCURRENT
    at a time, for a few large tables whose loads should overlap. chDB opens its directory
    in one process only, so embedded runs are always in-process."""
    if executor not in {"in_process", "multiprocess"}:
        raise SyncError(f"SYNC_EXECUTOR must be in_process or multiprocess, not {executor!r}.")
    if executor == "in_process" or is_embedded(clickhouse_url):
        return dg.in_process_executor
    concurrency = int(os.environ.get("SYNC_MAX_CONCURRENT", "4"))
    return dg.multiprocess_executor.configured({"max_concurrent": concurrency})
