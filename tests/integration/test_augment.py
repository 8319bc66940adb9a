"""augment on the smoke profile, end to end on the real BreastMNIST (classify and generate run first)."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from medgen.data import load_prepared
from medgen.errors import DataError
from medgen.stages import augment, classify, generate, prepare
from medgen.training import load_model

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_augment_smoke_end_to_end(smoke_cfg, workdir, caplog, monkeypatch):
    monkeypatch.setenv("MEDGEN_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="medgen.progress")
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
    n_arms = len(cfg.augment.arms)
    for arm in cfg.augment.arms[1:]:
        for key in ("test_auc", "test_balanced_acc", "test_minority_recall"):
            found = on_disk["vs_baseline"][arm][key]
            assert set(found) >= {"diff", "ci95", "p_value", "p_holm", "significant"}
            mean_diff = summary["arms"][arm][f"{key}_mean"] - summary["arms"]["baseline"][f"{key}_mean"]
            assert found["diff"] == pytest.approx(mean_diff) and found["ci95"][0] <= found["diff"] <= found["ci95"][1]
        assert 0 < on_disk["vs_baseline"][arm]["test_auc"]["delong_p_value"] <= 1
    assert on_disk["rule"] == {**on_disk["rule"], "alpha": 0.05, "correction": "holm", "comparisons": 3 * (n_arms - 1)}
    assert isinstance(on_disk["synthetic_beats_baseline"], bool)
    lines = [r.getMessage() for r in caplog.records if r.name == "medgen.progress"]
    fits = n_arms * cfg.augment.seeds
    assert any(line.startswith(f"augment arms x seeds: {fits}/{fits} fits") for line in lines), lines[-5:]
    assert any(line.startswith("gan final fit") for line in lines)
    assert any(line.startswith("gan trial 0") for line in lines)
    generated = json.loads(Path(cfg.generate.metrics).read_text())
    assert "seconds" not in generated  # timings live in MLflow and the log
    probs = Path(cfg.augment.plots_dir, "test_probs.csv").read_text().splitlines()
    assert probs[0] == "arm,seed,image,label,p_0,p_1" and len(probs) == 1 + fits * 156

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
