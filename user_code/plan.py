"""The plan: which tables are synced, each with its key, mode, cursors and ClickHouse table, and
which are skipped and why. `python -m user_code.plan` prints it; with `--ddl`, the CREATE TABLE
for each table, as pg2ch would create it but for its comment: run as printed, or changed within
what pg2ch accepts, it makes a table of the user's, which pg2ch fills and never rebuilds.

Settings are resolved per table, later over earlier: built-in defaults, then `defaults` (a
field naming a column only where the table has that column), then every entry of `tables`
that matches the table, in order. With the catalog (PG_URL set), every matched table is
checked against it here. One that cannot be synced in its mode is skipped with the reason
where only patterns match it, and is an error where an entry names it: a pattern may pass
over what it cannot sync, a table the user named is a request. Without the catalog, the checks
happen when a run starts.
"""

import argparse
import os
import re
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from user_code.config import PLAIN_NAME, SyncConfig, TableEntry, load_sync_config
from user_code.resources import ClickHouseResource
from user_code.sync.ddl import create_table_sql
from user_code.sync.discovery import CatalogTable, list_tables
from user_code.sync.errors import SyncError
from user_code.sync.postgres import connect
from user_code.sync.postgres_names import split_table_name
from user_code.sync.settings import MODE_CURSORS, TableSpec
from user_code.sync.table import read_table
from user_code.sync.validate import check_table

_COLUMN_DEFAULTS = ("created_at", "updated_at", "soft_delete")
_NO_SUCH_TABLE = (
    "no such table in Postgres (views, materialized views, foreign tables and the partitions "
    "of a partitioned table are never synced): check the schema and the name, quoted the SQL "
    'way where it is not all lower case (public."Orders")'
)


class SkippedTable(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    reason: str


class Plan(BaseModel):
    """The resolved tables; stored as JSON with the code location's definitions, so that run
    processes build exactly the tables the code server planned (definitions.py)."""

    model_config = ConfigDict(frozen=True)

    tables: list[TableSpec]
    skipped: list[SkippedTable] = []


def derived_target(table: str) -> str:
    """A table name as a ClickHouse table and asset name: as it is when it is a plain name,
    else lower case with every other character turned into `_`."""
    if PLAIN_NAME.fullmatch(table):
        return table
    derived = re.sub(r"[^a-z0-9_]", "_", table.lower())
    return derived if PLAIN_NAME.fullmatch(derived) else f"_{derived}"


def plan_tables(config: SyncConfig, catalog: list[CatalogTable] | None = None) -> Plan:
    """The plan of `config`; `catalog` (the database's tables) where `config.needs_catalog`."""
    if catalog is None:
        if config.needs_catalog:
            raise SyncError("SYNC_CONFIG needs the Postgres catalog to be planned: set PG_URL.")
        plan = Plan(tables=[_spec(config, entry.source, None) for entry in config.tables])
    else:
        plan = _plan_from_catalog(config, catalog)
    _refuse_shared_targets(plan.tables)
    return plan


def _plan_from_catalog(config: SyncConfig, catalog: list[CatalogTable]) -> Plan:
    tables: list[TableSpec] = []
    skipped: list[SkippedTable] = []
    refused: list[SkippedTable] = []
    listed = {(table.schema, table.name) for table in catalog}
    for entry in config.tables:
        if not entry.is_pattern and split_table_name(entry.source) not in listed:
            refused.append(SkippedTable(source=entry.source, reason=_NO_SUCH_TABLE))
    for table in catalog:
        entries = [entry for entry in config.tables if entry.matches(table.schema, table.name)]
        if not entries:
            continue
        try:
            tables.append(_spec(config, table.source, table))
        except SyncError as reason:
            unsyncable = SkippedTable(source=table.source, reason=str(reason))
            named = any(not entry.is_pattern for entry in entries)
            (refused if named else skipped).append(unsyncable)
    if refused:
        raise SyncError(
            "SYNC_CONFIG names tables that cannot be synced; make each one syncable as its "
            "reason says, or take its entry out:\n"
            + "\n".join(f"  {table.source}: {table.reason}" for table in refused)
        )
    return Plan(tables=tables, skipped=skipped)


def _spec(config: SyncConfig, source: str, table: CatalogTable | None) -> TableSpec:
    """One table's settings, resolved and (with the catalog) checked; SyncError: why not."""
    schema, name = split_table_name(source)
    settings: dict[str, Any] = {"target": derived_target(name)}
    for field, value in config.defaults.given().items():
        if field not in _COLUMN_DEFAULTS or table is None or table.column(value):
            settings[field] = value
    explicit: dict[str, Any] = {}
    for entry in config.tables:
        if entry.matches(schema, name):
            explicit.update(_entry_settings(entry))
    settings.update(explicit)
    if table is not None:
        _from_catalog(settings, explicit, table)
    settings.setdefault("mode", "incremental")
    if settings["mode"] != "incremental":
        settings.pop("updated_at", None)
    if settings["mode"] == "replace":
        settings.pop("created_at", None)
        settings["hard_deletes"] = False  # every run reads the whole table
    try:
        resolved = TableSpec(source=source, **settings)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise SyncError(problems) from None
    if table is not None:
        check_table(resolved, table)
    return resolved


def _entry_settings(entry: TableEntry) -> dict[str, Any]:
    given = entry.given()
    given.pop("source")
    given.pop("exclude", None)
    return given


def _from_catalog(settings: dict[str, Any], explicit: dict[str, Any], table: CatalogTable) -> None:
    """The key and the mode the catalog decides: the primary-key constraint where no key is
    named, and the mode `auto` picks from the cursor columns the table has."""
    settings.setdefault("primary_key", table.primary_key)
    if not settings["primary_key"]:
        raise SyncError("no primary key: add one, or name primary_key in its entry")
    mode = settings.setdefault("mode", "incremental")
    if mode == "auto":
        created, updated = bool(settings.get("created_at")), bool(settings.get("updated_at"))
        mode = "incremental" if created and updated else "append" if created else "replace"
        settings["mode"] = mode
    if mode == "append" and "soft_delete" not in explicit:
        settings.pop("soft_delete", None)  # append reads a row once: a later delete is unseen
    for field in MODE_CURSORS[mode]:
        if not settings.get(field):
            raise SyncError(
                f"mode {mode} needs `{field}`, and no column of the table is named as it: "
                "name the column, or choose another mode (`auto` picks from the columns)"
            )
    cursors = dict.fromkeys(settings[field] for field in MODE_CURSORS[mode])
    settings["unindexed_cursors"] = tuple(c for c in cursors if c not in table.indexed)


def _refuse_shared_targets(tables: list[TableSpec]) -> None:
    by_target: dict[str, list[str]] = {}
    for spec in tables:
        by_target.setdefault(spec.target, []).append(spec.source)
    for target, sources in by_target.items():
        if len(sources) > 1:
            raise SyncError(
                f"two tables write to the same ClickHouse table {target!r}: "
                f"{' and '.join(sources)}; set `target` in an entry for one of them."
            )


def describe(plan: Plan) -> str:
    lines = [f"{len(plan.tables)} table(s) to sync:"]
    for spec in plan.tables:
        cursors = ", ".join(spec.cursors) or "none"
        lines.append(
            f"  {spec.source} -> {spec.target}  mode {spec.mode}, "
            f"key ({', '.join(spec.primary_key)}), cursors: {cursors}"
        )
        for column in spec.unindexed_cursors:
            lines.append(
                f"    no index on `{column}`: every run scans the table whole; "
                f"add one: {spec.index_advice(column)}"
            )
    if plan.skipped:
        lines.append(describe_skipped(plan))
    return "\n".join(lines)


def describe_skipped(plan: Plan) -> str:
    lines = [f"{len(plan.skipped)} table(s) skipped:"]
    lines += [f"  {skipped.source}: {skipped.reason}" for skipped in plan.skipped]
    return "\n".join(lines)


def load_plan(config: SyncConfig | None = None, pg_url: str | None = None) -> Plan:
    """The plan of `config` (default: SYNC_CONFIG), from the catalog of `pg_url` (default:
    PG_URL): each table checked, and told where a cursor column has no index. Without a URL,
    from the config alone, if it names every table's key and cursors."""
    config = config or load_sync_config()
    url = pg_url or os.environ.get("PG_URL")
    if not url:  # the config alone, where it names every table's key and cursors
        return plan_tables(config)
    with connect(url) as connection:
        return plan_tables(config, list_tables(connection))


def create_statements(plan: Plan, pg_url: str, clickhouse: ClickHouseResource) -> str:
    """The CREATE TABLE of each planned table, as a table of the user's."""
    statements = []
    with connect(pg_url) as connection:
        for spec in plan.tables:
            table = read_table(connection, spec, clickhouse.database, clickhouse.cluster)
            statements.append(create_table_sql(table.target, comment=None) + ";")
    return "\n\n".join(statements)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m user_code.plan", description=__doc__)
    parser.add_argument(
        "--ddl", action="store_true", help="print the CREATE TABLE of each planned table"
    )
    arguments = parser.parse_args()
    try:
        plan = load_plan()
        if not arguments.ddl:
            print(describe(plan))
            return 0
        pg_url = os.environ.get("PG_URL")
        if not pg_url:
            raise SyncError("--ddl reads each table's columns from Postgres: set PG_URL.")
        clickhouse = ClickHouseResource(
            url=os.environ.get("CLICKHOUSE_URL", "chdb:///?database=default"),
            cluster=os.environ.get("CLICKHOUSE_CLUSTER", ""),
        )
        print(create_statements(plan, pg_url, clickhouse))
    except SyncError as error:
        print(f"pg2ch: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
