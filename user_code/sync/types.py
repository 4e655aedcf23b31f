"""Postgres types -> ClickHouse types: the one table that decides how every column is stored.

Each rule names the ClickHouse type and, where Arrow has no lossless native form for the
Postgres value, the cast applied when reading (`numeric::text` keeps every digit and
ClickHouse parses the text into a Decimal on insert). A type with no rule is an error,
never a silently altered value.
"""

from collections.abc import Callable
from dataclasses import dataclass

from user_code.sync.errors import SyncError

DATETIME = "DateTime64(6, 'UTC')"
MAX_DECIMAL_PRECISION = 76


@dataclass(frozen=True)
class PgType:
    """A column type as the catalog knows it, domains already resolved to their base type."""

    name: str  # pg_type.typname of the base type; "enum" for every enum
    typmod: int = -1
    element: "PgType | None" = None  # set for arrays


@dataclass(frozen=True)
class PgColumn:
    name: str
    type: PgType
    nullable: bool
    declared_type: str  # as Postgres prints it (`format_type`): numeric(12,2), a domain's name


@dataclass(frozen=True)
class TypeRule:
    clickhouse: str | Callable[[int], str]
    read_cast: str | None = None  # Postgres type the value is cast to when read

    def clickhouse_type(self, typmod: int) -> str:
        return self.clickhouse(typmod) if callable(self.clickhouse) else self.clickhouse


def _numeric(typmod: int) -> str:
    """numeric(p,s) -> Decimal(p,s); unconstrained numeric keeps all its digits as text."""
    if typmod < 4:
        return "String"
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0x7FF
    if precision > MAX_DECIMAL_PRECISION or scale > precision:
        return "String"
    return f"Decimal({precision}, {scale})"


_TEXT = TypeRule("String")
_AS_TEXT = TypeRule("String", read_cast="text")

RULES: dict[str, TypeRule] = {
    "int2": TypeRule("Int16"),
    "int4": TypeRule("Int32"),
    "int8": TypeRule("Int64"),
    "float4": TypeRule("Float32"),
    "float8": TypeRule("Float64"),
    "numeric": TypeRule(_numeric, read_cast="text"),
    "bool": TypeRule("Bool"),
    "text": _TEXT,
    "varchar": _TEXT,
    "bpchar": _TEXT,  # char(n) keeps its padding, as Postgres returns it
    "name": _TEXT,
    "bytea": TypeRule("String"),
    "uuid": TypeRule("UUID", read_cast="text"),
    "date": TypeRule("Date32"),
    "time": TypeRule("Time64(6)"),
    "timetz": _AS_TEXT,
    "timestamp": TypeRule(DATETIME),  # wall time stored as UTC, microseconds kept
    "timestamptz": TypeRule(DATETIME),
    "interval": _AS_TEXT,  # ISO 8601 (P1Y2M3DT4H5M6.789S): months, days and time stay apart
    "json": _AS_TEXT,
    "jsonb": _AS_TEXT,
    "inet": _AS_TEXT,  # ClickHouse's IPv4/IPv6 would drop the netmask
    "cidr": _AS_TEXT,
    "macaddr": _AS_TEXT,
    "xml": _AS_TEXT,
    "enum": _AS_TEXT,
}


@dataclass(frozen=True)
class ColumnMapping:
    """How one source column is read from Postgres and stored in ClickHouse."""

    name: str
    clickhouse_type: str
    read_expression: str = "{}"  # SQL applied to the quoted column name when reading

    @property
    def is_array(self) -> bool:
        return self.clickhouse_type.startswith("Array(")

    def read_sql(self, quoted_name: str) -> str:
        return self.read_expression.format(quoted_name)


def _rule(table: str, column: PgColumn, pg_type: PgType) -> TypeRule:
    rule = RULES.get(pg_type.name)
    if rule is None:
        raise SyncError(
            f"{table}.{column.name}: Postgres type {pg_type.name!r} has no lossless ClickHouse "
            "form; cast it in a view (and sync the view) or leave the column out of the source."
        )
    return rule


def map_column(table: str, column: PgColumn, null_array_as_empty: bool = False) -> ColumnMapping:
    """`null_array_as_empty`: keep a nullable array column as a native Array, NULL read as []."""
    element = column.type.element
    if element is None:
        rule = _rule(table, column, column.type)
        clickhouse_type = rule.clickhouse_type(column.type.typmod)
        if column.nullable:
            clickhouse_type = f"Nullable({clickhouse_type})"
        return ColumnMapping(column.name, clickhouse_type, _cast(rule.read_cast))
    rule = _rule(table, column, element)
    read_expression = _cast(rule.read_cast and f"{rule.read_cast}[]")
    if column.nullable and null_array_as_empty:
        read_expression = f"coalesce({read_expression}, '{{{{}}}}')"
    elif column.nullable:
        # ClickHouse arrays cannot be NULL: a nullable array column is kept as its JSON text,
        # so NULL, [] and [null] stay three different values.
        return ColumnMapping(column.name, "Nullable(String)", "to_json({})::text")
    return ColumnMapping(
        column.name, f"Array(Nullable({rule.clickhouse_type(element.typmod)}))", read_expression
    )


def _cast(read_cast: str | None) -> str:
    return f"{{}}::{read_cast}" if read_cast else "{}"
