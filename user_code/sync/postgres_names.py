"""Postgres names: `schema.table` parsed as written, and identifiers quoted the SQL way."""

import re

# `schema.table`, each part double-quoted the SQL way, or plain: taken as written, any
# character but a dot, not starting with a double quote.
_NAME_PART = r'"(?:[^"]|"")+"|[^".][^.]*'
_QUALIFIED_NAME = re.compile(rf"({_NAME_PART})\.({_NAME_PART})")


def quote_pg_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def split_table_name(source: str) -> tuple[str, str]:
    """(schema, table) of `public.customers` or `public."Mixed Case"`; ValueError otherwise.

    A plain part is the name exactly as written (no case folding); a quoted part is unquoted.
    """
    match = _QUALIFIED_NAME.fullmatch(source)
    if match is None:
        raise ValueError('must be schema.table, e.g. public.customers or public."Mixed Case"')
    schema, table = match.groups()
    return _unquote(schema), _unquote(table)


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def quote_pg_table(source: str) -> str:
    return ".".join(quote_pg_name(part) for part in split_table_name(source))
