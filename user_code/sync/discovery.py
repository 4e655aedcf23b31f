"""The tables of a Postgres database a pattern can match: ordinary and partitioned tables,
with their primary keys, unique keys, columns and the columns their indexes lead with, read
from the catalog in three queries; and one such table by name, for a run.

Views, materialized views, foreign and temporary tables are not listed, nor the partitions
of a partitioned table: a partitioned table is synced as one table, through its parent.
"""

import json
from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.catalog import columns_of
from user_code.sync.errors import SyncError
from user_code.sync.postgres import fetch_all
from user_code.sync.postgres_names import quote_pg_name, quote_pg_table
from user_code.sync.types import PgColumn

_TABLES_SQL = """
SELECT c.oid::bigint, n.nspname::text, c.relname::text, c.relkind = 'p',
       has_table_privilege(c.oid, 'SELECT'),
       (SELECT array_agg(a.attname::text ORDER BY k.position)
        FROM pg_catalog.pg_constraint p,
             unnest(p.conkey) WITH ORDINALITY AS k(attnum, position)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE p.conrelid = c.oid AND p.contype = 'p'),
       -- the first column of each index that can serve a range (btree, brin), not partial
       (SELECT array_agg(DISTINCT a.attname::text)
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_am am ON am.oid = ic.relam AND am.amname IN ('btree', 'brin')
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL),
       -- the columns of each unique index (the primary key's among them), not partial
       (SELECT json_agg(u.columns)::text FROM (
          SELECT array_agg(a.attname::text ORDER BY a.attname) AS columns
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
          WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
          GROUP BY i.indexrelid) u)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""
_ORDER = " ORDER BY n.nspname, c.relname"
_ONE_TABLE = " AND c.oid = to_regclass($1)"


@dataclass(frozen=True)
class CatalogTable:
    schema: str
    name: str
    partitioned: bool
    selectable: bool  # the sync's role may SELECT from it
    primary_key: tuple[str, ...]  # in the constraint's order; () without a primary key
    columns: tuple[PgColumn, ...]
    indexed: frozenset[str] = frozenset()  # columns an index leads with: ranges on them are cheap
    unique_keys: frozenset[frozenset[str]] = frozenset()  # the columns of each unique index

    @property
    def source(self) -> str:
        """`schema.table`, each part quoted the SQL way."""
        return f"{quote_pg_name(self.schema)}.{quote_pg_name(self.name)}"

    def column(self, name: str) -> PgColumn | None:
        return next((column for column in self.columns if column.name == name), None)


def list_tables(connection: adbc.Connection) -> list[CatalogTable]:
    return _tables(connection, _TABLES_SQL + _ORDER)


def describe_table(connection: adbc.Connection, source: str) -> CatalogTable:
    """One table, named `schema.table` as written or quoted the SQL way."""
    found = _tables(connection, _TABLES_SQL + _ONE_TABLE, (quote_pg_table(source),))
    if not found:
        raise SyncError(f"{source}: no such table in Postgres; check `source` in SYNC_CONFIG.")
    return found[0]


def _tables(
    connection: adbc.Connection, sql: str, parameters: tuple[str, ...] = ()
) -> list[CatalogTable]:
    rows = fetch_all(connection, sql, parameters)
    columns = columns_of(connection, [row[0] for row in rows]) if rows else {}
    return [
        CatalogTable(
            schema,
            name,
            partitioned,
            selectable,
            tuple(key or ()),
            tuple(columns[oid]),
            frozenset(indexed or ()),
            frozenset(frozenset(unique) for unique in json.loads(unique_keys or "[]")),
        )
        for oid, schema, name, partitioned, selectable, key, indexed, unique_keys in rows
    ]
