"""What the engine needs to know of one table, whatever configuration it came from."""

from collections.abc import Callable
from dataclasses import dataclass

# Where the engine reports progress (a run's log); `no_progress` where nobody listens.
Progress = Callable[[str], None]


def no_progress(message: str) -> None:
    """Discard a progress message."""


@dataclass(frozen=True)
class TableSettings:
    source: str  # schema.table in Postgres
    target: str  # the ClickHouse table's name
    primary_key: tuple[str, ...]
    created_at: str
    updated_at: str
    soft_delete: str | None = None
    null_arrays_as_empty: bool = False  # nullable arrays as native Arrays, not JSON text
    snapshot_partitions: int = 1  # connections reading the initial snapshot side by side
