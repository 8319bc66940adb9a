"""The layering rules of docs/architecture.md, read from the source: stages import no stage, stay short, and
dvc.yaml lists the library modules each stage imports (a change there re-runs it; nothing else does)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from medgen import stages

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "medgen"
# Plumbing that moves data and records runs but never changes a byte a stage writes. Not io: its JSON and npz
# writers decide the bytes of every stage's outputs, so every stage lists it (tested below)
PLUMBING = {"config", "errors", "outputs", "progress", "tracking", "data", "native", "manifest", "registry"}


def medgen_imports(path: Path) -> set[str]:
    """Dotted names of the medgen modules `path` imports (from-imports of submodules included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medgen")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medgen"):
            found.add(node.module)
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if (SRC / node.module[7:].replace(".", "/") / f"{a.name}.py").exists()
            }
    return {name for name in found if name != "medgen"}


@pytest.mark.parametrize("name", stages.STAGES)
def test_stage_imports_no_stage_and_stays_short(name):
    path = SRC / "stages" / f"{name}.py"
    assert not any(m.startswith("medgen.stages") for m in medgen_imports(path)), f"{name} imports another stage"
    assert len(path.read_text().splitlines()) <= 200


@pytest.mark.parametrize("name", stages.STAGES)
def test_dvc_deps_list_the_library_a_stage_imports(name):
    deps = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["deps"])
    imported = {m.removeprefix("medgen.") for m in medgen_imports(SRC / "stages" / f"{name}.py")}
    files = {
        f"src/medgen/{m.replace('.', '/')}.py"
        for m in imported - PLUMBING
        if (SRC / f"{m.replace('.', '/')}.py").exists()
    }
    assert files - deps == set(), f"dvc.yaml {name}: imported but not a dependency"
