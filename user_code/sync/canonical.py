"""Each engine's own rendering of a value as one canonical text, for the content comparison.

Postgres renders its values and ClickHouse renders what it stored, each in SQL of its own,
into the same text: integers in decimal, floats as their IEEE 754 bits, decimals as written
without trailing zeros, dates as days and times and time stamps as microseconds since the
epoch (UTC), bytes as hex, arrays as their length and each element in turn, and every value
kept as Postgres text (JSON, intervals, enums, ...) as that text. None of it goes through the
sync's own read casts, Arrow or inserts, so a conversion the sync gets wrong the same way every
time still shows as a difference. NULL renders as `\\N`, which no escaped value can be.

Postgres' text of a value depends on session settings (float digits, interval style, time
zone, date style), which the sync's sessions set for their reads: Postgres renders on
settings the comparison sets itself (`rendering_session`), those of the text ClickHouse is
meant to hold, so a read on other settings shows too.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.errors import SyncError
from user_code.sync.postgres import begin, end
from user_code.sync.types import ColumnMapping, PgColumn, PgType

RENDERING_SETTINGS = {
    "extra_float_digits": "1",  # floats in JSON: the shortest text that reads back exactly
    "IntervalStyle": "iso_8601",  # P1Y2M3DT4H5M6.789S
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",  # timestamptz in JSON: +00:00
}


@dataclass(frozen=True)
class Rendering:
    """SQL of each engine over `{}` (or `{0}`, where it names the column more than once): the
    quoted column, or an array element; its value is text."""

    postgres: str
    clickhouse: str


_AS_TEXT = Rendering("{}::text", "{}")
_DECIMAL_TEXT = Rendering("{}::text", "toString({})")
_FLOAT_BITS = "lower(hex(reverse(reinterpretAsFixedString({}))))"  # stored little-endian
_MICROSECONDS = "(extract(epoch FROM {}) * 1000000)::bigint::text"

RENDERINGS: dict[str, Rendering] = {
    "int2": _DECIMAL_TEXT,
    "int4": _DECIMAL_TEXT,
    "int8": _DECIMAL_TEXT,
    "float4": Rendering("encode(float4send({}), 'hex')", _FLOAT_BITS),
    "float8": Rendering("encode(float8send({}), 'hex')", _FLOAT_BITS),
    "numeric": _AS_TEXT,  # unconstrained numeric, kept as its text (String)
    "bool": _DECIMAL_TEXT,  # true / false in both
    "text": _AS_TEXT,
    "varchar": _AS_TEXT,
    "name": _AS_TEXT,
    "bpchar": Rendering("textin(bpcharout({}))", "{}"),  # ::text would drop the padding
    "bytea": Rendering("encode({}, 'hex')", "lower(hex({}))"),
    "uuid": _DECIMAL_TEXT,
    "date": Rendering("({} - DATE '1970-01-01')::text", "toString(toInt32({}))"),
    "time": Rendering(
        _MICROSECONDS, "toString(toInt64(CAST({} AS Nullable(Decimal64(6))) * 1000000))"
    ),
    "timestamp": Rendering(_MICROSECONDS, "toString(toUnixTimestamp64Micro({}))"),
    "timestamptz": Rendering(_MICROSECONDS, "toString(toUnixTimestamp64Micro({}))"),
    **dict.fromkeys(
        ["timetz", "interval", "json", "jsonb", "inet", "cidr", "macaddr", "xml", "enum"],
        _AS_TEXT,
    ),
}
# numeric(p,s) stored as Decimal: ClickHouse writes no trailing zeros, trim_scale drops them.
_DECIMAL = Rendering("trim_scale({})::text", "toString({})")


def _scalar(table: str, column: str, pg_type: PgType, clickhouse_type: str) -> Rendering:
    if pg_type.name == "numeric" and "Decimal(" in clickhouse_type:
        return _DECIMAL
    rendering = RENDERINGS.get(pg_type.name)
    if rendering is None:
        raise SyncError(f"{table}.{column}: no canonical rendering of {pg_type.name} to compare.")
    return rendering


# The escapes: a value's text can then hold neither the separators nor a lone `\N`.
def _pg_escaped(sql: str) -> str:
    return f"replace(replace(replace({sql}, '\\', '\\\\'), chr(31), '\\s'), ',', '\\c')"


def _ch_escaped(sql: str) -> str:
    return (
        f"replaceAll(replaceAll(replaceAll({sql}, '\\\\', '\\\\\\\\'), char(31), '\\\\s'), "
        "',', '\\\\c')"
    )


def _value(rendering: Rendering, pg_sql: str, ch_sql: str) -> Rendering:
    """A value's escaped text, `\\N` for NULL."""
    postgres = f"coalesce({_pg_escaped(rendering.postgres.format(pg_sql))}, '\\N')"
    clickhouse = f"ifNull({_ch_escaped(rendering.clickhouse.format(ch_sql))}, '\\\\N')"
    return Rendering(postgres, clickhouse)


def column_text(table: str, column: PgColumn, mapping: ColumnMapping) -> Rendering:
    """The canonical text of `column` in each engine, over `{}` (the quoted column name)."""
    element = column.type.element
    if element is None or not mapping.is_array:  # a scalar, or an array kept as JSON text
        pg_type = column.type if element is None else PgType("json")
        scalar = _scalar(table, column.name, pg_type, mapping.clickhouse_type)
        postgres = scalar.postgres if element is None else "to_json({})::text"
        return _value(Rendering(postgres, scalar.clickhouse), "{}", "{}")
    each = _value(_scalar(table, column.name, element, mapping.clickhouse_type), "e", "e")
    # A nullable array kept as a native Array holds NULL as [] (`nullable_arrays: array`).
    array = "coalesce({0}, '{{}}')" if column.nullable else "{0}"
    postgres = (
        f"cardinality({array})::text || ':' || coalesce((SELECT string_agg({each.postgres}, ',' "
        f"ORDER BY o) FROM unnest({array}) WITH ORDINALITY AS u(e, o)), '')"
    )
    clickhouse = (
        f"concat(toString(length({{0}})), ':', "
        f"arrayStringConcat(arrayMap(e -> {each.clickhouse}, {{0}}), ','))"
    )
    return Rendering(postgres, clickhouse)


@contextmanager
def rendering_session(connection: adbc.Connection) -> Iterator[None]:
    """A read-only transaction on RENDERING_SETTINGS; the session's own return with its end."""
    begin(connection)
    try:
        with connection.cursor() as cursor:
            for name, value in RENDERING_SETTINGS.items():
                cursor.execute(f"SET LOCAL {name} = '{value}'")
        yield
    finally:
        end(connection)
