"""helm/values.yaml against the official Dagster chart's own schema, checked by Helm's engine.

helm-python-sdk embeds Helm, so `validate_schema` is exactly what `helm install` checks: our
values merged over the chart's defaults, the subchart's values included. The chart's schema
points at Kubernetes definitions on the web; a temporary copy of the chart points them at the
same definitions bundled with kubernetes-validate, so the check runs offline.
"""

from __future__ import annotations

import copy
import re
import shutil
import stat
from pathlib import Path

import kubernetes_validate
import pytest
from helm_python.chart import Chart
from helm_python.errors import HelmValuesError
from k8s_support import HELM_VALUES, kubernetes_version, load_yaml, require_chart, values, walk

# Every form of remote Kubernetes-definitions reference found in the chart's schemas.
REMOTE_DEFINITIONS = re.compile(
    r"https://(?:raw\.githubusercontent\.com/yannh/kubernetes-json-schema/master"
    r"|kubernetesjsonschema\.dev)/v[0-9.]+/_definitions\.json#/definitions/"
)


def local_definitions() -> Path:
    version = kubernetes_version()
    path = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{version}-local"
        / "_definitions.json"
    )
    assert path.is_file(), f"kubernetes-validate bundles no definitions for {version}"
    return path


@pytest.fixture(scope="module")
def chart(tmp_path_factory):
    """The chart, its schemas' remote $refs pointed at local definitions."""
    copied = tmp_path_factory.mktemp("chart") / "dagster"
    shutil.copytree(require_chart(), copied)
    for path in [copied, *copied.rglob("*")]:  # the shared copy is read-only
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    local_prefix = f"file://{local_definitions()}#/$defs/"
    rewritten = 0
    for schema in copied.rglob("values.schema.json"):
        text, count = REMOTE_DEFINITIONS.subn(local_prefix, schema.read_text())
        schema.write_text(text)
        rewritten += count
        assert "kubernetesjsonschema.dev" not in text and "yannh/" not in text, schema
    assert rewritten > 0, "no remote $ref found: has the chart's schema changed?"
    with Chart.load(str(copied)) as loaded:
        yield loaded


def test_values_pass_the_chart_schema(chart):
    chart.validate_schema(values())


def with_change(path: list[str], value: object) -> dict:
    changed = copy.deepcopy(values())
    node = changed
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return changed


CODE_SERVER = values()["dagster-user-deployments"]["deployments"][0]


@pytest.mark.parametrize(
    ("path", "value", "reported"),
    [
        (["dagsterWebserver", "service", "port"], "80", "/dagsterWebserver/service/port"),
        (["runLauncher", "type"], "DockerRunLauncher", "/runLauncher/type"),
        (
            ["dagster-user-deployments", "deployments"],
            [{**CODE_SERVER, "port": "4000"}],
            "/deployments/0/port",
        ),
        # Checked by the Kubernetes Volume definition the schema refers to.
        (
            ["runLauncher", "config", "k8sRunLauncher", "volumes"],
            [{"name": "sync-config", "configMap": "sync-config"}],
            "/volumes/0/configMap",
        ),
    ],
    ids=["string-webserver-port", "unknown-run-launcher", "string-code-server-port", "bad-volume"],
)
def test_a_broken_value_is_rejected(chart, path, value, reported):
    with pytest.raises(HelmValuesError, match=re.escape(reported)):
        chart.validate_schema(with_change(path, value))


def test_every_top_level_key_is_a_chart_value():
    chart_defaults = load_yaml(require_chart() / "values.yaml")
    assert set(values()) - set(chart_defaults) == set()


def test_storage_is_the_external_postgres_through_psycopg2():
    postgresql = values()["postgresql"]
    assert postgresql["enabled"] is False
    assert values()["generatePostgresqlPasswordSecret"] is False
    assert postgresql["postgresqlScheme"] == "postgresql+psycopg2"
    # The exact line, for anyone grepping the deployment for the scheme.
    assert re.search(r"^\s+postgresqlScheme: postgresql\+psycopg2$", HELM_VALUES.read_text(), re.M)


def test_values_hold_no_secret_values():
    """Secrets are referenced by name only; a password or a URL with credentials is a leak."""
    strings = [(path, leaf) for path, leaf in walk(values()) if isinstance(leaf, str)]
    assert strings
    for path, leaf in strings:
        if re.search(r"password|token", path.rsplit(".", 1)[-1], re.I):
            assert leaf == "", f"a secret value at {path}"
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", leaf), f"credentials in a URL at {path}"
