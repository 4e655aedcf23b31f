"""Live traffic for `make dev`: every few seconds some new customers, some changed ones and some
new events, so the sensor and the schedule always have rows to move and the UI has something
to show."""

import random
import threading
import time
from collections.abc import Callable

from demo.seed import insert_customers, insert_events, update_customers
from user_code.sync.postgres import connect

INTERVAL_S = 5.0
NEW_CUSTOMERS = (1, 20)  # per tick, picked at random
UPDATED_ONE_IN = 20_000  # changes one customer in this many per tick: ~5 of the 100k seeded
REPORT_EVERY_S = 60.0


def generate_traffic(
    pg_url: str,
    stop: threading.Event,
    interval: float = INTERVAL_S,
    report: Callable[[str], None] = print,
) -> None:
    """Insert and update customers every `interval` seconds until `stop` is set; `report` gets
    a summary line about once a minute."""
    rng = random.Random()
    inserted = updated = 0
    reported_at = time.monotonic()
    with connect(pg_url) as connection:
        while not stop.wait(interval):
            new = rng.randint(*NEW_CUSTOMERS)
            insert_customers(connection, new)
            insert_events(connection, new * 3)
            inserted += new
            updated += update_customers(connection, UPDATED_ONE_IN, rng.randrange(UPDATED_ONE_IN))
            if time.monotonic() - reported_at >= REPORT_EVERY_S:
                report(
                    f"traffic: {inserted} new and {updated} changed customers in the last minute"
                )
                inserted = updated = 0
                reported_at = time.monotonic()


def start_traffic(pg_url: str) -> tuple[threading.Thread, threading.Event]:
    """The generator in a background thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=generate_traffic, args=(pg_url, stop), name="traffic", daemon=True
    )
    thread.start()
    return thread, stop
