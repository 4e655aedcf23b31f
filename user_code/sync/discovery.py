"""The tables of a Postgres database a pattern can match: ordinary and partitioned tables,
with their primary keys, columns and the columns their indexes lead with, read from the
catalog in three queries.

Views, materialized views, foreign and temporary tables are not listed, nor the partitions
of a partitioned table: a partitioned table is synced as one table, through its parent.
"""

from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.catalog import columns_of
from user_code.sync.postgres import fetch_all
from user_code.sync.postgres_names import quote_pg_name
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
        WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY n.nspname, c.relname
"""


@dataclass(frozen=True)
class CatalogTable:
    schema: str
    name: str
    partitioned: bool
    selectable: bool  # the sync's role may SELECT from it
    primary_key: tuple[str, ...]  # in the constraint's order; () without a primary key
    columns: tuple[PgColumn, ...]
    indexed: frozenset[str] = frozenset()  # columns an index leads with: ranges on them are cheap

    @property
    def source(self) -> str:
        """`schema.table`, each part quoted the SQL way."""
        return f"{quote_pg_name(self.schema)}.{quote_pg_name(self.name)}"

    def column(self, name: str) -> PgColumn | None:
        return next((column for column in self.columns if column.name == name), None)


def list_tables(connection: adbc.Connection) -> list[CatalogTable]:
    rows = fetch_all(connection, _TABLES_SQL)
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
        )
        for oid, schema, name, partitioned, selectable, key, indexed in rows
    ]
