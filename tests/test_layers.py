"""The layers hold: import-linter's contract in setup.cfg passes on the code, and fails on an upward import."""
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("cli", "fs", "pipelines", "manifests", "featurestore", "models")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` with ``root``'s setup.cfg, importing the packages from ``root`` (no cache)."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layer_contract_is_kept():
    res = lint_imports(REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.csv"))
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    store = tmp_path / "featurestore" / "store.py"
    store.write_text(store.read_text() + "\nfrom pipelines.data import load_split  # noqa: E402\n")
    res = lint_imports(tmp_path)
    assert res.returncode != 0
    assert "featurestore.store -> pipelines.data" in res.stdout
