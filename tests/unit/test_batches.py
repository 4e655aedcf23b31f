"""What the engine does to Arrow batches on their way to ClickHouse, without either database."""

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from user_code.sync.errors import SyncError
from user_code.sync.load import arrow_stream, deleted_flags
from user_code.sync.reread import row_keys, without_loaded_rows
from user_code.sync.target_table import TargetTable
from user_code.sync.types import ColumnMapping
from user_code.sync.value_guards import (
    MULTIDIMENSIONAL,
    NAN_DECIMAL,
    OUT_OF_CALENDAR,
    checked_batch,
)

T = datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC)


def test_soft_delete_flags_from_a_boolean_or_a_timestamp():
    batch = pa.record_batch(
        {"b": pa.array([True, False, None]), "at": pa.array([T, None, None], pa.timestamp("us"))}
    )
    assert deleted_flags(batch, "b").to_pylist() == [1, 0, 0]
    assert deleted_flags(batch, "at").to_pylist() == [1, 0, 0]
    assert deleted_flags(batch, None).to_pylist() == [0, 0, 0]


def test_rows_already_loaded_at_the_same_version_are_left_out():
    batch = pa.record_batch(
        {"id": pa.array([1, 2, 3]), "v": pa.array([T, T, T], pa.timestamp("us", "UTC"))}
    )
    target = TargetTable("db", "t", (), ("id",), "v")
    micros = "1772366400000001"
    assert row_keys(batch, ["id"], "v").to_pylist()[0] == f"1\x1f{micros}"
    loaded = pa.array([f"2\x1f{micros}", f"3\x1f{int(micros) - 1}"])
    assert without_loaded_rows(batch, loaded, target).column("id").to_pylist() == [1, 3]


@pytest.mark.parametrize(
    ("values", "clickhouse_type", "problem"),
    [
        (pa.array([datetime(1, 1, 1)], pa.timestamp("us")), "DateTime64(6, 'UTC')", None),
        (
            pa.array([-62_135_596_800_000_001], pa.int64()).cast(pa.timestamp("us")),
            "x",
            OUT_OF_CALENDAR,
        ),
        (pa.array([2_932_897], pa.int32()).cast(pa.date32()), "Date32", OUT_OF_CALENDAR),
        (pa.array(["NaN"]), "Decimal(10, 2)", NAN_DECIMAL),
        (pa.array(["NaN"]), "String", None),
    ],
)
def test_values_clickhouse_would_store_altered_are_refused_by_column(
    values, clickhouse_type, problem
):
    batch = pa.record_batch({"c": values})
    mappings = (ColumnMapping("c", clickhouse_type),)
    if problem is None:
        assert checked_batch(batch, "s.t", mappings).num_rows == 1
    else:
        with pytest.raises(SyncError, match="s.t.c: " + problem[:30]):
            checked_batch(batch, "s.t", mappings)


def test_array_dimensions_are_checked_then_dropped():
    mappings = (ColumnMapping("a", "Array(Nullable(Int32))"),)
    flat = pa.record_batch({"a": pa.array([[1, 2]]), "a#ndims": pa.array([1], pa.int32())})
    assert checked_batch(flat, "s.t", mappings).schema.names == ["a"]
    nested = pa.record_batch({"a": pa.array([[1, 2]]), "a#ndims": pa.array([2], pa.int32())})
    with pytest.raises(SyncError, match="s.t.a: " + MULTIDIMENSIONAL[:30]):
        checked_batch(nested, "s.t", mappings)


def test_the_http_insert_body_is_an_arrow_stream_of_every_batch():
    batches = [pa.record_batch({"id": pa.array([i, i + 1])}) for i in (1, 3)]
    body = b"".join(arrow_stream(batches[0].schema, iter(batches)))
    assert pa.ipc.open_stream(body).read_all().column("id").to_pylist() == [1, 2, 3, 4]
