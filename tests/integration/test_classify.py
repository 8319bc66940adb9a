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

from medgen import classification, data, ensemble, guard, tracking
from medgen.errors import MedgenError
from medgen.models.classifier import TinyEncoder
from medgen.stages import classify, prepare
from medgen.training import load_model, run_epoch, save_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
METRICS = ("acc", "auc", "balanced_acc", "f1", "precision", "recall", "minority_recall")
KEYS = {"seeds", "members", "served", "cv", *(f"test_{m}_{s}" for m in METRICS for s in ("mean", "std", "ci95"))}


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
    c = cfg.classify
    summary = classify.run(cfg)
    k = c.cv_folds * c.seeds
    assert set(summary) == KEYS and summary["seeds"] == c.seeds == 1 and summary["members"] == k == 2
    assert 0.0 <= summary["test_auc_mean"] <= 1.0 and summary["test_acc_std"] >= 0.0
    served = summary["served"]
    assert served["members"] == k and served["views"] == list(c.tta)
    for metric in ("acc", "auc", "balanced_acc"):  # the served model's figure inside its interval
        lo, hi = served[f"test_{metric}_ci95"]
        assert lo <= served[f"test_{metric}"] <= hi
    lo, hi = summary["test_auc_ci95"]  # the interval of the member mean
    assert lo <= summary["test_auc_mean"] <= hi and hi - lo > 0.01
    assert json.loads(Path(c.metrics).read_text()) == summary
    lines = [r.getMessage() for r in caplog.records if r.name == "medgen.progress"]
    assert any(line.startswith("cv classic #0: 2/2 fits") for line in lines), lines[-5:]
    assert any(line.startswith("search breastmnist-classify-") for line in lines), lines[-5:]
    details = json.loads(Path(c.details).read_text())
    table = details["search"]["candidates"]
    assert [t["recipe"] for t in table] == list(c.recipes)[: c.n_trials]  # the named recipes first, in order
    assert all(0.0 <= t["cv_auc"] <= 1.0 for t in table)
    best = max(table, key=lambda t: t["cv_auc"])  # first of equals
    assert table[details["search"]["chosen"]] == best and "trial" not in best  # trial numbers depend on kills
    scores = ("cv_auc", "cv_acc", "cv_balanced_acc")
    cv = summary["cv"]  # the smoke profile screens on every fold: the choice's figures are the chosen one's CV
    assert cv["recipe"] == best["recipe"] and cv["folds"] == cv["screen_folds"] == k
    assert {m: cv[m] for m in scores} == {m: cv[f"screen_{m}"] for m in scores} == {m: best[m] for m in scores}
    assert [(m["repeat"], m["fold"]) for m in details["members"]] == [(0, 0), (0, 1)]
    assert np.sum(details["confusion"]) == len(prepared.test)
    for name in ("history.csv", "confusion.json", "roc.csv", "curves.png", "confusion.png", "roc.png"):
        assert (Path(c.plots_dir) / name).stat().st_size > 0, name
    # calibration and the input guard (#18): fitted on out-of-fold predictions, scored on test once
    for key in ("ece", "ece_uncalibrated", "brier", "brier_uncalibrated", "nll", "nll_uncalibrated"):
        lo, hi = served[f"{key}_ci95"]
        # 1e-12: the smoke model's bootstrap bound can equal the point figure, summed in another order
        # (seen on an AVX-512 machine: brier 0.39349146641125077 against its upper bound ...1125050)
        assert lo - 1e-12 <= served[key] <= hi + 1e-12, key
    calibrator = served["calibrator"]
    assert calibrator["kind"] == min(calibrator["cv_nll"], key=lambda kind: round(calibrator["cv_nll"][kind], 6))
    ood = served["ood"]
    assert ood["method"] == max(ood["selection"], key=lambda name: round(ood["selection"][name], 6))
    assert set(ood["sets"]) == {"digits", "patches", "constant", "noise", "inverted", "blur", "rot90"}
    assert all(0.0 <= s["auroc"] <= 1.0 and 0.0 <= s["flagged"] <= 1.0 and s["n"] > 0 for s in ood["sets"].values())
    # the smoke profile's guard.ood_max: digits (~900 a half) and corruptions of 156 test images are cut to it
    assert smoke_cfg().guard.ood_max == 64 and ood["sets"]["digits"]["n"] == ood["sets"]["blur"]["n"] == 64
    assert 0.0 <= ood["test_flagged"] <= 1.0 and ood["keep"] == c.ood_keep
    reliability = json.loads((Path(c.plots_dir) / "reliability.json").read_text())
    assert sum(b["n"] for b in reliability["served"]) == len(prepared.test)
    assert (Path(c.plots_dir) / "reliability.png").stat().st_size > 0

    model, checkpoint = load_model(c.checkpoint)
    config = checkpoint["config"]
    assert config["n_classes"] == 2 and config["input_size"] == 28 and config["recipe"] == best["recipe"]
    assert config["class_names"] == list(prepared.class_names) and len(config["members"]) == k
    assert len(model.members) == k and model.views == tuple(c.tta)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 2)
    again = classification.evaluate(model, prepared.test)
    for key in ("acc", "auc", "balanced_acc"):  # the checkpoint is exactly the model the served figures score
        assert again[key] == pytest.approx(served[f"test_{key}"], abs=1e-9), key
    assert checkpoint["metrics"]["cv_auc"] == summary["cv"]["cv_auc"]  # the registry's selection figure
    assert config["ood"]["threshold"] == ood["threshold"] and config["calibrator"] == calibrator
    flagged = guard.predict(model, prepared.test.images, "cpu")[1] > ood["threshold"]
    assert flagged.mean() == pytest.approx(ood["test_flagged"], abs=1e-9)  # the checkpoint flags what was reported

    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name("medgen/breastmnist/classify")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    stage = next(r for r in runs if r.info.run_name == "classify")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id]
    assert stage.info.status == "FINISHED" and len(children) == c.n_trials  # one run per candidate
    assert sorted(r.data.metrics["cv_auc"] for r in children) == sorted(t["cv_auc"] for t in table)
    assert {r.data.params["recipe"] for r in children} == {t["recipe"] for t in table}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id, "plots")}
    assert {"plots/curves.png", "plots/confusion.png", "plots/roc.png", "plots/history.csv"} <= artifacts


@pytest.mark.slow
def test_a_rerun_reuses_the_study_and_refits_the_same_ensemble(smoke_cfg, prepared):
    """The second run finds every candidate scored, so it refits the chosen one's folds: the same weights."""
    cfg = smoke_cfg()
    first = classify.run(cfg)
    weights = {k: v.clone() for k, v in load_model(cfg.classify.checkpoint)[0].state_dict().items()}
    second = classify.run(cfg)
    assert second == first
    again = load_model(cfg.classify.checkpoint)[0].state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)


@pytest.mark.slow
def test_screening_scores_candidates_on_the_first_folds_and_completes_only_the_chosen(smoke_cfg, prepared, caplog):
    """classify.cv_screen=1 of 3 folds: each candidate fits one fold; the chosen one then fits the other two,
    and its members are the weights a full cross-validation of that candidate makes."""
    caplog.set_level(logging.INFO, logger="medgen.progress")
    cfg = smoke_cfg("classify.cv_folds=3", "classify.cv_screen=1")
    summary = classify.run(cfg)
    c = cfg.classify
    details = json.loads(Path(c.details).read_text())
    found = details["search"]
    assert found["screen_folds"] == 1 and found["folds"] == 3 and summary["members"] == 3
    best = found["candidates"][found["chosen"]]
    cv = summary["cv"]
    assert cv["screen_cv_auc"] == best["cv_auc"] and (cv["screen_folds"], cv["folds"]) == (1, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "medgen.progress"]
    assert any(line.startswith("cv classic #0: 1/1 fits") for line in lines), lines[-8:]
    assert any(line.startswith("chosen: the other 2 folds: 2/2 fits") for line in lines), lines[-8:]
    assert [(m["repeat"], m["fold"]) for m in details["members"]] == [(0, 0), (0, 1), (0, 2)]

    pool = classification.subsample(ensemble.pool_split(prepared), c.train_fraction, cfg.seed)
    folds = ensemble.make_folds(pool.labels, 3, 1, cfg.seed)
    hp = {k: found["hparams"][k] for k in ("lr", "weight_decay")}
    full = ensemble.fit_folds(ensemble.recipe(c, best["recipe"]), pool, 2, folds, hp, "cpu")
    model = load_model(c.checkpoint)[0]
    for member, fit in zip(model.members, full):  # completing the chosen one = its full cross-validation
        assert all(torch.equal(v, fit["state"][k]) for k, v in member.state_dict().items())
    assert cv["cv_auc"] == ensemble.cv_scores(pool.labels, ensemble.out_of_fold(pool, full, 2))["cv_auc"]
    assert load_model(c.checkpoint)[1]["metrics"]["cv_auc"] == cv["cv_auc"]  # the registry's figure: every fold


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


def test_the_recipes_run_unchanged_on_a_second_binary_medmnist_set(workdir):
    """PneumoniaMNIST's layout (28 px grey, 2 classes, the other class in the majority), a learnable stand-in built
    here: every named recipe is scored by CV and the served ensemble separates the classes on test. Real data:
    `medgen pipeline -S data.flag=pneumoniamnist` (docs/classifier.md)."""
    from tests.integration.test_any_shape import patterned

    arrays = {}
    for i, (split, n) in enumerate(zip(data.SPLITS, (96, 24, 40))):
        images, labels = patterned(n, 28, 1, 2, seed=10 + i)
        keep = np.flatnonzero((labels == 1) | (np.arange(n) % 4 == 0))  # 1 : 2 imbalance, class 1 the majority
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[keep], labels[keep]
    np.savez(workdir / "pneumonia.npz", **arrays)
    # a flag of its own: medgen checks a known flag's files against MedMNIST's sample counts
    overrides = ["data.flag=pneumonia_standin", "data.n_classes=2", f"data.source={workdir / 'pneumonia.npz'}"]
    overrides += ["classify.train_fraction=1.0"]
    overrides += ["classify.n_trials=4", "classify.search_epochs=3", "classify.cv_folds=2"]
    from medgen.params import load_config

    cfg = load_config(workdir / "params.yaml", profile="smoke", overrides=overrides)
    full = load_config(workdir / "params.yaml")
    assert cfg.classify.recipes == full.classify.recipes and cfg.classify.tta == full.classify.tta  # unchanged
    prepare.run(cfg)
    summary = classify.run(cfg)
    details = json.loads(Path(cfg.classify.details).read_text())
    assert [t["recipe"] for t in details["search"]["candidates"]] == list(full.classify.recipes)
    config = load_model(cfg.classify.checkpoint)[1]["config"]
    assert len(config["class_names"]) == 2 and config["flag"] == "pneumonia_standin"
    assert summary["served"]["test_auc"] >= 0.9, summary["served"]  # a bright square per class: learnable
