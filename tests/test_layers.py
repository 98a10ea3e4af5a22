"""The package's layering, read from the source: imports point down, and the core needs
nothing but the standard library.

From the bottom: the UAPI and the error types; the spec and the small shared helpers
(input reading, terminal output, progress, JSON Schemas); the model and the kernel bindings,
side by side and blind to each other; the backend seam over both; the operations over
the seam; the tools (scenarios, the
checker, the VMM handler, the VM runner); the tools built on tools (report, bench); the
CLI. A module may import from its own package and from packages on lower layers only.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "guestmem"

LAYERS: dict[str, int] = {
    "__init__": 0,
    "uapi": 0,
    "errors": 0,
    "printable": 0,
    "spec": 1,
    "inputs": 1,
    "outfile": 1,
    "terminal": 1,
    "progress": 1,
    "schemas": 1,
    "suite": 1,  # data: the built-in scenario files
    "model": 2,
    "kvm": 2,
    "backend": 3,
    "ops": 4,
    "scenario": 5,
    "checker": 5,
    "vmm": 5,
    "vmrun": 5,
    "report": 6,
    "bench": 6,
    "stress": 6,
    "cli": 7,
    "__main__": 8,
}
#: Third-party modules the package may import, each only inside a function that falls back
#: or explains the missing extra (pyproject.toml's optional dependencies).
OPTIONAL = {"rich": "terminal", "shtab": "cli", "ray": "checker"}


def _part(module: str) -> str:
    """The top-level part of ``guestmem.x.y`` (``x``), ``__init__`` for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, id(node) in top))
            if node.module == "guestmem":  # from guestmem import kvm: a subpackage by name
                out += [(node.lineno, f"guestmem.{alias.name}", id(node) in top) for alias in node.names]
    return out


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(name) for name, _ in _modules()}
    assert parts - set(LAYERS) == set(), "give each new part of the package a layer here"


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_imports_point_down(name: str, path: Path) -> None:
    here = _part(name)
    wrong = []
    for line, module, _ in _imports(path):
        if module.split(".")[0] != "guestmem" or module == "guestmem":
            continue
        there = _part(module)
        if there == "__version__":
            there = "__init__"
        if there != here and LAYERS.get(there, 99) >= LAYERS[here]:
            wrong.append(f"{path.relative_to(SRC)}:{line}: {here} (layer {LAYERS[here]}) imports {module}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_only_the_standard_library_at_module_level(name: str, path: Path) -> None:
    wrong = []
    for line, module, module_level in _imports(path):
        first = module.split(".")[0]
        if first in ("guestmem", "__future__") or first in sys.stdlib_module_names:
            continue
        if first in OPTIONAL and _part(name) == OPTIONAL[first] and not module_level:
            continue
        wrong.append(f"{path.relative_to(SRC)}:{line}: imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_main_job_runs_without_site_packages() -> None:
    """``python3 -S`` (no site-packages at all): every module imports, and ``guestmem check``
    runs on the model, as on a bare kernel test machine."""
    code = (
        "import importlib, sys\n"
        f"for name in {[name for name, _ in _modules() if name != 'guestmem.__main__']!r}:\n"
        "    importlib.import_module(name)\n"
        "assert not {'rich', 'shtab', 'ray'} & set(sys.modules)\n"
        "from guestmem.cli import main\n"
        "sys.exit(main(['check', '--platform', 'pkvm']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "passed" in done.stdout
