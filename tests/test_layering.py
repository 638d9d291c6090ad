"""The import graph runs one way: segmentation (core) <- models, losses <- pipelines.

Read from the sources with ``ast``, so an import inside a function counts as much as one at
module top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the first-party packages it must never import
_FORBIDDEN = {
    "segmentation": {"models", "losses", "pipelines"},
    "models": {"pipelines"},
    "losses": {"pipelines"},
}


def imported_packages(source: str) -> set[tuple[str, int]]:
    """(top-level package, line) of every import statement in ``source``, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def test_imported_packages_sees_imports_inside_functions():
    source = "import os\ndef f():\n    from pipelines.cli import main\n    import models.unet\n"
    assert imported_packages(source) == {("os", 1), ("pipelines", 3), ("models", 4)}


@pytest.mark.parametrize("package", sorted(_FORBIDDEN))
def test_no_import_runs_back_up(package):
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in sorted((REPO / package).rglob("*.py"))
             for name, line in sorted(imported_packages(path.read_text(encoding="utf-8")))
             if name in _FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_cli_lives_in_pipelines():
    assert not (REPO / "segmentation" / "cli.py").exists()
    assert "lungseg = pipelines.cli:main" in (REPO / "setup.cfg").read_text(encoding="utf-8")
