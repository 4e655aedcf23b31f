"""The project's shape: the dagster family pinned together, and an engine that stands alone."""

import subprocess
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.version import Version

from demo.stack import REPO_ROOT

# Integration libraries are versioned 0.(minor + 16).patch beside dagster 1.minor.patch.
CORE_FAMILY = {"dagster", "dagster-webserver", "dagster-dg-cli"}
INTEGRATIONS = {"dagster-k8s", "dagster-postgres"}


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [Requirement(line) for line in project["dependencies"] + [r for e in extras for r in e]]


def test_the_dagster_family_is_pinned_together():
    """Unpinned, pip pairs a new dagster with years-old dagster-k8s and dagster-postgres."""
    pins = {}
    for requirement in _project_requirements():
        if requirement.name in CORE_FAMILY | INTEGRATIONS:
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{requirement} must be pinned with =="
            pins[requirement.name] = Version(specifier.version)
    assert set(pins) == CORE_FAMILY | INTEGRATIONS
    core = pins["dagster"]
    for name, pinned in pins.items():
        expected = core if name in CORE_FAMILY else Version(f"0.{core.minor + 16}.{core.micro}")
        assert pinned == expected, f"{name}=={pinned} does not go with dagster=={core}"
        assert Version(version(name)) == pinned, f"installed {name} is not the pinned version"


def test_the_sync_engine_imports_neither_dagster_nor_the_code_location():
    """user_code/sync/ can be tested, benchmarked and reused without Dagster or SYNC_CONFIG."""
    engine = sorted(path.stem for path in (REPO_ROOT / "user_code" / "sync").glob("*.py"))
    probe = (
        "import importlib, sys\n"
        f"for name in {engine!r}: importlib.import_module(f'user_code.sync.{{name}}')\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'dagster'"
        " or (m.startswith('user_code.') and not m.startswith('user_code.sync'))))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert completed.stdout.split() == [], "the engine imports modules above it"
