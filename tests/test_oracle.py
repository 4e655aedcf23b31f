"""The content comparison is an oracle of its own: a conversion the sync gets wrong the same way
every time (so that a re-read through the sync would agree with it) still shows, by column.

Each case breaks one conversion: the batches the sync inserts are altered in one column on
their way to ClickHouse, or the sync reads on a session whose settings change a value's text.
"""

from collections.abc import Callable
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fault_support import intercept_inserts
from sync_support import demo_config, engine_table, execute

from user_code.sync.compare import Comparison, compare_content
from user_code.sync.load import StepResult
from user_code.sync.table_sync import snapshot

READINGS = [
    """
CREATE TABLE public.readings (
    id int PRIMARY KEY,
    note text,
    seen_at timestamptz,
    amount numeric(12, 2),
    code char(4),
    scores int[] NOT NULL,
    ratios float8[],
    waited interval,
    stamps timestamptz[],
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)
""",
    """
INSERT INTO public.readings (id, note, seen_at, amount, code, scores, ratios, waited, stamps)
SELECT i, CASE WHEN i % 2 = 0 THEN 'note ' || i END,
       timestamptz '2026-03-01 12:00:00.123456+00' + i * interval '1.000001 second',
       i * 1.25, 'ab', ARRAY[i, NULL, 3], ARRAY[i / 3.0::float8, NULL],
       i * interval '1 day 1.5 seconds',
       ARRAY[timestamptz '2026-03-01 12:00:00+00' + i * interval '1 hour']
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

# (column, a setting of the sync's session that changes the text Postgres gives it for it)
SESSION_SETTINGS = {
    "float digits": ("ratios", "SET extra_float_digits = 0"),  # float8[] kept as JSON text
    "interval style": ("waited", "SET IntervalStyle = 'postgres'"),
    "time zone": ("stamps", "SET TimeZone = 'Asia/Tokyo'"),  # timestamptz[] kept as JSON text
}


class Readings:
    """`public.readings`, loaded by the engine's snapshot and compared by the oracle."""

    def __init__(self, pg, pg_url, ch, clickhouse):
        execute(pg, *READINGS)
        # One connection reads: the session-settings cases change that connection's own.
        spec = demo_config(source="public.readings", snapshot_partitions=1).tables[0]
        self.session, self.table = engine_table(pg, ch, spec, clickhouse.database, pg_url)

    def load(self) -> StepResult:
        return snapshot(self.session, self.table, self.table.target)

    def compare(self) -> Comparison:
        return compare_content(self.session, self.table)


def test_a_faithful_sync_compares_equal(pg, pg_url, ch, clickhouse):
    readings = Readings(pg, pg_url, ch, clickhouse)
    readings.load()
    assert readings.compare().equal


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_conversion_wrong_every_time_is_reported_by_column(
    pg, pg_url, ch, clickhouse, monkeypatch, broken
):
    column, alter = BROKEN[broken]

    def insert_altered(target, batch, insert) -> None:
        index = batch.schema.get_field_index(column)
        insert(batch.set_column(index, column, alter(batch.column(column))))

    intercept_inserts(monkeypatch, insert_altered)
    readings = Readings(pg, pg_url, ch, clickhouse)
    assert readings.load().rows_written == 20

    comparison = readings.compare()
    assert not comparison.equal
    assert comparison.differing_columns == [column]
    assert comparison.postgres_rows == comparison.clickhouse_rows == 20


@pytest.mark.parametrize("setting", list(SESSION_SETTINGS))
def test_a_read_on_other_session_settings_is_reported_by_column(
    pg, pg_url, ch, clickhouse, setting
):
    """The comparison runs on the sync's own connection, but renders on settings it sets."""
    column, statement = SESSION_SETTINGS[setting]
    readings = Readings(pg, pg_url, ch, clickhouse)
    execute(pg, statement)
    assert readings.load().rows_written == 20

    assert readings.compare().differing_columns == [column]
