"""Every mapped Postgres type round-trips its edge values and NULL into ClickHouse unchanged,
on both read paths."""

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sync_support import demo_config, engine_table, execute

from user_code.sync import SyncError
from user_code.sync.compare import compare_content
from user_code.sync.load import StepResult
from user_code.sync.table import Session, Table
from user_code.sync.table_sync import new_records, snapshot
from user_code.sync.watermark import Cursor

WIDEST_DECIMAL = "12345678901234567890123456789012345678.12345678901234567890123456789012345678"
LONG_NUMERIC = "123456789012345678901234567890.1234567890123456789"
TINY_NUMERIC = "-0.000000000000000000001"

# (Postgres column type, SQL literals inserted, ClickHouse type, ClickHouse expression read
#  back, the values expected from ClickHouse)
CASES = [
    ("smallint", ["-32768", "32767", "NULL"], "Nullable(Int16)", "v", [-32768, 32767, None]),
    ("integer", ["-2147483648", "2147483647"], "Nullable(Int32)", "v", [-(2**31), 2**31 - 1]),
    ("bigint NOT NULL", ["-9223372036854775808", "9223372036854775807"], "Int64", "v",
     [-(2**63), 2**63 - 1]),
    ("numeric(12,2)", ["1234567890.12", "-0.01", "0"], "Nullable(Decimal(12, 2))", "v",
     [Decimal("1234567890.12"), Decimal("-0.01"), Decimal("0")]),
    ("numeric(76,38)", [f"'{WIDEST_DECIMAL}'"], "Nullable(Decimal(76, 38))", "toString(v)",
     [WIDEST_DECIMAL]),
    ("numeric", [LONG_NUMERIC, "'NaN'", "'Infinity'", TINY_NUMERIC], "Nullable(String)", "v",
     [LONG_NUMERIC, "NaN", "Infinity", TINY_NUMERIC]),
    ("real", ["'NaN'", "'Infinity'", "'-Infinity'", "3.4028235e38", "-1.5"], "Nullable(Float32)",
     "v", [math.nan, math.inf, -math.inf, 3.4028234663852886e38, -1.5]),
    ("double precision", ["'NaN'", "'-Infinity'", "1.7976931348623157e308", "5e-324"],
     "Nullable(Float64)", "v", [math.nan, -math.inf, 1.7976931348623157e308, 5e-324]),
    ("boolean", ["true", "false", "NULL"], "Nullable(Bool)", "v", [True, False, None]),
    ("text", ["'héllo wörld 🚀'", "''", "repeat('x', 100000)", "E'tab\\there\\nnewline'"],
     "Nullable(String)", "v", ["héllo wörld 🚀", "", "x" * 100000, "tab\there\nnewline"]),
    ("varchar(5)", ["'abc'", "'ä€𝄞'"], "Nullable(String)", "v", ["abc", "ä€𝄞"]),
    ("char(3)", ["'ab'", "'abc'"], "Nullable(String)", "v", ["ab ", "abc"]),
    ("bytea", ["'\\x00ff10'::bytea", "''::bytea"], "Nullable(String)", "hex(v)", ["00FF10", ""]),
    ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'"],
     "Nullable(UUID)", "toString(v)",
     ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"]),
    ("date", ["'0001-01-01'", "'2024-02-29'", "'9999-12-31'"], "Nullable(Date32)", "v",
     [date(1, 1, 1), date(2024, 2, 29), date(9999, 12, 31)]),
    ("time", ["'00:00:00'", "'23:59:59.999999'"], "Nullable(Time64(6))", "toString(v)",
     ["00:00:00.000000", "23:59:59.999999"]),
    ("time(6)", ["'13:14:15.000016'"], "Nullable(Time64(6))", "v",
     [timedelta(hours=13, minutes=14, seconds=15, microseconds=16)]),
    ("timetz", ["'12:00:00.5+02'"], "Nullable(String)", "v", ["12:00:00.5+02"]),
    ("timestamp",
     ["'2024-01-01 12:34:56.123456'", "'0001-01-01 00:00:00'", "'9999-12-31 23:59:59.999999'"],
     "Nullable(DateTime64(6, 'UTC'))", "toString(v)",
     ["2024-01-01 12:34:56.123456", "0001-01-01 00:00:00.000000", "9999-12-31 23:59:59.999999"]),
    ("timestamptz", ["'2024-03-01 12:34:56.789012+02'", "'1970-01-01 00:00:00.000001+00'"],
     "Nullable(DateTime64(6, 'UTC'))", "toString(v)",
     ["2024-03-01 10:34:56.789012", "1970-01-01 00:00:00.000001"]),
    ("interval", ["'1 year 2 mons 3 days 04:05:06.789'", "'-1 day'", "'0'"], "Nullable(String)",
     "v", ["P1Y2M3DT4H5M6.789S", "P-1D", "PT0S"]),
    ("json", ["'{\"b\":1,  \"a\":[1,2]}'"], "Nullable(String)", "v", ['{"b":1,  "a":[1,2]}']),
    ("jsonb", ["'{\"b\":1,  \"a\":[1,2], \"u\": \"\\u00e9\"}'"], "Nullable(String)", "v",
     ['{"a": [1, 2], "b": 1, "u": "é"}']),
    ("integer[] NOT NULL", ["'{}'", "'{1,NULL,3}'"], "Array(Nullable(Int32))", "v",
     [[], [1, None, 3]]),
    ("numeric(5,1)[] NOT NULL", ["'{1.5,NULL}'"], "Array(Nullable(Decimal(5, 1)))", "v",
     [[Decimal("1.5"), None]]),
    ("uuid[] NOT NULL", ["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"], "Array(Nullable(UUID))",
     "arrayMap(x -> toString(x), v)", [["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]]),
    ("text[]", ["NULL", "'{}'", "'{a,NULL,\"b c\"}'"], "Nullable(String)", "v",
     [None, "[]", '["a",null,"b c"]']),
    ("integer[]", ["'{{1,2},{3,NULL}}'"], "Nullable(String)", "v",
     ["[[1,2],[3,null]]"]),
    # floats as the shortest text that reads back exactly, time stamps in UTC
    ("double precision[]", ["'{0.30000000000000004,NULL,-1.5e-300}'"], "Nullable(String)", "v",
     ["[0.30000000000000004,null,-1.5e-300]"]),
    ("timestamptz[]", ["'{2024-03-01 12:34:56.789012+02}'"], "Nullable(String)", "v",
     ['["2024-03-01T10:34:56.789012+00:00"]']),
    # inet::text always writes the netmask: the same value, spelled out
    ("inet", ["'192.168.0.1/24'", "'::1'"], "Nullable(String)", "v", ["192.168.0.1/24", "::1/128"]),
    ("cidr", ["'10.0.0.0/8'"], "Nullable(String)", "v", ["10.0.0.0/8"]),
    ("mood", ["'happy'", "'sad'"], "Nullable(String)", "v", ["happy", "sad"]),
    ("positive_int", ["1", "2147483647"], "Int32", "v", [1, 2147483647]),
]  # fmt: skip


def _create_source(pg, column_type: str, literals: list[str]) -> None:
    execute(
        pg,
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        "CREATE DOMAIN positive_int AS integer NOT NULL CHECK (VALUE > 0)",
        f"CREATE TABLE public.t (id int PRIMARY KEY, v {column_type}, "
        "created_at timestamptz NOT NULL DEFAULT now(), "
        "updated_at timestamptz NOT NULL DEFAULT now())",
        *(
            f"INSERT INTO public.t (id, v) VALUES ({i}, {literal})"
            for i, literal in enumerate(literals)
        ),
    )


def _table(pg, pg_url, ch, clickhouse, **options) -> tuple[Session, Table]:
    spec = demo_config(source="public.t", primary_key=["id"], **options).tables[0]
    return engine_table(pg, ch, spec, clickhouse.database, pg_url)


def _same(expected, actual) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return expected == actual and type(expected) is type(actual)


def _load(session: Session, table: Table, path: str) -> StepResult:
    """Every row of the source through one read path: the snapshot's COPY, or the incremental
    steps' cursor pages (a parameterized query, converted by another part of the driver)."""
    if path == "snapshot":
        return snapshot(session, table, table.target)
    cursor = Cursor("created_at", SINCE_EVER, timedelta(0))
    return new_records(session, table, cursor, table.target)


SINCE_EVER = datetime(2000, 1, 1, tzinfo=UTC)
PATHS = ["snapshot", "incremental"]


def _with_null(column_type: str, literals: list[str], expected: list) -> tuple[list, list]:
    """A nullable column's cases get a NULL row too, unless they have one."""
    if "NOT NULL" in column_type or column_type == "positive_int" or "NULL" in literals:
        return literals, expected
    return [*literals, "NULL"], [*expected, None]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("column_type", "literals", "clickhouse_type", "read_back", "expected"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_type_round_trips(
    pg, pg_url, ch, clickhouse, column_type, literals, clickhouse_type, read_back, expected, path
):
    """Literal values read back from ClickHouse, NULL included, on both read paths; and the
    content comparison, whose renderings are independent of the sync's, agrees."""
    literals, expected = _with_null(column_type, literals, expected)
    _create_source(pg, column_type, literals)
    session, table = _table(pg, pg_url, ch, clickhouse)
    result = _load(session, table, path)

    assert result.rows_written == len(literals)
    column_types = dict(
        ch.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 't'",
            parameters={"db": clickhouse.database},
        ).result_rows
    )
    assert column_types["v"] == clickhouse_type
    rows = ch.query(f"SELECT {read_back} FROM {table.target.qualified_name} ORDER BY id")
    actual = [row[0] for row in rows.result_rows]
    assert all(_same(e, a) for e, a in zip(expected, actual, strict=True)), actual
    comparison = compare_content(session, table)
    assert comparison.equal, comparison.differing_ranges


UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("column_type", "array_literal", "clickhouse_type", "read_back", "expected"),
    [
        ("text[]", "'{a,NULL,\"b c\"}'", "Array(Nullable(String))", "v",
         [[], [], ["a", None, "b c"]]),
        ("uuid[]", f"'{{{UUID},NULL}}'", "Array(Nullable(UUID))",
         "arrayMap(x -> toString(x), v)", [[], [], [UUID, None]]),
    ],
)  # fmt: skip
def test_nullable_arrays_as_native_arrays(
    pg,
    pg_url,
    ch,
    clickhouse,
    column_type,
    array_literal,
    clickhouse_type,
    read_back,
    expected,
    path,
):
    """`nullable_arrays: array`: a native Array for array functions; NULL is read as []."""
    _create_source(pg, column_type, ["NULL", "'{}'", array_literal])
    session, table = _table(pg, pg_url, ch, clickhouse, nullable_arrays="array")
    _load(session, table, path)

    rows = ch.query(
        f"SELECT toTypeName(v), {read_back} FROM {table.target.qualified_name} ORDER BY id"
    ).result_rows
    assert [row[0] for row in rows] == [clickhouse_type] * 3
    assert [row[1] for row in rows] == expected
    assert compare_content(session, table).equal


@pytest.mark.parametrize("column_type", ["money", "point", "tsvector"])
def test_type_without_lossless_form_is_a_clear_error(pg, pg_url, ch, clickhouse, column_type):
    _create_source(pg, column_type, [])

    with pytest.raises(SyncError, match=rf"public\.t: column 'v': Postgres type {column_type} has"):
        _table(pg, pg_url, ch, clickhouse)


@pytest.mark.parametrize(
    ("column_type", "literal", "message"),
    [
        ("integer[] NOT NULL", "'{{1,2},{3,4}}'", r"public\.t\.v: holds a multi-dimensional"),
        ("timestamptz", "'infinity'", r"public\.t\.v: holds a date or timestamp outside"),
        ("timestamp", "'-infinity'", r"public\.t\.v: holds a date or timestamp outside"),
        ("date", "'0044-03-15 BC'", r"public\.t\.v: holds a date or timestamp outside"),
        ("date[] NOT NULL", "'{2024-01-01,infinity}'", r"public\.t\.v: holds a date or"),
        ("numeric(10,2)", "'NaN'", r"public\.t\.v: holds NaN, which ClickHouse's Decimal"),
        ("numeric(4,1)[] NOT NULL", "'{1.5,NaN}'", r"public\.t\.v: holds NaN"),
        ("integer[] NOT NULL", "'[0:2]={1,2,3}'", r"public\.t\.v: holds an array whose subs"),
        ("text[]", "'[2:3]={a,b}'", r"public\.t\.v: holds an array whose subscripts do not"),
        ("integer[]", "'[1:2][0:1]={{1,2},{3,4}}'", r"public\.t\.v: holds an array whose"),
        ("integer[]", "'[0:1][1:2]={{1,2},{3,4}}'", r"public\.t\.v: holds an array whose"),
        ("text[]", "'[10:11]={a,b}'", r"public\.t\.v: holds an array whose subscripts do"),
        ("text[] NOT NULL", "'[10:11]={a,b}'", r"public\.t: an array column holds an array whose"),
    ],
)
def test_value_without_clickhouse_form_stops_the_sync(
    pg, pg_url, ch, clickhouse, column_type, literal, message
):
    _create_source(pg, column_type, [literal])
    session, table = _table(pg, pg_url, ch, clickhouse)

    with pytest.raises(SyncError, match=message):
        snapshot(session, table, table.target)

    assert ch.query(f"SELECT count() FROM {table.target.qualified_name}").result_rows == [(0,)]
