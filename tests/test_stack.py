"""demo/stack.py's process handling, which make dev and the end-to-end tests share: a stop
reports whatever it had to stop by force, so a test can require that nothing was."""

import sys
from pathlib import Path

from waiting import wait_until

from demo.stack import Service, start_service, stop_services

# Each script prints `ready` once it is what the test needs (SIGTERM ignored, a child started).
IGNORE_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
SLEEP = "import time; print('ready', flush=True); time.sleep(60)"
SCRIPTS = {
    "polite": SLEEP,
    "stubborn": f"{IGNORE_SIGTERM}; {SLEEP}",
    # a child in a session of its own: the parent's end does not end it
    "parent": "import subprocess, sys, time; "
    f"subprocess.Popen([sys.executable, '-c', {SLEEP!r}], start_new_session=True); time.sleep(60)",
}


def started(name: str, log_dir: Path) -> Service:
    service = start_service(name, [sys.executable, "-c", SCRIPTS[name]], {}, log_dir)
    wait_until(lambda: "ready" in service.log_path.read_text(), 30, f"{name} ready", interval=0.1)
    return service


def test_a_service_that_stops_by_itself_is_not_reported(tmp_path: Path):
    assert stop_services([started("polite", tmp_path)], timeout=10) == []


def test_a_service_that_ignores_sigterm_is_reported(tmp_path: Path):
    service = started("stubborn", tmp_path)
    (stopped_by_force,) = stop_services([service], timeout=1)
    assert stopped_by_force.startswith(f"pid {service.process.pid}: ")
    assert service.process.poll() is not None


def test_a_child_left_running_is_reported(tmp_path: Path):
    stopped_by_force = stop_services([started("parent", tmp_path)], timeout=2)
    assert len(stopped_by_force) == 1 and "print('ready'" in stopped_by_force[0], stopped_by_force
