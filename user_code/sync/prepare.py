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
from user_code.sync.target_table import DELETED_COLUMN, TargetTable, cursor_index_name

# Time64 columns (Postgres `time`) need this setting in DDL.
DDL_SETTINGS = {"enable_time_time64_type": 1}

_TABLE_SQL = """
SELECT engine_full, sorting_key, partition_key, comment
FROM system.tables WHERE database = {db:String} AND name = {t:String}
"""
_COLUMNS_SQL = """
SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}
ORDER BY position
"""
_SKIP_INDEXES_SQL = """
SELECT name, expr FROM system.data_skipping_indices
WHERE database = {db:String} AND table = {t:String}
"""
_ENGINE = re.compile(r"(?:Shared|Replicated)?ReplacingMergeTree(?:\((?P<args>[^)]*)\))?")


@dataclass(frozen=True)
class ExistingTable:
    columns: dict[str, str]  # name -> ClickHouse type
    engine_full: str
    sorting_key: tuple[str, ...]
    partition_key: str
    comment: str
    skip_indexes: dict[str, str]  # name -> expression

    @property
    def created_by_pg2ch(self) -> bool:
        return self.comment == ddl.TABLE_COMMENT

    @property
    def engine(self) -> str:
        """The engine with its arguments, e.g. `ReplacingMergeTree(updated_at, _is_deleted)`."""
        match = re.match(r"\w+(\([^)]*\))?", self.engine_full)
        return match.group(0) if match else self.engine_full

    def engine_arguments(self) -> list[str] | None:
        """The ReplacingMergeTree's last arguments (version, is_deleted), or None if another."""
        match = _ENGINE.match(self.engine_full)
        if match is None:
            return None
        args = [a.strip().strip("`") for a in (match["args"] or "").split(",") if a.strip()]
        return [a for a in args if not a.startswith("'")]  # a Replicated engine's path, replica


@dataclass(frozen=True)
class Prepared:
    created: bool  # the table did not exist
    rebuild: str | None = None  # why the table must be rebuilt before the sync goes on
    adopted: bool = False  # a table the user created, used as it is
    # Cursor columns of a table the user created that nothing indexes: each run reads them whole.
    unindexed: tuple[str, ...] = ()


def existing_table(client: Client, target: TargetTable) -> ExistingTable | None:
    parameters = {"db": target.database, "t": target.name}
    rows = client.query(_TABLE_SQL, parameters=parameters).result_rows
    if not rows:
        return None
    engine_full, sorting_key, partition_key, comment = rows[0]
    rows = client.query(_COLUMNS_SQL, parameters=parameters).result_rows
    columns = {name: clickhouse_type for name, clickhouse_type in rows}
    rows = client.query(_SKIP_INDEXES_SQL, parameters=parameters).result_rows
    indexes = {str(name): str(expression) for name, expression in rows}
    return ExistingTable(
        columns, engine_full, key_columns(sorting_key), partition_key, comment, indexes
    )


def key_columns(key: str) -> tuple[str, ...]:
    """`(a, b)`, `a, b` or `(a)` as ("a", "b"): the top-level parts of a key expression."""
    key = key.strip()
    while key.startswith("(") and _closing_paren(key) == len(key) - 1:
        key = key[1:-1].strip()
    parts, depth, current = [], 0, ""
    for char in key:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return tuple(part.strip().strip("`") for part in parts if part.strip())


def _closing_paren(text: str) -> int:
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index
    return -1


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


def prepare_table(client: Client, target: TargetTable, rebuild_on_schema_change: bool) -> Prepared:
    existing = existing_table(client, target)
    if existing is None:
        create_table(client, target)
        return Prepared(created=True)
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
        return Prepared(created=False, adopted=True, unindexed=_unindexed(existing, target))
    if not changes:
        return Prepared(created=False)
    column_changes = _column_changes(existing, target)
    if column_changes and not rebuild_on_schema_change:
        raise SyncError(
            f"{target.name}: {'; '.join(column_changes)}. Set `on_schema_change: rebuild` to "
            "rebuild the ClickHouse table beside this one and swap it in, or migrate it yourself."
        )
    return Prepared(created=False, rebuild="; ".join(changes))


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
