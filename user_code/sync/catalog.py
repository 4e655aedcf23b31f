"""What the Postgres catalog says of tables: their columns and types, and their size."""

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.postgres import fetch_all
from user_code.sync.postgres_names import quote_pg_table
from user_code.sync.types import PgColumn, PgType

# The types of the given relations' columns, and every type they rest on (a domain's base
# type, an array's element type), found by following them through pg_type.
_TYPES_SQL = """
WITH RECURSIVE used(oid) AS (
    SELECT atttypid FROM pg_catalog.pg_attribute
    WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped
  UNION
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END
    FROM pg_catalog.pg_type t JOIN used ON t.oid = used.oid
    WHERE t.typtype = 'd' OR (t.typcategory = 'A' AND t.typelem <> 0)
)
SELECT oid::bigint, typname::text, typtype::text, typbasetype::bigint, typtypmod,
       typelem::bigint, typcategory::text, typnotnull
FROM pg_catalog.pg_type WHERE oid IN (SELECT oid FROM used)
"""

_COLUMNS_SQL = """
SELECT attrelid::bigint, attname::text, atttypid::bigint, atttypmod, attnotnull,
       format_type(atttypid, atttypmod)
FROM pg_catalog.pg_attribute
WHERE attrelid = ANY($1::oid[]) AND attnum > 0 AND NOT attisdropped
ORDER BY attrelid, attnum
"""

_PAGES_SQL = "SELECT pg_relation_size(to_regclass($1)) / current_setting('block_size')::bigint"


def columns_of(connection: adbc.Connection, relations: list[int]) -> dict[int, list[PgColumn]]:
    """The columns of each relation (by oid), domains resolved to their base type: two queries
    however many relations."""
    relation_array = "{" + ",".join(str(oid) for oid in relations) + "}"
    types = {row[0]: row for row in fetch_all(connection, _TYPES_SQL, (relation_array,))}

    def resolve(oid: int, typmod: int) -> tuple[PgType, bool]:
        _, name, kind, base, base_typmod, element, category, not_null = types[oid]
        if kind == "d":  # a domain: its base type, its typmod, its NOT NULL
            resolved, base_not_null = resolve(base, base_typmod if typmod == -1 else typmod)
            return resolved, not_null or base_not_null
        if category == "A" and element:
            return PgType(name, typmod, resolve(element, typmod)[0]), False
        return PgType("enum" if kind == "e" else name, typmod), False

    columns: dict[int, list[PgColumn]] = {oid: [] for oid in relations}
    for relation, name, type_oid, typmod, not_null, declared in fetch_all(
        connection, _COLUMNS_SQL, (relation_array,)
    ):
        pg_type, domain_not_null = resolve(type_oid, typmod)
        columns[relation].append(
            PgColumn(name, pg_type, not (not_null or domain_not_null), declared)
        )
    return columns


def relation_pages(connection: adbc.Connection, source: str) -> int:
    pages: int = fetch_all(connection, _PAGES_SQL, (quote_pg_table(source),))[0][0]
    return pages
