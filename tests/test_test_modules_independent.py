"""Test modules share helpers through tests/conftest.py and tests/helpers_*.py, never by importing one
another: importing a test module runs its module-level setup and ties its private names to other files."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit  # make test-fast runs it: one device, seconds


def _imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):  # relative: from .test_x import y / from . import test_x
            base = f"tests.{node.module}" if node.module else "tests"
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another():
    offenders = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        imported = _imported_modules(ast.parse(path.read_text(), filename=str(path)))
        tests = sorted(m for m in imported if m.split(".")[-1].startswith("test_") and m.startswith("tests."))
        if tests:
            offenders[str(path.relative_to(ROOT))] = tests
    assert offenders == {}, f"move the shared names to tests/conftest.py or tests/helpers_*.py: {offenders}"
