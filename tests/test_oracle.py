"""The content comparison is an oracle of its own: a conversion the sync gets wrong the same way
every time (so that a re-read through the sync would agree with it) still shows, by column.

Each case breaks one conversion through a test-only hook: the batches the sync inserts are
altered in one column on their way to ClickHouse.
"""

from collections.abc import Callable
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sync_support import demo_config, route_inserts

from user_code.sync.table_sync import TableSync

READINGS = [
    """
CREATE TABLE public.readings (
    id int PRIMARY KEY,
    note text,
    seen_at timestamptz,
    amount numeric(12, 2),
    code char(4),
    scores int[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)
""",
    """
INSERT INTO public.readings (id, note, seen_at, amount, code, scores)
SELECT i, CASE WHEN i % 2 = 0 THEN 'note ' || i END,
       timestamptz '2026-03-01 12:00:00.123456+00' + i * interval '1.000001 second',
       i * 1.25, 'ab', ARRAY[i, NULL, 3]
FROM generate_series(1, 20) AS i
""",
]


def _without_null_elements(values: pa.ListArray) -> pa.Array:
    return pa.ListArray.from_arrays(values.offsets, pc.fill_null(values.values, 0))


# (column, what the broken conversion does to its Arrow values)
BROKEN: dict[str, tuple[str, Callable[[pa.Array], pa.Array]]] = {
    "NULL read as empty text": ("note", lambda v: pc.fill_null(v, "")),
    "time zone shifted": ("seen_at", lambda v: pc.add(v, pa.scalar(timedelta(hours=2)))),
    "microseconds truncated": ("seen_at", lambda v: pc.floor_temporal(v, unit="millisecond")),
    "decimal scale cut": ("amount", lambda v: pc.utf8_slice_codeunits(v, 0, -1)),
    "char padding dropped": ("code", pc.utf8_rtrim_whitespace),
    "array NULL element as 0": ("scores", _without_null_elements),
}


def _readings(pg, pg_url, ch, clickhouse) -> TableSync:
    with pg.cursor() as cursor:
        for statement in READINGS:
            cursor.execute(statement)
    pg.commit()
    settings = demo_config(source="public.readings").tables[0].table_settings
    return TableSync(settings, pg, ch, clickhouse.database, postgres_url=pg_url)


def test_a_faithful_sync_compares_equal(pg, pg_url, ch, clickhouse):
    table = _readings(pg, pg_url, ch, clickhouse)
    table.prepare()
    table.snapshot()
    assert table.compare_content().equal


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_conversion_wrong_every_time_is_reported_by_column(
    pg, pg_url, ch, clickhouse, monkeypatch, broken
):
    column, alter = BROKEN[broken]

    def altered(_, batches):
        for batch in batches:
            index = batch.schema.get_field_index(column)
            yield batch.set_column(index, column, alter(batch.column(column)))

    route_inserts(monkeypatch, altered)
    table = _readings(pg, pg_url, ch, clickhouse)
    table.prepare()
    assert table.snapshot().rows_written == 20

    comparison = table.compare_content()
    assert not comparison.equal
    assert comparison.differing_columns == [column]
    assert comparison.postgres_rows == comparison.clickhouse_rows == 20
