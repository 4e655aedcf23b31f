"""The sync engine: Postgres catalog -> ClickHouse DDL, Arrow batches between. No Dagster."""

from user_code.sync.errors import SyncError

__all__ = ["SyncError"]
