"""The images the cluster's pods name, in the Docker engine the kubelet runs them on.

No registry answers here, so each image the manifests name is put there under that very name
(pull policies stay IfNotPresent, as rendered). Every one but ours is a stand-in, labelled
`pg2ch.stand-in`:

| image named                              | what stands for it                                |
|------------------------------------------|---------------------------------------------------|
| k8s.gcr.io/pause:3.2 (the pod sandbox)   | build/pause/linux/pause.c of the same Kubernetes   |
| postgres:17.6-bookworm (k8s/, and the    | Debian bookworm's PostgreSQL 15, with an entrypoint|
| chart's init containers)                 | doing what the official one does (postgres_image/) |
| docker.io/busybox:1.28 (the chart's      | Debian bookworm (our base image) with an nslookup  |
| init-user-deployment containers)         | that resolves as busybox 1.28's did (nslookup.c)   |
| docker.io/dagster/dagster-celery-k8s:    | our image's Python and dagster packages (the same  |
| 1.13.27 (webserver and daemon)           | pinned family), run as root as that image is       |
| pg2ch-user-code:<skaffold's tag>         | our image, built from the Dockerfile, plus chDB:   |
|                                          | no ClickHouse server runs here                     |
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

from docker_support import STAND_IN_LABEL, DockerEngine

PAUSE_IMAGE = "k8s.gcr.io/pause:3.2"
POSTGRES_IMAGE = "postgres:17.6-bookworm"
BUSYBOX_IMAGE = "docker.io/busybox:1.28"
DAGSTER_IMAGE = "docker.io/dagster/dagster-celery-k8s:1.13.27"
POSTGRES_CONTEXT = Path(__file__).parent / "postgres_image"
NSLOOKUP = Path(__file__).parent / "nslookup.c"


def load_images(
    docker: DockerEngine, pause_binary: Path, base: str, image: str, user_code_image: str
) -> None:
    """Every image the release names, under its name: `image` (ours, with chDB) as
    `user_code_image`, the name skaffold gives it; stand-ins built on `base` (the base of our
    image) and on `image`."""
    if not docker.has_image(PAUSE_IMAGE):
        _import_binary(docker, PAUSE_IMAGE, pause_binary)
    docker.build(POSTGRES_IMAGE, POSTGRES_CONTEXT)
    with tempfile.TemporaryDirectory(prefix="pg2ch-busybox-") as context:
        subprocess.run(
            ["gcc", "-Os", "-static", "-o", f"{context}/nslookup", str(NSLOOKUP)],
            check=True, capture_output=True,
        )  # fmt: skip
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base}\nCOPY nslookup /usr/local/bin/\n{_label('libc-nslookup')}"
        )
        docker.build(BUSYBOX_IMAGE, context)
    docker.build(DAGSTER_IMAGE, "-", dockerfile=f"FROM {image}\nUSER 0\n{_label('pg2ch-image')}")
    docker.run("tag", image, user_code_image)


def _label(what: str) -> str:
    return f"LABEL {STAND_IN_LABEL}={what}\n"


def _import_binary(docker: DockerEngine, reference: str, binary: Path) -> None:
    """An image holding one static binary, `/<its name>`, as its entrypoint."""
    with tempfile.NamedTemporaryFile(suffix=".tar") as archive:
        with tarfile.open(archive.name, mode="w") as tar:
            tar.add(binary, arcname=binary.name)
        docker.run(
            "import", "--change", f'ENTRYPOINT ["/{binary.name}"]',
            "--change", f"LABEL {STAND_IN_LABEL}=kubernetes-source", archive.name, reference,
        )  # fmt: skip
