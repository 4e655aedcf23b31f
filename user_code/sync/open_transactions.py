"""The oldest transaction open in the source: where the next read must start at the latest.

See watermark.py for why: rows of a transaction still open when a read takes its snapshot
carry that transaction's start time or later, whenever they commit.
"""

from dataclasses import dataclass
from datetime import datetime

import adbc_driver_postgresql.dbapi as adbc

from user_code.sync.postgres import APPLICATION_NAME, fetch_all
from user_code.sync.watermark import as_utc

# The start time of the oldest transaction open in this database, other than the sync's own
# sessions; with none open, this statement's transaction start. A transaction that has not
# written yet counts too: it can still stamp rows with its start time (`now()`) later.
_OPEN_SINCE_SQL = f"""
SELECT pg_is_in_recovery(),
       pg_has_role('pg_read_all_stats', 'USAGE'),
       least(now(), min(xact_start))
FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND xact_start IS NOT NULL
  AND application_name IS DISTINCT FROM '{APPLICATION_NAME}'
"""
UNSEEN_ON_REPLICA = (
    "Postgres is a read replica, which cannot see the primary's open transactions: reads "
    "start at watermark - lookback only, so a transaction open longer than `lookback` on the "
    "primary can commit rows the next read misses; point PG_URL at the primary to close that."
)
UNSEEN_WITHOUT_GRANT = (
    "the sync's role cannot see other sessions' transactions: reads start at watermark - "
    "lookback only, so a transaction open longer than `lookback` can commit rows the next read "
    "misses; run `GRANT pg_read_all_stats TO <the sync's role>` (or pg_monitor) to close that."
)


@dataclass(frozen=True)
class OpenTransactions:
    """What a read may have missed: rows of transactions open when it began.

    Every row committed after a read's snapshot comes from a transaction that started at or
    after `since`, so if stamped by the database clock (`now()`, a default, a trigger) its
    timestamp is `since` or later. `since` is None where Postgres does not show it (`unseen`).
    """

    since: datetime | None
    unseen: str | None = None


def open_transactions(connection: adbc.Connection) -> OpenTransactions:
    """Taken before a read's snapshot, in a transaction of its own (the connection's
    autocommit): Postgres keeps one pg_stat_activity snapshot per transaction."""
    ((on_replica, sees_every_session, since),) = fetch_all(connection, _OPEN_SINCE_SQL)
    if on_replica:
        return OpenTransactions(None, UNSEEN_ON_REPLICA)
    if not sees_every_session:
        return OpenTransactions(None, UNSEEN_WITHOUT_GRANT)
    return OpenTransactions(as_utc(since))
