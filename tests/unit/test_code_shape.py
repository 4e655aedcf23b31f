"""The code location stays readable: short modules, functions and classes, and Dagster's
public API only (a private module is a break waiting for the next release)."""

import ast
import re
from pathlib import Path

import pytest

USER_CODE = Path(__file__).resolve().parents[2] / "user_code"
MODULES = sorted(USER_CODE.rglob("*.py"))
LIMITS = {"module": 300, "function": 50, "class": 120}  # lines


def _too_long(module: Path) -> list[str]:
    found = []
    if len(module.read_text().splitlines()) > LIMITS["module"]:
        found.append(f"{module.name} is over {LIMITS['module']} lines")
    for node in ast.walk(ast.parse(module.read_text())):
        kind = {ast.FunctionDef: "function", ast.ClassDef: "class"}.get(type(node))
        if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
            found.append(f"{module.name}: {kind} {node.name} is over {LIMITS[kind]} lines")
    return found


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(USER_CODE)))
def test_modules_functions_and_classes_are_short(module: Path):
    assert not _too_long(module)


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(USER_CODE)))
def test_only_dagster_s_public_modules_are_imported(module: Path):
    assert not re.findall(r"^\s*(?:from|import) dagster(?:_\w+)?\._", module.read_text(), re.M)
