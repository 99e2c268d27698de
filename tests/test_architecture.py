"""The package layout of docs/architecture.md, enforced: data flows one way.

Every ``import medfed.X`` (lazy ones inside functions included) must point at the same
package or one in a lower layer; packages of the same layer never import each other, so
there is no import cycle between packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "medfed"
# bottom to top; see docs/architecture.md
LAYERS: list[set[str]] = [
    {"medfed"},  # medfed/__init__.py: the version
    {"errors"},
    {"io"},
    {"seeds"},
    {"config"},
    {"tasks"},
    {"datasets"},
    {"models"},
    {"privacy", "strategies"},
    {"federation"},
    {"reports"},
    {"inference"},
    {"simulation", "deploy"},
    {"cli"},
]
LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def package_of(module: str) -> str:
    """``medfed.datasets.imaging.dicom`` -> ``datasets``; ``medfed`` -> ``medfed``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medfed"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def medfed_imports(path: Path) -> set[str]:
    """Every medfed module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "medfed":  # from medfed import x: x may be a package
                found.update(f"medfed.{alias.name}" for alias in node.names)
            elif node.module.startswith("medfed."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "medfed")
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = package_of(module_name(path, root))
        for target in sorted(medfed_imports(path)):
            package = package_of(target)
            if package == source or package not in LAYER_OF:
                continue  # the same package, or a name imported from medfed/__init__
            if LAYER_OF[package] >= LAYER_OF[source]:
                problems.append(f"{module_name(path, root)} imports {target} "
                                f"({source} may import only layers below it)")
    return problems


def test_every_module_belongs_to_a_layer():
    unknown = {package_of(module_name(p)) for p in ROOT.rglob("*.py")} - set(LAYER_OF)
    assert not unknown, f"packages missing from LAYERS and docs/architecture.md: {unknown}"


def test_no_upward_or_sideways_import():
    assert upward_imports() == []


def test_the_check_sees_a_violation(tmp_path):
    """The check fails on an upward, a lazy upward and a sideways import (not vacuous)."""
    root = tmp_path / "medfed"
    (root / "datasets").mkdir(parents=True)
    (root / "simulation").mkdir()
    (root / "datasets" / "probe.py").write_text(
        "from medfed.datasets import base\n"
        "def load():\n    from medfed.federation.rounds import run_federation\n")
    (root / "simulation" / "probe.py").write_text("import medfed.deploy.registry\n")
    problems = upward_imports(root)
    assert len(problems) == 2
    assert "medfed.datasets.probe imports medfed.federation.rounds" in problems[0]
    assert "medfed.simulation.probe imports medfed.deploy.registry" in problems[1]


@pytest.mark.parametrize("package", sorted(LAYER_OF.keys() - {"medfed", "errors", "io",
                                                                  "config"}))
def test_packages_import_cleanly_on_their_own(package):
    """Each package imports in a fresh interpreter (no cycle hidden by import order)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import medfed.{package}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
