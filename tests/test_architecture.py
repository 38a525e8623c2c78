"""DESIGN.md's import rules: internal layering via import-linter (.importlinter), external
packages by scanning each module's imports."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gemmaserve"


def _imports(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "area, forbidden",
    [
        # The reference implementation is a test dependency only.
        ("", {"transformers"}),
        # The engine and the model know nothing of HTTP.
        ("engine", {"fastapi", "starlette", "uvicorn", "httpx"}),
        ("model", {"fastapi", "starlette", "uvicorn", "httpx"}),
        ("ops", {"fastapi", "starlette", "uvicorn", "httpx"}),
        # Wire types stay light: no torch; the HTTP layer reaches tensors only through the engine.
        ("protocol", {"torch"}),
        ("api", {"torch"}),
    ],
)
def test_external_imports(area, forbidden):
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden)
        for p in sorted((PKG / area).rglob("*.py"))
        if _imports(p) & forbidden
    }
    assert offenders == {}


def test_every_module_opens_with_a_docstring():
    missing = [
        str(p.relative_to(ROOT))
        for p in sorted(PKG.rglob("*.py"))
        if ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) is None
    ]
    assert missing == []


def _reads_environment(path: Path) -> bool:
    """Whether a module reads environment variables (os.environ / os.getenv / os.putenv)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                return True
        if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "getenv") for a in node.names):
            return True
    return False


def test_environment_variables_are_read_only_in_config():
    readers = sorted(str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if _reads_environment(p))
    assert readers == ["gemmaserve/config.py"]
