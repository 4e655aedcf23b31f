"""pg2ch as a local Dagster deployment of real processes: shared by `make dev` and the e2e tests.

One implementation of: create the databases, write the instance (`dagster.yaml`,
`workspace.yaml`), start the Dagster processes with the sync's environment, wait until the
webserver has loaded the code location, and stop every process that was started, the code
servers and runs they spawned included.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import psutil
import psycopg2
import yaml
from psycopg2 import sql

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_MODULE = "user_code.definitions"
# One name everywhere: `dg dev` (pyproject.toml's [tool.dg.project]), the e2e workspace, and
# the chart's user-code deployment (helm/values.yaml).
LOCATION_NAME = "pg2ch"
REPOSITORY_NAME = "__repository__"  # the repository Dagster builds from a `Definitions`
_BIN = Path(sys.executable).parent

_LOCATION_QUERY = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def database_url(server_url: str, database: str) -> str:
    """`server_url` (any libpq URI, Unix socket ones included) pointed at `database`."""
    return urlsplit(server_url)._replace(path=f"/{database}").geturl()


def create_database(server_url: str, database: str) -> str:
    """Create `database` on the server unless it exists; returns its URL."""
    connection = psycopg2.connect(server_url)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    finally:
        connection.close()
    return database_url(server_url, database)


def dagster_storage_url(postgres_url: str) -> str:
    """The URL dagster-postgres needs: SQLAlchemy 2.1 maps plain `postgresql://` to psycopg 3,
    which dagster-postgres does not support (see FACTS.md), so name psycopg2 explicitly."""
    return postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def write_instance(dagster_home: Path, storage_url: str | None = None) -> Path:
    """`dagster.yaml`: runs are queued and start one at a time; storage on Postgres when
    `storage_url` is given, else Dagster's default SQLite files in `dagster_home`.

    One run at a time because chDB lets a single process open its data directory, and every
    run is a process of its own: a second concurrent run could not open ClickHouse.
    """
    instance: dict = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": 1},
        },
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},  # no newsletter sign-up dialog over the UI
    }
    if storage_url:
        instance["storage"] = {"postgres": {"postgres_url": storage_url}}
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(yaml.safe_dump(instance, sort_keys=False))
    return path


def write_workspace(dagster_home: Path) -> Path:
    """`workspace.yaml` loading the code location from this checkout, as a deployment does."""
    entry = {
        "module_name": CODE_MODULE,
        "working_directory": str(REPO_ROOT),
        "location_name": LOCATION_NAME,
    }
    path = dagster_home / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": [{"python_module": entry}]}, sort_keys=False))
    return path


def sync_environment(
    pg_url: str, clickhouse_url: str, dagster_home: Path, **settings: str
) -> dict[str, str]:
    """This process' environment plus what the code location and Dagster read."""
    return {
        **os.environ,
        "PG_URL": pg_url,
        "CLICKHOUSE_URL": clickhouse_url,
        "DAGSTER_HOME": str(dagster_home),
        **settings,
    }


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    """One request to the webserver's GraphQL endpoint; GraphQL errors raise."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.load(response)
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


@dataclass
class Service:
    """A process this module started, with where its output goes."""

    name: str
    process: subprocess.Popen
    log_path: Path | None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of {self.log_path}\n" + "\n".join(tail)


def _let_children_be_interrupted() -> None:
    """Dagster's processes treat SIGTERM as SIGINT. A process started from a shell's background
    job has SIGINT ignored, and children inherit "ignored" (never a handler), so they would
    ignore SIGTERM too: restore Python's handler here first, which children see as the default.
    """
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def start_service(name: str, args: list[str], env: dict[str, str], log_dir: Path | None) -> Service:
    """Start `args` from the repository root; output to `<log_dir>/<name>.log`, or this terminal.

    The process gets a session of its own: Ctrl-C in the terminal then reaches only the caller,
    which stops its services once, in order, rather than racing their own shutdown.
    """
    _let_children_be_interrupted()
    log_path = log_dir / f"{name}.log" if log_dir else None
    log: IO | None = log_path.open("ab") if log_path else None
    try:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
        )
    finally:
        if log:
            log.close()  # the child holds its own copy
    return Service(name, process, log_path)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_services(services: list[Service], timeout: float = 30) -> list[str]:
    """SIGTERM every process of each service's process group (the service and what it started:
    code servers, runs), as Ctrl-C in a terminal reaches a whole foreground job, and wait up to
    `timeout` for all of them to exit, those started meanwhile included.

    Whatever is still running then, a process that ignored SIGTERM or a child that left the
    group, is killed and returned, described: an empty list means every process stopped by
    itself.
    """
    groups = {service.process.pid for service in services}  # each leads its own session
    started = {process for service in services for process in _tree(service.process.pid)}
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (running := _running(started, groups)) and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped_by_force = [_describe(process) for process in running]
    for process in running:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(running, timeout=10)
    for service in services:
        service.process.wait()
    return stopped_by_force


def _running(started: set[psutil.Process], groups: set[int]) -> list[psutil.Process]:
    """Of `started`, and of every process in `groups`, those still running."""
    members = set(started)
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) in groups:
                members.add(process)
    return [process for process in members if _alive(process)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"


@dataclass
class Deployment:
    """Dagster's processes for one DAGSTER_HOME, started and stopped together.

    `log_dir=None` sends their output to this terminal, as `dg dev` users expect.
    """

    env: dict[str, str]
    port: int
    host: str = "127.0.0.1"
    log_dir: Path | None = None
    services: list[Service] = field(default_factory=list)
    location_name: str = LOCATION_NAME

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def dagster_home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    def start_dev(self) -> None:
        """`dg dev`: webserver and daemon in one command, for a developer's machine.

        It loads the project that pyproject.toml's [tool.dg] declares, with this interpreter's
        virtualenv (VIRTUAL_ENV tells `dg` which one is active).
        """
        args = [str(_BIN / "dg"), "dev", "--host", self.host, "--port", str(self.port)]
        env = {**self.env, "VIRTUAL_ENV": sys.prefix}
        self.services = [start_service("dg-dev", args, env, self.log_dir)]

    def start_separately(self) -> None:
        """`dagster-daemon run` and `dagster-webserver` as two processes, as a deployment runs
        them (on Kubernetes: two pods), loading the code location through `workspace.yaml`."""
        workspace = write_workspace(self.dagster_home)
        daemon = [str(_BIN / "dagster-daemon"), "run", "-w", str(workspace)]
        webserver = [str(_BIN / "dagster-webserver"), "-w", str(workspace)]
        webserver += ["-h", self.host, "-p", str(self.port)]
        self.services = [
            start_service("dagster-daemon", daemon, self.env, self.log_dir),
            start_service("dagster-webserver", webserver, self.env, self.log_dir),
        ]

    def stop(self, timeout: float = 30) -> list[str]:
        """Stop every process; returns those that had to be stopped by force (see
        `stop_services`)."""
        stopped_by_force = stop_services(self.services, timeout)
        self.services = []
        return stopped_by_force

    def stray_processes(self) -> list[psutil.Process]:
        """Processes still running with this DAGSTER_HOME: whatever outlived `stop()`."""
        home = str(self.dagster_home)
        strays = []
        for process in psutil.process_iter():
            try:
                if process.pid != os.getpid() and process.environ().get("DAGSTER_HOME") == home:
                    strays.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return strays

    def logs(self) -> str:
        return "\n".join(service.log_tail() for service in self.services)

    def wait_until_loaded(self, timeout: float = 180) -> None:
        """Wait until the webserver answers and has loaded the code location.

        Raises RuntimeError when a process exits, the location fails to load (with Dagster's
        message), or `timeout` passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            for service in self.services:
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{service.name} exited with code {service.process.returncode}\n"
                        + service.log_tail()
                    )
            entry = self._location_entry()
            if entry and entry["loadStatus"] == "LOADED":
                location = entry["locationOrLoadError"]
                if location["__typename"] == "PythonError":
                    raise RuntimeError(f"the code location failed to load: {location['message']}")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url} did not load the code location in {timeout}s")
            time.sleep(1)

    def _location_entry(self) -> dict | None:
        try:
            workspace = graphql(self.url, _LOCATION_QUERY, timeout=10)["workspaceOrError"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None  # not listening yet
        entries = workspace.get("locationEntries") or []
        return next((entry for entry in entries if entry["name"] == self.location_name), None)
