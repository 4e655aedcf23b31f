"""A network namespace of the test's own: the cluster's addresses never leave it.

Every process of the cluster starts in it through `nsenter --net` (not `ip netns exec`, which
also remounts /sys and hides the cgroup mounts the kubelet needs). The test's thread enters it
too while it talks to the cluster (GraphQL and Postgres through `kubectl port-forward`, whose
listeners are on the namespace's loopback), and leaves it after.
"""

from __future__ import annotations

import ctypes
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class NetworkNamespace:
    name: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def ip(self, *args: str) -> None:
        subprocess.run(self.command("ip", *args), check=True, capture_output=True, timeout=30)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in the namespace, and back where it was on the way out."""
        with open("/proc/thread-self/ns/net", "rb") as original, open(self.path, "rb") as target:
            _setns(target.fileno(), self.path)
            try:
                yield
            finally:
                _setns(original.fileno(), Path(original.name))


def _setns(fd: int, path: Path) -> None:
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns into {path}")


@contextmanager
def network_namespace(prefix: str) -> Iterator[NetworkNamespace]:
    """A new namespace with its loopback up, deleted on the way out."""
    namespace = NetworkNamespace(f"{prefix}-{secrets.token_hex(4)}")
    subprocess.run(["ip", "netns", "add", namespace.name], check=True, timeout=30)
    try:
        namespace.ip("link", "set", "lo", "up")
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "delete", namespace.name], check=True, timeout=30)
