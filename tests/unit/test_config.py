"""SYNC_CONFIG's model: what it accepts, and each mistake named by table and field."""

import subprocess
import sys
from datetime import timedelta

import pytest

from user_code.config import parse_sync_config
from user_code.plan import plan_tables
from user_code.sync.errors import SyncError

TABLE = {
    "source": "public.customers",
    "primary_key": ["id"],
    "created_at": "created_at",
    "updated_at": "updated_at",
}


def test_a_table_gets_the_engine_settings_it_declares():
    spec = plan_tables(parse_sync_config({"tables": [{**TABLE, "lookback": "PT2M"}]})).tables[0]
    assert spec.lookback == timedelta(minutes=2)
    assert spec.target_table == "customers"
    assert spec.table_settings.primary_key == ("id",)
    assert spec.table_settings.null_arrays_as_empty is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"primary_key": []},
            "tables[0] (public.customers): primary_key: List should have at least",
        ),
        ({"lookback": "-PT1M"}, "tables[0] (public.customers): lookback: Value error, must not"),
        ({"snapshot_partitions": 17}, "snapshot_partitions: Input should be less than or equal"),
        ({"insert_block_mb": 0}, "insert_block_mb: Input should be greater than or equal to 1"),
        ({"target": "9lives"}, "target: Value error, must be letters, digits and underscores"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_each_mistake_names_its_table_and_field(change, message):
    with pytest.raises(SyncError) as raised:
        parse_sync_config({"tables": [{**TABLE, **change}]})
    assert message in str(raised.value)


def test_parsing_the_config_loads_no_database_driver():
    """config.py is read where SYNC_CONFIG is checked; it must not pull in ADBC or pyarrow."""
    probe = (
        "import sys, user_code.config\n"
        "drivers = ('adbc_driver_manager', 'pyarrow', 'clickhouse_connect', 'dagster')\n"
        "print([m for m in sys.modules if m.split('.')[0] in drivers])\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"
