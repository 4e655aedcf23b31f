"""A ClickHouse table as it exists: its columns, engine, sorting and partition keys, comment
and skip indexes, read from ClickHouse's system tables."""

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from user_code.sync import ddl
from user_code.sync.target_table import TargetTable

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
