"""The job end to end on the real engines: inserts, updates, re-runs, restarts, late commits."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest
from sync_support import demo_config, execute, live_rows, run_sync, step_metadata

from demo.seed import insert_customers, update_customers
from user_code import steps
from user_code.state import TableKeys, stored_watermarks

pytestmark = pytest.mark.usefixtures("sync_env")


def all_versions(ch, clickhouse) -> int:
    """Every row ClickHouse stores, each version of a key (no FINAL)."""
    return ch.query(f"SELECT count() FROM `{clickhouse.database}`.`customers`").result_rows[0][0]


def test_first_run_loads_every_row_and_checks_pass(customers, ch, clickhouse):
    insert_customers(customers, 5000)

    result = run_sync(dg.DagsterInstance.ephemeral())

    assert result.success
    steps = step_metadata(result)
    assert steps["initial_load"]["rows_written"] == 5000
    assert steps["initial_load"]["updated_at_watermark"] == steps["updates"]["updated_at_watermark"]
    assert steps["updates"]["lag_s"] == 0.0
    assert live_rows(ch, clickhouse.database) == 5000
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"window_parity": True, "freshness": True}


def test_new_and_updated_rows_arrive_once(customers, ch, clickhouse):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 2000, ending_at="2020-01-01")
    run_sync(instance)

    insert_customers(customers, 300)
    touched = update_customers(customers, ids_modulo=10)
    result = run_sync(instance)

    steps = step_metadata(result)
    assert "initial_load" not in steps
    # Each change is written once, by whichever step reads it first: 300 new rows (30 of
    # them already updated) and the other updated rows.
    written = steps["new_records"]["rows_written"] + steps["updates"]["rows_written"]
    assert written == 300 + touched - 30
    assert live_rows(ch, clickhouse.database) == 2300
    balances = ch.query(
        f"SELECT sum(balance) FROM `{clickhouse.database}`.`customers` FINAL"
    ).result_rows[0][0]
    with customers.cursor() as cursor:
        cursor.execute("SELECT sum(balance) FROM customers")
        assert balances == Decimal(cursor.fetchone()[0])


def test_rerun_without_changes_writes_nothing(customers, ch, clickhouse):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 1000)  # all within the lookback window: re-read, not re-written
    run_sync(instance)
    stored_rows = all_versions(ch, clickhouse)

    steps = step_metadata(run_sync(instance))

    assert steps["new_records"]["rows_read"] == 1000
    assert steps["new_records"]["rows_written"] == 0
    assert steps["updates"]["rows_written"] == 0
    assert all_versions(ch, clickhouse) == stored_rows == 1000


def test_rerun_on_a_table_at_rest_rereads_only_the_lookback(customers):
    """With no transaction open, a read needs no overlap beyond `lookback` (one minute): of
    ten minutes of rows, a rerun reads the last minute's again (301 with the former five)."""
    instance = dg.DagsterInstance.ephemeral()
    ended = datetime.now(UTC) - timedelta(hours=1)
    insert_customers(customers, 600, ending_at=ended, spacing=timedelta(seconds=1))
    run_sync(instance)

    steps = step_metadata(run_sync(instance))

    assert steps["new_records"]["rows_read"] == steps["updates"]["rows_read"] == 61
    assert steps["new_records"]["held_back_s"] == steps["updates"]["held_back_s"] == 0


def test_watermark_survives_a_new_instance(customers, ch, clickhouse, tmp_path):
    insert_customers(customers, 1000, ending_at="2020-01-01")
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        run_sync(instance)

    insert_customers(customers, 10)
    with dg.DagsterInstance.local_temp(str(tmp_path)) as restarted:
        steps = step_metadata(run_sync(restarted))

    assert "initial_load" not in steps  # the new instance knows the table was loaded
    assert steps["new_records"]["rows_written"] == 10
    assert all_versions(ch, clickhouse) == 1010


def test_late_commit_within_lookback_is_not_lost(customers, ch, clickhouse):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 100)
    run_sync(instance)

    # Rows an application stamped with its own clock commit late: their timestamps are behind
    # the stored watermark, one by 30 s (inside the one-minute lookback), one by an hour.
    watermark, _ = stored_watermarks(instance, TableKeys.of(demo_config().tables[0]))
    insert_customers(customers, 1, ending_at=watermark - timedelta(seconds=30))
    insert_customers(customers, 1, ending_at=watermark - timedelta(hours=1))
    run_sync(instance)

    assert live_rows(ch, clickhouse.database) == 101  # the hour-late row is beyond any lookback


def test_full_refresh_takes_a_new_snapshot(customers, ch, clickhouse):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 50)
    run_sync(instance)

    steps = step_metadata(run_sync(instance, full_refresh=True))

    # a new table beside the old one: the snapshot's 50 rows, then the catch-up's re-reads
    assert steps["initial_load"]["rebuilt_because"] == "full_refresh"
    assert steps["initial_load"]["rows_written"] == 50
    assert all_versions(ch, clickhouse) == 50


def test_soft_deleted_rows_leave_the_final_view(customers, ch, clickhouse):
    execute(customers, "ALTER TABLE customers ADD COLUMN deleted_at timestamptz")
    instance = dg.DagsterInstance.ephemeral()
    config = demo_config(soft_delete="deleted_at")
    insert_customers(customers, 10)
    run_sync(instance, config)

    execute(
        customers,
        "UPDATE customers SET deleted_at = now(), updated_at = clock_timestamp() WHERE id <= 3",
    )
    result = run_sync(instance, config)

    assert live_rows(ch, clickhouse.database) == 7
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()}["window_parity"]


def test_column_added_in_postgres_is_added_in_clickhouse(customers, ch, clickhouse):
    instance = dg.DagsterInstance.ephemeral()
    insert_customers(customers, 10)
    run_sync(instance)

    execute(
        customers,
        "ALTER TABLE customers ADD COLUMN loyalty_points integer",
        "UPDATE customers SET loyalty_points = 7, updated_at = clock_timestamp() WHERE id = 1",
    )
    run_sync(instance)

    rows = ch.query(
        f"SELECT loyalty_points FROM `{clickhouse.database}`.`customers` FINAL WHERE id = 1"
    ).result_rows
    assert rows == [(7,)]


def test_configuration_error_fails_the_run_without_retries(customers):
    result = run_sync(
        dg.DagsterInstance.ephemeral(),
        demo_config(updated_at="no_such_column"),
        raise_on_error=False,
    )

    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "public.customers: `updated_at`: no column 'no_such_column'" in failure.message
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []


@pytest.mark.parametrize("source", ['public."Mixed Case"', "public.Mixed Case"])
def test_source_written_the_sql_way_or_plain(customers, ch, clickhouse, source):
    execute(
        customers,
        'CREATE TABLE public."Mixed Case" (id int PRIMARY KEY, '
        "created_at timestamptz NOT NULL DEFAULT now(), "
        "updated_at timestamptz NOT NULL DEFAULT now())",
        'INSERT INTO public."Mixed Case" (id) SELECT generate_series(1, 3)',
    )
    config = demo_config(source=source, target="mixed_case")

    assert run_sync(dg.DagsterInstance.ephemeral(), config).success
    assert live_rows(ch, clickhouse.database, "mixed_case") == 3


def test_row_count_is_exact_after_a_load_and_a_verify_and_counted_on_in_between(customers):
    """`dagster/row_count` without a count of the table: exact after the initial load, new
    rows added by each run, deletions shown by the next verify run, and counted on from
    there."""
    execute(customers, "ALTER TABLE customers ADD COLUMN deleted_at timestamptz")
    instance = dg.DagsterInstance.ephemeral()
    config = demo_config(soft_delete="deleted_at")

    def row_counts(result: dg.ExecuteInProcessResult) -> dict[str, int]:
        return {step: m["dagster/row_count"] for step, m in step_metadata(result).items()}

    insert_customers(customers, 100, ending_at="2020-01-01")
    assert row_counts(run_sync(instance, config)) == dict.fromkeys(
        ("initial_load", "new_records", "updates"), 100
    )
    insert_customers(customers, 10)
    update_customers(customers, ids_modulo=20)
    assert row_counts(run_sync(instance, config)) == {"new_records": 110, "updates": 110}
    execute(customers, "UPDATE customers SET deleted_at = now(), updated_at = now() WHERE id <= 3")
    assert row_counts(run_sync(instance, config)) == {"new_records": 110, "updates": 110}

    verify = run_sync(instance, config, job_name="verify_clickhouse")

    assert {c.check_name: c.passed for c in verify.get_asset_check_evaluations()} == {
        "content_checksum": True,
        "row_count_parity": True,
    }
    (observed,) = [e for e in verify.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observed.event_specific_data.asset_observation.metadata["dagster/row_count"].value == 107
    insert_customers(customers, 2)
    assert row_counts(run_sync(instance, config)) == {"new_records": 109, "updates": 109}


def test_freshness_fails_when_the_source_is_further_ahead_than_the_limit(monkeypatch, customers):
    """The source's newest `updated_at`, an hour past what the run read (as if rows kept
    arriving after it), against the 30-minute default limit."""
    insert_customers(customers, 10)
    ahead = datetime.now(UTC) + timedelta(hours=1)
    monkeypatch.setattr(steps, "latest_timestamps", lambda *_: [ahead])

    result = run_sync(dg.DagsterInstance.ephemeral())

    (freshness,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "freshness"]
    assert not freshness.passed
    assert 3500 < freshness.metadata["lag_s"].value < 3700
