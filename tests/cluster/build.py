"""Kubernetes 1.20.2, built once per machine from Debian bookworm's source package.

No registry here serves Kubernetes binaries or kind's node image. Debian bookworm's
`kubernetes` source package (1.20.5+really1.20.2; the later Debian sources carry kubectl only)
is the complete upstream tree with `vendor/`, and Debian's Go 1.19 builds it in GOPATH mode.
The fetched source and the built binaries are cached under
`~/.cache/pg2ch/kubernetes/v1.20.2/`, behind a lock so that two test sessions never build at
once. A cold build takes 10 to 25 minutes on two cores; the build tree and Go's build cache
are removed once the binaries are in place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from docker_support import debian_mirror, exclusive

VERSION = "1.20.2"
SOURCE_PACKAGE = "kubernetes/bookworm"
COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
PAUSE = "pause"  # the pod sandbox's process, from the tree's build/pause/linux/pause.c
GO_PACKAGE = "k8s.io/kubernetes"
BUILD_TIMEOUT_S = 3600
# The tarball lacks the generated OpenAPI definitions kube-apiserver serves; these trees
# carry `+k8s:openapi-gen=` tags only for their own generators' tests.
OPENAPI_EXCLUDED = ("code-generator", "sample-apiserver")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pg2ch" / "kubernetes"


def binaries() -> Path:
    """The directory holding COMMANDS and PAUSE, built first if any is missing."""
    version_dir = cache_dir() / f"v{VERSION}"
    bin_dir = version_dir / "bin"
    with exclusive(cache_dir() / "lock"):
        if not all((bin_dir / name).is_file() for name in (*COMMANDS, PAUSE)):
            build(fetch_source(version_dir / "source"), version_dir, bin_dir)
    return bin_dir


def fetch_source(target: Path) -> Path:
    """The source package's .dsc (with its tarballs beside it), fetched by apt from the
    machine's Debian mirror through a deb-src list of its own: the machine's apt sources
    and lists stay as they are."""
    found = sorted(target.glob("kubernetes_*.dsc"))
    if found:
        return found[-1]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pg2ch-apt-") as apt:
        parts = Path(apt) / "sources.list.d"
        parts.mkdir()
        (parts / "bookworm-src.sources").write_text(
            f"Types: deb-src\nURIs: {debian_mirror()}\nSuites: bookworm\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        for directory in ("lists/partial", "cache/archives/partial"):
            (Path(apt) / directory).mkdir(parents=True)
        options = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={apt}/lists",
            "-o", f"Dir::Cache={apt}/cache",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        _run(["apt-get", *options, "update"])
        _run(["apt-get", *options, "source", "--download-only", SOURCE_PACKAGE], cwd=target)
    (dsc,) = target.glob("kubernetes_*.dsc")
    return dsc


def build(dsc: Path, version_dir: Path, bin_dir: Path) -> None:
    gopath = version_dir / "gopath"
    tree = gopath / "src" / GO_PACKAGE
    shutil.rmtree(gopath, ignore_errors=True)
    tree.parent.mkdir(parents=True)
    _run(["dpkg-source", "--no-check", "-x", str(dsc), str(tree)])  # Debian's patches applied
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(gopath),
        "GOCACHE": str(version_dir / "go-build"),
        "GOFLAGS": "",
        "CGO_ENABLED": "1",
    }
    _generate_openapi(tree, bin_dir, env)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        output = bin_dir / f".{name}.partial"
        _run(
            ["go", "build", "-o", str(output), "-ldflags", _version_flags(),
             f"{GO_PACKAGE}/cmd/{name}"],
            cwd=tree, env=env,
        )  # fmt: skip
        output.rename(bin_dir / name)
    pause = tree / "build" / "pause" / "linux" / "pause.c"
    _run(["gcc", "-Os", "-static", "-o", str(bin_dir / PAUSE), str(pause)])
    shutil.rmtree(gopath)
    shutil.rmtree(env["GOCACHE"])


def _generate_openapi(tree: Path, bin_dir: Path, env: dict[str, str]) -> None:
    """pkg/generated/openapi/zz_generated.openapi.go, from every package that asks for it."""
    generator = bin_dir.parent / "openapi-gen"
    _run(
        ["go", "build", "-o", str(generator),
         f"{GO_PACKAGE}/vendor/k8s.io/kube-openapi/cmd/openapi-gen"],
        cwd=tree, env=env,
    )  # fmt: skip
    tagged = subprocess.run(
        ["grep", "-Rl", "--include=*.go", "+k8s:openapi-gen=", "pkg", "vendor"],
        cwd=tree, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    packages = sorted(
        {
            f"{GO_PACKAGE}/{Path(path).parent}"
            for path in tagged
            if not any(f"/{excluded}/" in path for excluded in OPENAPI_EXCLUDED)
        }
    )
    _run(
        [str(generator), "-i", ",".join(packages), "-p", f"{GO_PACKAGE}/pkg/generated/openapi",
         "-O", "zz_generated.openapi",
         "-h", str(tree / "vendor/k8s.io/code-generator/hack/boilerplate.go.txt")],
        cwd=tree, env=env,
    )  # fmt: skip
    generator.unlink()


def _version_flags() -> str:
    """Without them the apiserver reports v0.0.0, and Helm's `kubeVersion` checks fail."""
    major, minor, _ = VERSION.split(".")
    fields = {"gitVersion": f"v{VERSION}", "gitMajor": major, "gitMinor": minor}
    packages = ("component-base/version", "client-go/pkg/version")
    return " ".join(
        f"-X {GO_PACKAGE}/vendor/k8s.io/{package}.{field}={value}"
        for package in packages
        for field, value in fields.items()
    )


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    finished = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if finished.returncode:
        raise RuntimeError(
            f"building Kubernetes {VERSION}: `{' '.join(argv[:4])} …` failed "
            f"({finished.returncode}):\n{finished.stdout[-2000:]}\n{finished.stderr[-3000:]}"
        )
