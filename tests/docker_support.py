"""A Docker engine for the image tests, and the project's image built on it.

Where the tests run as root and `dockerd` is installed (`make test` installs Debian's
`docker.io` when it is missing), they start a daemon of their own: its socket and run state in
a temporary directory, its images in a cache directory (`~/.cache/pg2ch/docker`, so the base
image and the dependency layer are built once), no iptables and no bridge network (containers
use the host's network, where the stand-ins for the cluster's Services listen). They talk only
to that daemon, through its socket, and stop it by its pid. Elsewhere they use the Docker engine
the environment names (`DOCKER_HOST`, or the default socket), if one answers.

The Dockerfile's base image is pulled if it can be. Where no registry is reachable (these
machines), a private daemon gets a stand-in under the same name, built from Debian bookworm's
own packages with debootstrap: Debian's Python 3.11 instead of the python.org build of the
real `python:3.11-slim-bookworm`, on the same Debian release. It is labelled
`pg2ch.stand-in`, so a test can say which base it ran on.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prerequisites import required_or_skipped
from waiting import wait_until

from demo.stack import start_service, stop_services

STAND_IN_LABEL = "pg2ch.stand-in"
_NO_CAPABILITIES = "0000000000000000"
# What a process in our pods may do, as the kernel reports it: the image's user and group, no
# capability in any set (not even in the bounding set, so none can be gained), no_new_privs
# (setuid binaries grant nothing), and a seccomp filter (the runtime's default profile).
UNPRIVILEGED = {
    "Uid": "1000 1000 1000 1000",
    "Gid": "1000 1000 1000 1000",
    **dict.fromkeys(["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"], _NO_CAPABILITIES),
    "NoNewPrivs": "1",
    "Seccomp": "2",
}
DAEMON_START_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 900
_BOOKWORM_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pg2ch" / "docker"


@dataclass(frozen=True)
class DockerEngine:
    """The `docker` command line, aimed at one daemon."""

    host: str | None  # DOCKER_HOST for the CLI; None: the environment's own
    private: bool  # started by these tests, with a data root of their own

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        finished = subprocess.run(
            ["docker", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and finished.returncode:
            raise AssertionError(
                f"`docker {' '.join(args[:3])} …` failed ({finished.returncode}):\n"
                f"{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"
            )
        return finished

    def inspect_image(self, reference: str, template: str) -> str | None:
        """`docker image inspect --format <template>`; None if there is no such image."""
        found = self.run("image", "inspect", "--format", template, reference, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def has_image(self, reference: str) -> bool:
        return self.inspect_image(reference, "{{.Id}}") is not None

    def build(self, tag: str, context: Path | str, dockerfile: str | None = None) -> None:
        """`docker build`; `dockerfile` given as text is read from stdin (context `-`)."""
        args = ["build", "--network", "host", "--tag", tag]
        self.run(*args, str(context), timeout=BUILD_TIMEOUT_S, input=dockerfile)

    def answers(self) -> bool:
        try:
            version = self.run("version", "--format", "{{.Server.Version}}", check=False)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return False
        return version.returncode == 0


def privileges(status: str) -> dict[str, str]:
    """The fields of UNPRIVILEGED in a process's /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {name: " ".join(fields[name].split()) for name in UNPRIVILEGED if name in fields}


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """One test session at a time holds `path`'s lock (a cache's state, a daemon's data root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def private_daemon() -> Iterator[DockerEngine]:
    """A dockerd of our own: socket and state under a temporary directory, images cached."""
    data_root = cache_dir() / "data"
    with exclusive(cache_dir() / "lock"), tempfile.TemporaryDirectory(prefix="pg2ch-dkr-") as run:
        socket = Path(run) / "docker.sock"
        argv = [
            "dockerd",
            f"--host=unix://{socket}",
            f"--data-root={data_root}",
            f"--exec-root={run}/exec",
            f"--pidfile={run}/docker.pid",
            "--iptables=false",
            "--bridge=none",
            f"--add-runtime={RUNTIME}={_write_runtime(Path(run))}",
            f"--default-runtime={RUNTIME}",
        ]
        daemon = start_service("dockerd", argv, dict(os.environ), Path(run))
        engine = DockerEngine(f"unix://{socket}", private=True)
        try:

            def answers() -> bool:
                assert daemon.process.poll() is None, f"dockerd exited\n{daemon.log_tail()}"
                return engine.answers()

            wait_until(answers, DAEMON_START_TIMEOUT_S, "dockerd answering", daemon.log_tail, 0.5)
            yield engine
            engine.run("image", "prune", "--force")  # earlier builds' images, now untagged
        finally:
            stopped_by_force = stop_services([daemon])
            unmount_below(Path(run))
        assert stopped_by_force == [], "dockerd or its containerd had to be stopped by force"


# runc, except that a negative oom_score_adj asked for a container is raised to 0: this
# machine refuses negative values (writing one fails with an I/O error), and the kubelet asks
# -998 for every pod sandbox, which then fails in runc with "can't get final child's PID".
RUNTIME = "runc-oom-score-0"
_RUNTIME_SCRIPT = """#!/bin/sh
previous=""
for argument in "$@"; do
    case "$previous" in --bundle|-b) bundle="$argument" ;; esac
    case "$argument" in --bundle=*) bundle="${argument#--bundle=}" ;; esac
    previous="$argument"
done
if [ -n "${bundle:-}" ]; then
    /usr/bin/python3 - "$bundle/config.json" <<'PY'
import json, sys
with open(sys.argv[1]) as file:
    config = json.load(file)
process = config.get("process", {})
if process.get("oomScoreAdj", 0) < 0:
    process["oomScoreAdj"] = 0
    with open(sys.argv[1], "w") as file:
        json.dump(config, file)
PY
fi
exec runc "$@"
"""


def _write_runtime(directory: Path) -> Path:
    path = directory / RUNTIME
    path.write_text(_RUNTIME_SCRIPT)
    path.chmod(0o755)
    return path


def unmount_below(directory: Path) -> None:
    """Whatever stays mounted below `directory`: dockerd's network namespace in its exec root,
    the kubelet's volumes in its root directory."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{directory}/")), reverse=True):
        subprocess.run(["umount", mount], check=True)


@contextmanager
def docker_engine() -> Iterator[DockerEngine]:
    if shutil.which("docker") is None and shutil.which("dockerd") is None:
        required_or_skipped(
            "no Docker here: install Docker (as root, `make test` installs Debian's docker.io)"
        )
    if os.geteuid() == 0 and shutil.which("dockerd"):
        with private_daemon() as engine:
            yield engine
        return
    engine = DockerEngine(None, private=False)
    if not engine.answers():
        required_or_skipped("no Docker engine answers (DOCKER_HOST or the default socket)")
    yield engine


def base_image(dockerfile: Path) -> str:
    return next(
        line.split()[1]
        for line in dockerfile.read_text().splitlines()
        if line.upper().startswith("FROM ")
    )


def ensure_base_image(engine: DockerEngine, reference: str) -> None:
    """The Dockerfile's base: present, pulled, or (private daemon only) a stand-in."""
    if engine.has_image(reference):
        return
    if engine.run("pull", reference, check=False, timeout=600).returncode == 0:
        return
    if not engine.private:
        required_or_skipped(f"{reference} cannot be pulled and is not in the Docker engine")
    if reference != "python:3.11-slim-bookworm" or shutil.which("debootstrap") is None:
        required_or_skipped(
            f"{reference} cannot be pulled, and a stand-in is built only for "
            "python:3.11-slim-bookworm, with debootstrap"
        )
    _import_stand_in(engine, reference)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in sources:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 1:
                return next(w for w in words[1:] if not w.startswith("["))
    return _BOOKWORM_MIRROR


def _import_stand_in(engine: DockerEngine, reference: str) -> None:
    """Debian bookworm with python3, pip and venv, laid out like the python image: `python`
    and `pip` on PATH, pip allowed to install system-wide, the machine's CA bundle (the only
    way containers here reach the package index)."""
    with tempfile.TemporaryDirectory(prefix="pg2ch-base-") as work:
        root = Path(work) / "rootfs"
        packages = "python3,python3-venv,python3-pip,ca-certificates"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(root),
             debian_mirror()],
            check=True, capture_output=True, timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        for name, target in (("python", "python3"), ("python3", "python3"), ("pip", "pip3")):
            (root / "usr/local/bin" / name).symlink_to(f"/usr/bin/{target}")
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / cache, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", "ENV LANG=C.UTF-8",
             "--change", f"LABEL {STAND_IN_LABEL}=debootstrap-bookworm",
             "--change", 'CMD ["python3"]', "-", reference],
            stdin=tar.stdout, env=engine.env(), capture_output=True, timeout=600,
        )  # fmt: skip
        tar.wait()
        assert imported.returncode == 0, imported.stderr.decode()[-2000:]
