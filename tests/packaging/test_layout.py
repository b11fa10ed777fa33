"""The house rules of the layout: one map from folders to installed names, and ``outbox`` standing alone."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from tests.helpers import ROOT


def _package_dirs() -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"])


def test_every_tierbox_subpackage_is_a_link_to_its_folder_and_listed_once() -> None:
    mapped = {name.removeprefix("tierbox."): folder for name, folder in _package_dirs().items()
              if name.startswith("tierbox.") and name.count(".") == 1}
    links = {p.name: p.readlink().as_posix() for p in (ROOT / "tierbox").iterdir() if p.is_symlink()}
    assert links == {name: f"../{folder}" for name, folder in mapped.items()}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(packages) == set(_package_dirs())


def test_outbox_imports_nothing_of_tierbox() -> None:
    offenders = []
    for path in sorted((ROOT / "outbox").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"tierbox", "tests", "examples"}]
    assert offenders == []
    loaded = subprocess.run([sys.executable, "-c", "import sys, outbox, outbox.testing; "
                             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tierbox'))"],
                            capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    assert loaded == "[]"
