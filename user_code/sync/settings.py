"""What the engine needs to know of one table, whatever configuration it came from."""

from collections.abc import Callable
from dataclasses import dataclass, field

from user_code.sync.target_table import Layout

# Where the engine reports progress (a run's log); `no_progress` where nobody listens.
Progress = Callable[[str], None]


def no_progress(message: str) -> None:
    """Discard a progress message."""


@dataclass(frozen=True)
class TableSettings:
    """A table is read incrementally by `created_at` (new rows) and `updated_at` (changed
    rows); by `created_at` alone when its rows never change (append); and whole, into a new
    table swapped in at once, when it has neither (replace)."""

    source: str  # schema.table in Postgres
    target: str  # the ClickHouse table's name
    primary_key: tuple[str, ...]
    created_at: str | None
    updated_at: str | None
    soft_delete: str | None = None
    null_arrays_as_empty: bool = False  # nullable arrays as native Arrays, not JSON text
    snapshot_partitions: int = 1  # connections reading the initial snapshot side by side
    insert_block_mb: int = 256  # the most rows ClickHouse gathers into one part of a load, MB
    layout: Layout = field(default_factory=Layout)  # the ClickHouse table's sorting, partitions
    rebuild_on_schema_change: bool = False  # a dropped or retyped column: rebuild, not stop

    @property
    def version_column(self) -> str | None:
        """The row version ClickHouse keeps the newest of: `updated_at`, or `created_at` for rows
        that never change; None where every run replaces the whole table."""
        return self.updated_at or self.created_at

    @property
    def replaces(self) -> bool:
        return self.version_column is None
