"""Values that Arrow or ClickHouse would store altered stop the sync instead, by column.

Postgres' ±infinity and BC dates arrive as extreme integers, NaN has no Decimal form, 2-D
arrays arrive flattened (each array column is read with its `array_ndims` beside it), and an
array's subscripts are lost, whatever they start at (each array column is read with whether
they start at 1 beside it: an Array or a JSON list starts at 1).
"""

import pyarrow as pa
import pyarrow.compute as pc

from user_code.sync.errors import SyncError
from user_code.sync.types import ColumnMapping

OUT_OF_CALENDAR = (
    "holds a date or timestamp outside 0001-01-01..9999-12-31 (infinity, or BC), which "
    "ClickHouse cannot store; replace those values or sync a view that maps them."
)
NAN_DECIMAL = (
    "holds NaN, which ClickHouse's Decimal cannot store; replace it with NULL or declare "
    "the column as unconstrained numeric (kept as text)."
)
MULTIDIMENSIONAL = (
    "holds a multi-dimensional array, which ClickHouse's Array(T) cannot keep; make the "
    "column nullable (it is then stored as JSON text) or sync a view that flattens it."
)
OTHER_SUBSCRIPTS = (
    "holds an array whose subscripts do not start at 1 (such as '[0:2]={1,2,3}'), which "
    "neither a ClickHouse Array nor JSON text can keep; store it from 1, or sync a view that "
    "selects the column as `column[:]` (a slice starts at 1)."
)

# 0001-01-01 and 9999-12-31 (23:59:59.999999) as Arrow stores them: days or microseconds
_CALENDAR = {
    "date32": (-719_162, 2_932_896),
    "timestamp": (-62_135_596_800_000_000, 253_402_300_799_999_999),
}


def ndims_column(column: str) -> str:
    """The name under which an array column's `array_ndims` is read beside it."""
    return f"{column}#ndims"


def subscripts_column(column: str) -> str:
    """The name under which whether an array's subscripts start elsewhere than at 1 is read."""
    return f"{column}#subscripts"


def other_subscripts_sql(quoted_column: str) -> str:
    """True where some dimension's subscripts start elsewhere than at 1 (`[0:2]`, `[1:2][0:1]`).

    The first dimension's lower bound answers for the usual one-dimensional array; only a
    multi-dimensional one has its `array_dims` text searched for a `[` not followed by `1:`.
    A regular expression over `array_dims` for every row made Postgres' side of a snapshot
    1.7x slower (3.7-3.9 s against 2.2 s for a COPY of 2M demo rows, 2.3-2.6 s with this).
    """
    dims = f"array_dims({quoted_column})"
    return (
        f"(array_lower({quoted_column}, 1) <> 1 OR array_ndims({quoted_column}) > 1 "
        f"AND strpos(replace({dims}, '[1:', ''), '[') > 0)"
    )


def checked_batch(
    batch: pa.RecordBatch, source: str, mappings: tuple[ColumnMapping, ...]
) -> pa.RecordBatch:
    """`batch` without its `#ndims` and `#subscripts` columns, or a SyncError naming the first
    unstorable column."""
    for mapping in mappings:
        problem = unstorable(batch.column(mapping.name), mapping)
        if mapping.is_array:
            guard = ndims_column(mapping.name)
            if (pc.max(batch.column(guard)).as_py() or 1) > 1:
                problem = MULTIDIMENSIONAL
            batch = batch.drop_columns([guard])
        subscripts = subscripts_column(mapping.name)
        if subscripts in batch.schema.names:
            if pc.any(batch.column(subscripts)).as_py():
                problem = OTHER_SUBSCRIPTS
            batch = batch.drop_columns([subscripts])
        if problem:
            raise SyncError(f"{source}.{mapping.name}: {problem}")
    return batch


def unstorable(values: pa.Array, mapping: ColumnMapping) -> str | None:
    """Why ClickHouse could not store `values` as `mapping` says, or None."""
    if pa.types.is_list(values.type):
        values = pc.list_flatten(values)
    if not within_calendar(values):
        return OUT_OF_CALENDAR
    if "Decimal(" in mapping.clickhouse_type and pc.any(pc.equal(values, "NaN")).as_py():
        return NAN_DECIMAL
    return None


def within_calendar(values: pa.Array) -> bool:
    if pa.types.is_date32(values.type):
        (first, last), as_int = _CALENDAR["date32"], pa.int32()
    elif pa.types.is_timestamp(values.type):
        (first, last), as_int = _CALENDAR["timestamp"], pa.int64()
    else:
        return True
    extremes = pc.min_max(values.cast(as_int))
    lowest, highest = extremes["min"].as_py(), extremes["max"].as_py()
    return lowest is None or (first <= lowest and highest <= last)
