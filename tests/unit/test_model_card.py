"""Model cards (medgen.model_card): Mitchell et al.'s sections, figures from the metrics files only where they
describe the exported checkpoint, calibration/OOD rendered when present and "not measured" when absent,
and the same bytes for the same inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medgen import data, manifest, model_card
from medgen.io import write_json
from medgen.params import build_config
from medgen.stages.export import Target
from tests.conftest import ROOT
from tests.standins import CLASS_NAMES, save_classifier, save_generator

COMMITTED = json.loads((ROOT / "metrics" / "classify.json").read_text())
CALIBRATED = {
    "ece": 0.031,
    "ece_ci95": [0.02, 0.05],
    "ece_uncalibrated": 0.12,
    "ece_uncalibrated_ci95": [0.09, 0.15],
    "brier": 0.101,
    "brier_ci95": [0.08, 0.12],
    "nll": 0.33,
    "nll_ci95": [0.28, 0.39],
    "ece_if_calibrated": 0.06,
    "ece_if_calibrated_ci95": [0.03, 0.097],
    "ece_calibration_p": 0.52,
    "calibrator": {"kind": "temperature", "temperature": 1.7},
    "ood": {
        "method": "energy",
        "threshold": -3.5,
        "test_flagged": 0.05,
        "sets": {"pneumoniamnist": {"auroc": 0.97, "flagged": 0.9, "n": 624}},
    },
}


def _dataset(n_test: int = 156) -> data.Dataset:
    def split(n: int) -> data.Split:
        labels = (np.arange(n) % 4 != 0).astype(np.int64)  # a quarter malignant
        return data.Split(np.zeros((n, 28, 28), np.uint8), labels)

    return data.Dataset("breastmnist", 2, tuple(CLASS_NAMES), split(40), split(12), split(n_test))


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # every default path (models/, metrics/) is relative to here
    return build_config({})


def _classifier(cfg, served: dict | None = None, test_auc: float | None = None) -> Target:
    """The classify checkpoint (recording test_auc) and, when `served` is given, classify's metrics files."""
    recorded = {"test_auc": COMMITTED["served"]["test_auc"] if test_auc is None else test_auc}
    save_classifier(cfg.classify.checkpoint, metrics=recorded, profile="full")
    if served is not None:
        write_json(cfg.classify.metrics, {**COMMITTED, "served": served})
        shutil.copy(ROOT / "metrics" / "classify_details.json", cfg.classify.details)
    return Target("classifier", "classifier", "medgen-classifier", Path(cfg.classify.checkpoint), "classifier")


def _meta(kind: str = "classifier") -> dict:
    shape = "input_shape" if kind == "classifier" else "output_shape"
    return {"class_names": CLASS_NAMES, shape: [1, 28, 28], "sha256": "ab" * 32}


def test_classifier_card_renders_calibration_and_ood_when_measured(cfg):
    card = model_card.build(cfg, _classifier(cfg, {**COMMITTED["served"], **CALIBRATED}), _meta(), _dataset())
    results = card["quantitative_analyses"]
    assert results["source"] == cfg.classify.metrics
    served = COMMITTED["served"]
    assert results["test"]["test_auc"] == {"value": served["test_auc"], "ci95": served["test_auc_ci95"]}
    assert results["seed_means"]["auc"] == {"value": COMMITTED["test_auc_mean"], "ci95": COMMITTED["test_auc_ci95"]}
    assert results["calibration"]["ece"] == {"value": 0.031, "ci95": [0.02, 0.05]}
    assert results["calibration"]["ece_uncalibrated"]["value"] == 0.12
    assert results["calibration"]["calibrator"]["temperature"] == 1.7
    assert results["ood"]["sets"]["pneumoniamnist"]["auroc"] == 0.97
    report = json.loads(Path(cfg.classify.details).read_text())["classification_report"]
    assert results["per_class"]["malignant"] == report["malignant"]  # classify_details' report, per class
    text = model_card.render_markdown(model_card.document(cfg, {"classifier": card}))
    assert "- **ece**: 0.031 (95% CI 0.02 to 0.05)" in text
    assert "- **ece_if_calibrated**: 0.06 (95% CI 0.03 to 0.097)" in text and "- **ece_calibration_p**: 0.52" in text
    assert "- **temperature**: 1.7" in text and "- **pneumoniamnist**:" in text
    assert "- **auroc**: 0.97" in text


def test_missing_calibration_and_ood_are_not_measured(cfg):
    # a metrics file from before #18: the served block without any calibration or guard entry
    before = {k: v for k, v in COMMITTED["served"].items() if k.startswith("test_") and "uncalibrated" not in k}
    before |= {"members": COMMITTED["served"]["members"], "views": COMMITTED["served"]["views"]}
    card = model_card.build(cfg, _classifier(cfg, before), _meta(), _dataset())
    results = card["quantitative_analyses"]
    assert results["calibration"] == results["ood"] == model_card.NOT_MEASURED
    assert results["test"]["test_balanced_acc"]["ci95"] == COMMITTED["served"]["test_balanced_acc_ci95"]
    text = model_card.render_markdown(model_card.document(cfg, {"classifier": card}))
    assert "- **calibration**: not measured" in text and "- **ood**: not measured" in text


def test_without_metrics_files_only_the_checkpoint_figures_without_intervals(cfg):
    card = model_card.build(cfg, _classifier(cfg, served=None, test_auc=0.81), _meta(), _dataset())
    results = card["quantitative_analyses"]
    assert results["source"] == "checkpoint"
    assert results["test"] == {"test_auc": {"value": 0.81, "ci95": None}}
    assert results["per_class"] == results["calibration"] == model_card.NOT_MEASURED
    assert "- **test_auc**: 0.81 (no interval)" in model_card.render_markdown(model_card.document(cfg, {"c": card}))


def test_a_metrics_file_of_another_model_is_not_used(cfg):
    """classify.json from a different fit (its served test AUC is not the checkpoint's) must not be reported."""
    card = model_card.build(cfg, _classifier(cfg, COMMITTED["served"], test_auc=0.5), _meta(), _dataset())
    assert card["quantitative_analyses"]["source"] == "checkpoint"
    assert card["quantitative_analyses"]["per_class"] == model_card.NOT_MEASURED


def test_intended_use_training_data_and_caveats(cfg):
    card = model_card.build(cfg, _classifier(cfg, COMMITTED["served"]), _meta(), _dataset(n_test=156))
    assert any("NOT a diagnostic device" in line for line in card["intended_use"]["out_of_scope"])
    assert "1x28x28" in card["intended_use"]["primary_uses"][0]
    train = card["training_data"]["splits"]["train"]
    assert train["n"] == 40 and train["class_counts"] == {"malignant": 10, "normal, benign": 30}
    assert train["class_fraction"]["malignant"] == 0.25
    assert card["evaluation_data"]["n"] == 156
    assert any("one image moves accuracy by 0.64 points" in c for c in card["caveats_and_recommendations"])
    details = card["model_details"]
    assert details["params_sha256"] == manifest.params_sha256(cfg) and details["profile"] == "full"


def test_generator_card_reports_fidelity_from_generate_metrics(cfg):
    report = json.loads((ROOT / "metrics" / "generate.json").read_text())
    save_generator(cfg.generate.checkpoint, metrics={"fd_real_vs_synth": report["fd_real_vs_synth"]})
    write_json(cfg.generate.metrics, report)
    target = Target("generator", "generator", "medgen-generator", Path(cfg.generate.checkpoint), "generator")
    card = model_card.build(cfg, target, _meta("generator"), _dataset())
    results = card["quantitative_analyses"]
    assert results["test"]["c2st_acc"]["value"] == report["c2st_acc"]
    assert results["per_class"]["1"]["fd_real_vs_synth"] == report["per_class"]["1"]["fd_real_vs_synth"]
    assert any("not real patients" in c for c in card["caveats_and_recommendations"])
    assert any("synthetic images as real patient data" in u for u in card["intended_use"]["out_of_scope"])


def test_write_is_deterministic_and_has_every_section(cfg, tmp_path):
    target = _classifier(cfg, {**COMMITTED["served"], **CALIBRATED})
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        write_json(out / "classifier.json", _meta())
        doc = model_card.write(cfg, out, [target], _dataset())
    for name in ("model_card.json", "model_card.md"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert json.loads((first / "model_card.json").read_text()) == doc
    assert set(doc) == {"schema", "models", "commit", "code_dirty", "params_sha256"} and doc["schema"] == 1
    text = (first / "model_card.md").read_text()
    headings = [line[4:] for line in text.splitlines() if line.startswith("### ")]
    assert headings == [title for _, title in model_card.SECTIONS]
    assert "## classifier: `classifier.onnx` (medgen-classifier)" in text


def test_augmented_classifier_card_has_its_arm_and_the_paired_comparison(cfg, monkeypatch):
    summary = json.loads((ROOT / "metrics" / "augment.json").read_text())
    write_json(cfg.augment.metrics, summary)
    recorded = {"config": {"arm": "synthetic", "profile": "full"}, "metrics": {"test_auc": 0.9}}
    monkeypatch.setattr("medgen.training.load_checkpoint", lambda path: recorded)
    target = Target("augmented_classifier", "classifier_augmented", "x", Path(cfg.augment.checkpoint), "classifier")
    results = model_card.build(cfg, target, _meta(), _dataset())["quantitative_analyses"]
    assert results["test"] == {"test_auc": {"value": 0.9, "ci95": None}}  # one model: no interval of its own
    arm = summary["arms"]["synthetic"]
    assert results["arm"]["seed_means"]["auc"] == {"value": arm["test_auc_mean"], "ci95": arm["test_auc_ci95"]}
    assert results["arm"]["vs_baseline"] == summary["vs_baseline"]["synthetic"]
    assert results["calibration"] == results["ood"] == model_card.NOT_MEASURED
