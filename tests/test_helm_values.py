"""helm/values.yaml against the official Dagster chart's own schema, checked by Helm's engine.

helm-python-sdk embeds Helm, so `validate_schema` is exactly what `helm install` checks: our
values merged over the chart's defaults, the subchart's values included. The chart's schema
points at Kubernetes definitions on the web; a temporary copy of the chart points them at the
same definitions bundled with kubernetes-validate, so the check runs offline.
"""

from __future__ import annotations

import copy
import re

import pytest
from chart_support import copy_chart_for_offline_use
from helm_python.chart import Chart
from helm_python.errors import HelmValuesError
from k8s_support import HELM_VALUES, load_yaml, require_chart, values, walk


@pytest.fixture(scope="module")
def chart(tmp_path_factory):
    """The chart, its schemas' remote $refs pointed at local definitions."""
    copied = copy_chart_for_offline_use(require_chart(), tmp_path_factory.mktemp("chart") / "c")
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
