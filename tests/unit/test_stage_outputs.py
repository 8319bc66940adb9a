"""Each stage's `outputs(cfg)` (what the runner checks and swaps as one set) is what dvc.yaml declares."""

import re
from pathlib import Path

import pytest
import yaml

from medgen import stages
from medgen.params import load_config

ROOT = Path(__file__).resolve().parents[2]


def dvc_paths(stage: dict, values: dict) -> set[Path]:
    """outs + metrics + plots of one dvc.yaml stage, ${section.key} resolved from params.yaml."""

    def resolve(text: str) -> str:
        return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(values[m.group(1)][m.group(2)]), text)

    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    names = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return {Path(resolve(n)).absolute() for n in names}


@pytest.mark.parametrize("name", stages.STAGES)
def test_declared_outputs_match_dvc_yaml(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "params.yaml", profile="full")
    declared = stages.module(name).outputs(cfg)
    dvc = dvc_paths(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name], cfg.to_dict())

    def covered(path: Path) -> bool:
        return any(path == o.path or (o.folder and o.path in path.parents) for o in declared)

    assert all(covered(p) for p in dvc), sorted(p for p in dvc if not covered(p))
    for out in declared:  # and nothing is declared that dvc.yaml does not know
        assert out.path in dvc or (out.folder and any(out.path in p.parents for p in dvc)), out
