"""augment on the smoke profile, end to end on the real BreastMNIST (classify and generate run first)."""

import json
from pathlib import Path

import numpy as np
import pytest

from medgen.data import load_prepared
from medgen.errors import DataError
from medgen.stages import augment, classify, generate, prepare
from medgen.training import load_model

pytestmark = pytest.mark.integration


def test_augment_smoke_end_to_end(smoke_cfg, workdir):
    cfg = smoke_cfg()
    prepare.run(cfg)
    with pytest.raises(Exception, match="not found"):
        augment.run(cfg)  # no classify checkpoint yet: a clear error, not a crash
    classify.run(cfg)
    with pytest.raises(DataError, match="samples.npz not found"):
        augment.run(cfg)
    generate.run(cfg)
    summary = augment.run(cfg)

    assert set(summary["arms"]) == set(cfg.augment.arms) and summary["seeds"] == cfg.augment.seeds
    assert summary["best_arm"] in cfg.augment.arms
    on_disk = json.loads(Path(cfg.augment.metrics).read_text())
    assert on_disk["arms"].keys() == summary["arms"].keys()
    for key in ("test_auc", "test_balanced_acc"):
        assert set(on_disk["delta_vs_baseline"]["synthetic"][key]) >= {"diff_mean", "diff_std", "p_value", "beats"}

    dataset = load_prepared(cfg.data)
    per_seed = json.loads(Path(cfg.augment.details).read_text())["per_seed"]
    base = [r for r in per_seed if r["arm"] == "baseline"]
    synth = [r for r in per_seed if r["arm"] == "synthetic"]
    largest = max(base[0]["class_counts"].values())
    assert all(set(r["class_counts"].values()) == {largest} for r in synth)  # rebalanced to equal counts
    assert synth[0]["n_train"] > base[0]["n_train"]
    assert len(dataset.val) == 78 and len(dataset.test) == 156  # val/test untouched, real only

    model, checkpoint = load_model(cfg.augment.checkpoint)
    assert checkpoint["config"]["arm"] == "synthetic"
    import torch

    assert tuple(model(torch.zeros(2, 1, 28, 28)).shape) == (2, 2)
    assert Path(cfg.augment.plots_dir, "arms.png").stat().st_size > 1000
    assert np.isfinite(summary["arms"]["synthetic"]["test_auc_mean"])
