"""`classify` on the real BreastMNIST: smoke end to end, ablation switches, transfer, checkpoint reload."""

import json
import logging
import urllib.error
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from medgen import classification, data, tracking
from medgen.errors import MedgenError
from medgen.models.classifier import TinyEncoder
from medgen.stages import classify, prepare
from medgen.training import load_model, run_epoch, save_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
METRICS = ("acc", "auc", "balanced_acc", "f1", "precision", "recall", "minority_recall")
KEYS = {"seeds", "ensemble", *(f"test_{m}_{s}" for m in METRICS for s in ("mean", "std", "ci95"))}


@pytest.fixture
def prepared(smoke_cfg):
    cfg = smoke_cfg()
    prepare.run(cfg)
    return data.load_prepared(cfg.data)


def tiny(dataset, n=48):
    """A small stratified slice so ablation fits take a second."""
    return classification.subsample(dataset.train, n / len(dataset.train), seed=0)


def test_smoke_end_to_end_and_checkpoint_reproduces_test_predictions(smoke_cfg, prepared, caplog, monkeypatch):
    monkeypatch.setenv("MEDGEN_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="medgen.progress")
    cfg = smoke_cfg()
    summary = classify.run(cfg)
    assert set(summary) == KEYS and summary["seeds"] == cfg.classify.seeds == 2
    assert 0.0 <= summary["test_auc_mean"] <= 1.0 and summary["test_acc_std"] >= 0.0
    for metric in ("acc", "auc"):  # the interval of the seed mean: two numbers around it
        lo, hi = summary[f"test_{metric}_ci95"]
        assert lo <= summary[f"test_{metric}_mean"] <= hi
        ens_lo, ens_hi = summary["ensemble"][f"{metric}_ci95"]
        assert ens_lo <= summary["ensemble"][metric] <= ens_hi
    # AUC moves when test images are resampled (the smoke model may still call every image one class,
    # which fixes accuracy under a class-stratified bootstrap)
    assert summary["test_auc_ci95"][1] - summary["test_auc_ci95"][0] > 0.01
    assert json.loads(Path(cfg.classify.metrics).read_text()) == summary
    lines = [r.getMessage() for r in caplog.records if r.name == "medgen.progress"]
    assert any(line.startswith("classify seeds: 2/2 seeds seed 43 ") for line in lines), lines[-5:]
    assert any(line.startswith("fit seed 42: ") and " epochs val_auc " in line for line in lines), lines[-5:]
    assert any(line.startswith("search breastmnist-classify-") for line in lines), lines[-5:]
    details = json.loads(Path(cfg.classify.details).read_text())
    assert all("seconds" not in r for r in details["per_seed"])  # timings live in MLflow and the log
    assert len(details["per_seed"]) == 2 and details["search"]["trials"] == cfg.classify.n_trials
    assert np.sum(details["confusion"]) == len(prepared.test)
    for name in ("history.csv", "confusion.json", "roc.csv", "curves.png", "confusion.png", "roc.png"):
        assert (Path(cfg.classify.plots_dir) / name).stat().st_size > 0, name

    model, checkpoint = load_model(cfg.classify.checkpoint)
    assert checkpoint["config"]["n_classes"] == 2 and checkpoint["config"]["input_size"] == 28
    assert checkpoint["config"]["class_names"] == list(prepared.class_names)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 2)
    again = classification.evaluate(model, prepared.test)
    for key, value in again.items():
        assert value == pytest.approx(checkpoint["metrics"][f"test_{key}"], abs=1e-9), key
    seed_metrics = {r["seed"]: r["test_auc"] for r in details["per_seed"]}
    assert seed_metrics[details["checkpoint_seed"]] == pytest.approx(again["auc"])

    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name("medgen/breastmnist/classify")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    stage = next(r for r in runs if r.info.run_name == "classify")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id]
    assert stage.info.status == "FINISHED" and len(children) == cfg.classify.n_trials + cfg.classify.seeds
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id, "plots")}
    assert {"plots/curves.png", "plots/confusion.png", "plots/roc.png", "plots/history.csv"} <= artifacts
    seed_run = next(r for r in children if r.info.run_name.startswith("seed-"))
    history = mlflow.MlflowClient().get_metric_history(seed_run.info.run_id, "val_auc")
    assert len(history) >= 1  # per-epoch curves are logged


def _fit(cfg, dataset, **changes):
    c = replace(cfg.classify, epochs=2, patience=2, **changes)
    return classification.fit_classifier(c, tiny(dataset), dataset.val, dataset.n_classes, seed=7, device="cpu")


def test_ablation_switches_change_what_is_trained(smoke_cfg, prepared):
    cfg = smoke_cfg()
    _, off_a = _fit(cfg, prepared, augment=False)
    _, off_b = _fit(cfg, prepared, augment=False)
    assert off_a["rows"] == off_b["rows"]  # same seed, no augmentation: identical epochs
    _, on = _fit(cfg, prepared, augment=True)
    assert on["rows"][0]["train_loss"] != off_a["rows"][0]["train_loss"]
    _, weighted = _fit(cfg, prepared, augment=False, class_weights=True)
    assert weighted["rows"][0]["train_loss"] != off_a["rows"][0]["train_loss"]
    _, no_dropout = _fit(cfg, prepared, augment=False, dropout=0.0)
    assert no_dropout["rows"][0]["train_loss"] != off_a["rows"][0]["train_loss"]
    _, xavier = _fit(cfg, prepared, augment=False, init="xavier")
    assert xavier["rows"][0]["train_loss"] != off_a["rows"][0]["train_loss"]
    half = classification.subsample(prepared.train, 0.5, seed=0)
    assert len(half) == pytest.approx(len(prepared.train) / 2, abs=2)
    assert np.bincount(half.labels).tolist() == [round(147 / 2), round(399 / 2)]  # stratified


def test_class_weights_are_inverse_frequency():
    weights = classification.class_weight_tensor(np.array([0, 1, 1, 1]), 2)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])


def test_transfer_from_an_encoder_checkpoint_freezes_then_unfreezes(smoke_cfg, prepared, workdir):
    encoder = TinyEncoder(out_features=16)
    path = save_model(workdir / "encoder.pt", encoder, {"out_features": 16}, config={"out_features": 16}, metrics={})
    cfg = smoke_cfg("classify.pretrained=encoder", f"classify.encoder_checkpoint={path}")
    model, _ = classification.build_model(cfg.classify, 2, (1, 28, 28))
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)
    # one frozen epoch changes the head only
    x, y = data.to_tensors(tiny(prepared))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, _ = classification._optimizer(model, cfg.classify, 1e-2, 0.0, 2)
    steps = classification.ClassifierSteps(
        model, x, y, optimizer, None, torch.nn.CrossEntropyLoss(), None, torch.Generator(), freeze=1
    )
    run_epoch(steps, len(y), 16, epoch=0, generator=steps.generator)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])
    fitted, history = classification.fit_classifier(
        replace(cfg.classify, epochs=2, freeze_epochs=1), tiny(prepared), prepared.val, 2, seed=0, device="cpu"
    )
    assert len(history["rows"]) == 2
    assert all(p.requires_grad for p in fitted.parameters())  # unfrozen after the head-only epoch
    # an encoder built for other images is refused before training, naming both shapes
    with pytest.raises(MedgenError, match="encoder was trained on 1-channel images, the data is 3-channel 32 px"):
        classification.build_model(cfg.classify, 2, (3, 32, 32))


def test_missing_weights_are_clear_errors(smoke_cfg, prepared, workdir, monkeypatch):
    cfg = smoke_cfg("classify.pretrained=encoder", f"classify.encoder_checkpoint={workdir / 'none.pt'}")
    with pytest.raises(MedgenError, match="encoder checkpoint not found"):
        classify.run(cfg)
    assert not Path(cfg.classify.metrics).exists()

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(MedgenError, match="ImageNet ResNet-18 weights unavailable"):
        classification.build_model(smoke_cfg("classify.pretrained=imagenet").classify, 2, (1, 28, 28))
