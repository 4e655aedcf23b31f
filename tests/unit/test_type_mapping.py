"""The type table, without a database: typmods, nullability, arrays, unknown types."""

import pytest

from user_code.sync.canonical import RENDERINGS
from user_code.sync.errors import SyncError
from user_code.sync.types import RULES, PgColumn, PgType, map_column


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | scale) + 4  # how Postgres stores numeric(p,s)


def column(type_name: str, typmod: int = -1, nullable: bool = False, element=None) -> PgColumn:
    return PgColumn("c", PgType(type_name, typmod, element), nullable, type_name)


@pytest.mark.parametrize(
    ("typmod", "expected"),
    [
        (numeric_typmod(12, 2), "Decimal(12, 2)"),
        (numeric_typmod(76, 38), "Decimal(76, 38)"),
        (numeric_typmod(77, 0), "String"),  # beyond ClickHouse's Decimal256
        (-1, "String"),  # unconstrained: every digit kept as text
    ],
)
def test_numeric_typmods(typmod, expected):
    mapping = map_column("t", column("numeric", typmod))
    assert mapping.clickhouse_type == expected
    assert mapping.read_sql('"c"') == '"c"::text'


def test_nullable_columns_are_nullable_in_clickhouse():
    assert map_column("t", column("int8", nullable=True)).clickhouse_type == "Nullable(Int64)"
    assert map_column("t", column("timestamptz")).clickhouse_type == "DateTime64(6, 'UTC')"


def test_arrays_native_when_not_null_and_json_text_when_nullable():
    array = column("_int4", element=PgType("int4"))
    assert map_column("t", array).clickhouse_type == "Array(Nullable(Int32))"
    nullable = column("_int4", nullable=True, element=PgType("int4"))
    mapping = map_column("t", nullable)
    assert mapping.clickhouse_type == "Nullable(String)"
    assert mapping.read_sql('"c"') == 'to_json("c")::text'
    native = map_column("t", nullable, null_array_as_empty=True)
    assert native.clickhouse_type == "Array(Nullable(Int32))"
    assert native.read_sql('"c"') == "coalesce(\"c\", '{}')"


def test_a_type_without_a_rule_names_table_column_and_type():
    with pytest.raises(SyncError, match=r"public\.t\.c: Postgres type 'money' has no lossless"):
        map_column("public.t", column("money"))


def test_every_mapped_type_has_a_canonical_rendering_for_the_content_comparison():
    assert set(RULES) <= set(RENDERINGS)
