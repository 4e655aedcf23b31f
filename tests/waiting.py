"""Waiting on what the tests start: a free port to listen on, and polling with a deadline."""

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nothing listens on now (closed again before it is returned)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    context: Callable[[], str] = lambda: "",
    interval: float = 1,
) -> T:
    """Poll `condition` until it returns something truthy, and return that. On timeout, fail
    naming `what` with `context()` (logs, states). A condition may fail at once by raising."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s\n{context()}")
        time.sleep(interval)
    return value
