"""The house rules of the layout: one map from folders to installed names, and ``outbox`` standing alone."""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
import tomllib
from pathlib import PurePosixPath

from tests.helpers import ROOT


def _package_dirs() -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"])


def _copied_before_install(dockerfile: str) -> set[str]:
    """Build-context paths the Dockerfile's ``COPY`` lines bring in before its ``pip install``.

    Only those count: setuptools reads package-dir when ``pip install`` runs, so a folder copied
    later (or never) stops the build with "package directory ... does not exist".
    """
    sources: set[str] = set()
    for line in dockerfile.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["RUN"] and "pip install" in line:
            return sources
        if words[:1] == ["COPY"]:
            args = [w for w in words[1:] if not w.startswith("--")]
            sources |= {PurePosixPath(a).as_posix() for a in args[:-1]}
    raise AssertionError("the Dockerfile has no `RUN pip install` line")


def _missing_from_image(dockerfile: str) -> list[str]:
    """package-dir folders (and the readme pyproject names) that the image build would not have."""
    needed = {PurePosixPath(folder).parts[0] for folder in _package_dirs().values()}
    needed |= {"pyproject.toml", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]}
    copied = _copied_before_install(dockerfile)
    return sorted(n for n in needed if n not in copied and "." not in copied)


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


def test_the_dockerfile_copies_every_package_dir_folder_before_installing() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert _missing_from_image(dockerfile) == []
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert ignored.isdisjoint(PurePosixPath(f).parts[0] for f in _package_dirs().values())


def test_a_folder_left_out_of_the_dockerfile_is_caught() -> None:
    # The drift this guards against: webhooks/ and celery_bridge/ were mapped in pyproject after the
    # Dockerfile was written, and the image's pip install failed on them.
    dockerfile = (ROOT / "Dockerfile").read_text()
    without = "\n".join(line for line in dockerfile.splitlines() if line != "COPY webhooks ./webhooks")
    assert without != dockerfile
    assert _missing_from_image(without) == ["webhooks"]
    moved_after_install = without.replace("COPY examples", "COPY webhooks ./webhooks\nCOPY examples")
    assert _missing_from_image(moved_after_install) == ["webhooks"]
