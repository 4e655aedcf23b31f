"""The ClickHouse table before a sync: created, brought up to the source's columns, taken as
the user made it, or found in need of a rebuild; never changed in a way the user did not ask.

A table pg2ch created (its comment says so) follows SYNC_CONFIG: a column added in Postgres is
added; a column dropped or retyped, or a new `order_by`/`partition_by`, needs a rebuild (a new
table loaded beside it and swapped in), which runs where `on_schema_change: rebuild` allows it
for columns and always for the layout. A table the user created is used as it is, whatever its
partitioning, codecs, TTL, projections or settings, as long as it has pg2ch's columns and a
`ReplacingMergeTree(<version>, _is_deleted)` whose sorting key ends with the primary key;
otherwise, or where SYNC_CONFIG asks for another layout, the sync stops with the differences.
"""

import re
from dataclasses import dataclass, replace

from clickhouse_connect.driver.client import Client

from user_code.sync import ddl
from user_code.sync.errors import SyncError
from user_code.sync.existing_table import ExistingTable, existing_table
from user_code.sync.table import Table
from user_code.sync.target_table import DELETED_COLUMN, TargetTable, cursor_index_name

# Time64 columns (Postgres `time`) need this setting in DDL.
DDL_SETTINGS = {"enable_time_time64_type": 1}


@dataclass(frozen=True)
class Prepared:
    target: TargetTable  # the table to write (ON CLUSTER left out where the database replicates)
    created: bool  # the table did not exist
    rebuild: str | None = None  # why the table must be rebuilt before the sync goes on
    adopted: bool = False  # a table the user created, used as it is
    # Cursor columns of a table the user created that nothing indexes: each run reads them whole.
    unindexed: tuple[str, ...] = ()


def replicated_database(client: Client, database: str) -> bool:
    """A `Replicated` database shares DDL across replicas itself: no ON CLUSTER there."""
    rows = client.query(
        "SELECT engine FROM system.databases WHERE name = {db:String}",
        parameters={"db": database},
    ).result_rows
    return bool(rows) and rows[0][0] == "Replicated"


def create_table(client: Client, target: TargetTable) -> None:
    """The table, and its database where the user may create one, if they do not exist."""
    exists = client.query(
        "SELECT count() FROM system.databases WHERE name = {db:String}",
        parameters={"db": target.database},
    ).result_rows[0][0]
    if not exists:  # a least-privileged user has its database already, and no CREATE DATABASE
        client.command(ddl.create_database_sql(target.database, target.cluster))
    try:
        client.command(ddl.create_table_sql(target), settings=DDL_SETTINGS)
    except Exception as error:  # a layout ClickHouse refuses: the user's to fix
        message = str(error).splitlines()[0][:500]
        raise SyncError(
            f"{target.name}: ClickHouse refused to create the table with order_by "
            f"{list(target.sorting_key)}, partition_by {target.layout.partition_by!r} and "
            f"settings {dict(target.layout.settings)}: {message}"
        ) from None


def prepare(client: Client, table: Table) -> Prepared:
    """The ClickHouse table made ready for the steps. A table replaced whole takes the
    source's columns and layout as they are at each replace."""
    target = table.target
    if target.cluster and replicated_database(client, target.database):
        target = replace(target, cluster=None)
    if table.spec.replaces:
        created = existing_table(client, target) is None
        if created:
            create_table(client, target)
        return Prepared(target, created=created)
    return _prepare_versioned(client, target, table.spec.on_schema_change == "rebuild")


def _prepare_versioned(
    client: Client, target: TargetTable, rebuild_on_schema_change: bool
) -> Prepared:
    existing = existing_table(client, target)
    if existing is None:
        create_table(client, target)
        return Prepared(target, created=True)
    if not existing.created_by_pg2ch:
        _refuse_unusable(existing, target)
    _add_new_columns(client, existing, target)
    if existing.created_by_pg2ch:
        _add_cursor_indexes(client, existing, target)
    layout_changes = _layout_changes(existing, target, existing.created_by_pg2ch)
    changes = _column_changes(existing, target) + layout_changes
    if not existing.created_by_pg2ch:
        if changes:
            raise SyncError(
                f"{target.name}: the table you created differs from SYNC_CONFIG, and pg2ch "
                f"rebuilds only tables it created: {'; '.join(changes)}. Change the table or "
                "SYNC_CONFIG so they agree."
            )
        return Prepared(target, created=False, adopted=True, unindexed=_unindexed(existing, target))
    if not changes:
        return Prepared(target, created=False)
    column_changes = _column_changes(existing, target)
    if column_changes and not rebuild_on_schema_change:
        raise SyncError(
            f"{target.name}: {'; '.join(column_changes)}. Set `on_schema_change: rebuild` to "
            "rebuild the ClickHouse table beside this one and swap it in, or migrate it yourself."
        )
    return Prepared(target, created=False, rebuild="; ".join(changes))


def _refuse_unusable(existing: ExistingTable, target: TargetTable) -> None:
    problems = []
    arguments = existing.engine_arguments()
    version = target.version_column
    if arguments is None or (version and arguments[-2:] != [version, DELETED_COLUMN]):
        wanted = f"ReplacingMergeTree({version}, {DELETED_COLUMN})" if version else "one"
        problems.append(f"engine is {existing.engine}, not {wanted}")
    if existing.sorting_key[-len(target.primary_key) :] != target.primary_key:
        problems.append(
            f"sorting key ({', '.join(existing.sorting_key)}) does not end with the primary key "
            f"({', '.join(target.primary_key)})"
        )
    if existing.columns.get(DELETED_COLUMN) != "UInt8":
        problems.append(f"no {DELETED_COLUMN} UInt8 column")
    if problems:
        raise SyncError(
            f"{target.name}: the existing ClickHouse table cannot take pg2ch's rows: "
            f"{'; '.join(problems)}. Drop it for pg2ch to create it, or change it."
        )


def _add_new_columns(client: Client, existing: ExistingTable, target: TargetTable) -> None:
    """A column added in Postgres is added in ClickHouse: older rows read its default."""
    for column in target.columns:
        if column.name not in existing.columns:
            client.command(
                ddl.add_column_sql(target, column.name, column.clickhouse_type),
                settings=DDL_SETTINGS,
            )


def _add_cursor_indexes(client: Client, existing: ExistingTable, target: TargetTable) -> None:
    """A table pg2ch created before its cursor columns had skip indexes gets them; ClickHouse
    builds them for the parts written before, in the background (until then, those parts are
    read whole, as before)."""
    for column in target.cursor_columns:
        if cursor_index_name(column) not in existing.skip_indexes:
            client.command(ddl.add_cursor_index_sql(target, column))
            client.command(ddl.materialize_cursor_index_sql(target, column))


def _unindexed(existing: ExistingTable, target: TargetTable) -> tuple[str, ...]:
    """Cursor columns neither a skip index nor the sorting key's first column covers."""
    indexed = {_normalized(expression) for expression in existing.skip_indexes.values()}
    indexed.add(_normalized(existing.sorting_key[0]) if existing.sorting_key else "")
    return tuple(c for c in target.cursor_columns if _normalized(c) not in indexed)


def _column_changes(existing: ExistingTable, target: TargetTable) -> list[str]:
    wanted = {column.name: column.clickhouse_type for column in target.columns}
    changes = [
        f"column {name} is {existing.columns[name]} in ClickHouse, {wanted[name]} from Postgres"
        for name in wanted
        if name in existing.columns and existing.columns[name] != wanted[name]
    ]
    dropped = sorted(set(existing.columns) - set(wanted) - {DELETED_COLUMN})
    if dropped:
        changes.append(f"column(s) {', '.join(dropped)} no longer in Postgres")
    return changes


def _normalized(expression: str) -> str:
    return re.sub(r"[\s`]", "", expression)


def _layout_changes(existing: ExistingTable, target: TargetTable, whole: bool) -> list[str]:
    """How the table's layout differs from SYNC_CONFIG's: all of it for a table pg2ch created
    (the config is its layout), only what the config sets for a table the user created."""
    changes = []
    layout = target.layout
    if (whole or layout.order_by) and existing.sorting_key != target.sorting_key:
        changes.append(
            f"order_by is ({', '.join(existing.sorting_key)}), SYNC_CONFIG asks for "
            f"({', '.join(target.sorting_key)})"
        )
    wanted_partition = _normalized(layout.partition_by or "")
    if (whole or layout.partition_by) and _normalized(existing.partition_key) != wanted_partition:
        changes.append(
            f"partition_by is {existing.partition_key or 'none'!r}, SYNC_CONFIG asks for "
            f"{target.layout.partition_by or 'none'!r}"
        )
    return changes


def drop_table(client: Client, target: TargetTable) -> None:
    client.command(ddl.drop_table_sql(target))


def swap_in(client: Client, target: TargetTable, loaded: TargetTable) -> None:
    """`loaded` becomes `target` in one step, readers of `target` seeing the old table or the
    new one, never a mix (an Atomic database's EXCHANGE TABLES); the old one is dropped."""
    client.command(ddl.exchange_sql(target, loaded))
    drop_table(client, loaded)


def beside(target: TargetTable, suffix: str) -> TargetTable:
    """A table of the same columns and layout next to `target`, named `<target><suffix>`."""
    return replace(target, name=f"{target.name}{suffix}")
