"""The SQL each engine is sent, read as text: the cursor query, the DDL, the live-row filter."""

from datetime import datetime, timedelta, timezone

import pytest

from user_code.sync.ddl import create_table_sql
from user_code.sync.existing_table import key_columns
from user_code.sync.source_table import SourceTable
from user_code.sync.target_table import TargetTable
from user_code.sync.types import PgColumn, PgType, map_column

COLUMNS = (
    PgColumn("id", PgType("int8"), False, "bigint"),
    PgColumn("tags", PgType("_text", -1, PgType("text")), False, "text[]"),
    PgColumn("deleted", PgType("bool"), True, "boolean"),
    PgColumn("created_at", PgType("timestamptz"), False, "timestamp with time zone"),
    PgColumn("updated_at", PgType("timestamptz"), False, "timestamp with time zone"),
)
SOURCE = SourceTable("app.Orders", COLUMNS, tuple(map_column("app.Orders", c) for c in COLUMNS))


def test_select_reads_every_column_and_each_array_s_dimensions_and_subscripts():
    assert SOURCE.select_sql() == (
        'SELECT "id" AS "id", "tags" AS "tags", "deleted" AS "deleted", '
        '"created_at" AS "created_at", "updated_at" AS "updated_at", '
        'array_ndims("tags") AS "tags#ndims", '
        '(array_lower("tags", 1) <> 1 OR array_ndims("tags") > 1 '
        "AND strpos(replace(array_dims(\"tags\"), '[1:', ''), '[') > 0) "
        'AS "tags#subscripts" FROM "app"."Orders"'
    )


def test_cursor_query_is_inclusive_and_bounds_updates_by_the_new_records_watermark():
    assert SOURCE.cursor_sql("created_at").endswith(' WHERE "created_at" >= $1::timestamptz')
    assert SOURCE.cursor_sql("updated_at", "created_at").endswith(
        ' WHERE "updated_at" >= $1::timestamptz'
        ' AND ("created_at" <= $2::timestamptz OR "created_at" IS NULL)'
    )


def test_cursor_parameters_are_iso_text_in_the_column_s_terms():
    at = PgColumn("at", PgType("timestamp"), False, "timestamp without time zone")
    naive = SourceTable("app.events", (at,), (map_column("app.events", at),))
    instant = datetime(2026, 3, 1, 12, 30, 0, 250, tzinfo=timezone(timedelta(hours=2)))
    assert SOURCE.bind("created_at", instant) == "2026-03-01T10:30:00.000250+00:00"
    assert naive.bind("at", instant) == "2026-03-01T10:30:00.000250"
    assert naive.cursor_sql("at").endswith(' WHERE "at" >= $1::timestamp')


def test_live_rows_by_soft_delete_column_kind():
    assert SOURCE.live_row_filter(None) == "TRUE"
    assert SOURCE.live_row_filter("deleted") == '"deleted" IS NOT TRUE'
    assert SOURCE.live_row_filter("updated_at") == '"updated_at" IS NULL'


def test_table_is_replacing_merge_tree_versioned_by_updated_at_ordered_by_the_key():
    target = TargetTable("analytics", "orders", SOURCE.mappings, ("id",), "updated_at")
    ddl = create_table_sql(target)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `analytics`.`orders` (")
    assert "`tags` Array(Nullable(String))" in ddl
    assert "`_is_deleted` UInt8 DEFAULT 0" in ddl
    assert ddl.endswith(
        "ENGINE = ReplacingMergeTree(`updated_at`, `_is_deleted`)\nORDER BY (`id`)\n"
        "COMMENT 'synced by pg2ch'"
    )


@pytest.mark.parametrize(
    ("sorting_key", "columns"),
    [
        ("id", ("id",)),
        ("(id)", ("id",)),
        ("tenant, id", ("tenant", "id")),
        ("(`tenant`, `id`)", ("tenant", "id")),
        (
            "toYYYYMM(created_at), intDiv(id, 10), id",
            ("toYYYYMM(created_at)", "intDiv(id, 10)", "id"),
        ),
    ],
)
def test_sorting_keys_as_clickhouse_reports_them(sorting_key, columns):
    assert key_columns(sorting_key) == columns
