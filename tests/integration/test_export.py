"""`export` end to end on stand-in checkpoints and the real BreastMNIST: ONNX files, metadata, parity,
MLflow registry with the champion alias, and a failing parity check that fails the stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from medgen import onnx_export, tracking
from medgen.errors import MedgenError
from medgen.models.reference import ReferenceClassifier
from medgen.stages import export, prepare
from tests.conftest import ROOT
from tests.serving.test_runtime import NO_TORCH
from tests.standins import save_classifier, save_generator

pytestmark = pytest.mark.integration


def _cfg(smoke_cfg, workdir: Path, *extra: str):
    cfg = smoke_cfg(*extra)
    save_classifier(cfg.export.classifier_checkpoint, seed=1)
    save_generator(cfg.export.generator_checkpoint, seed=2)
    prepare.run(cfg)
    return cfg


def test_export_end_to_end(smoke_cfg, workdir):
    cfg = _cfg(smoke_cfg, workdir)
    save_classifier(cfg.export.augmented_checkpoint, seed=3)  # the optional augmented classifier
    metrics = export.run(cfg)
    assert set(metrics) == {"classifier", "augmented_classifier", "generator"}
    for key, result in metrics.items():
        assert 0 <= result["max_abs_diff"] <= cfg.export.parity_tolerance, key
        assert set(result["max_abs_diff_by_batch"]) == {"1", "7", "64"}
    assert json.loads(Path(cfg.export.metrics).read_text())["generator"]["max_abs_diff"] == metrics["generator"]["max_abs_diff"]
    out = Path(cfg.export.out_dir)
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["class_names"] == ["malignant", "normal, benign"] and meta["input_size"] == 28
    assert meta["normalisation"]["range"] == [-1.0, 1.0] and meta["sha256"] == onnx_export.file_sha256(out / "classifier.onnx")
    assert meta["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert json.loads((out / "generator.json").read_text())["latent_dim"] == 16

    tracking.configure(cfg.tracking)
    client = mlflow.MlflowClient()
    for name in ("medgen-classifier", "medgen-generator", "medgen-classifier-augmented"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    # A second export makes version 2 the champion.
    export.run(cfg)
    assert str(client.get_model_version_by_alias("medgen-classifier", "champion").version) == "2"

    # The service loads the champion from the registry, still without torch or pickle.
    env = {**__import__("os").environ, "MEDGEN_MODEL_SOURCE": "mlflow", "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg.tracking),
           "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    done = subprocess.run([sys.executable, "-c", "import numpy as np\n" + NO_TORCH], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mlflow:models:/medgen-classifier@champion" in done.stdout


def test_broken_parity_fails_the_stage(smoke_cfg, workdir):
    cfg = _cfg(smoke_cfg, workdir, "export.parity_tolerance=1.0e-12", "export.register=false")
    with pytest.raises(MedgenError, match="differs from PyTorch"):
        export.run(cfg)
    assert not (Path(cfg.export.out_dir) / "classifier.onnx").exists()
    assert not Path(cfg.export.metrics).exists()
    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name(tracking.experiment_name(cfg.data.flag, "export"))
    (run,) = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert run.info.status == "FAILED"


def test_mismatched_model_is_caught(tmp_path):
    """Parity compares what was exported with the reference model: a different model is a large diff."""
    torch.manual_seed(0)
    exported, other = ReferenceClassifier(), ReferenceClassifier()
    path = onnx_export.export_onnx(exported, (torch.zeros(2, 1, 28, 28),), tmp_path / "c.onnx", ("images",), ("logits",), 17, {})
    batches = onnx_export.classifier_batches(np.random.default_rng(0).uniform(-1, 1, (10, 1, 28, 28)).astype(np.float32), (1, 7))
    session = onnx_export.session(path)
    assert onnx_export.max_abs_diff(session, exported, batches)["max"] < 1e-5
    assert onnx_export.max_abs_diff(session, other, batches)["max"] > 1e-3


def test_missing_checkpoint_is_one_clear_error(smoke_cfg, workdir):
    cfg = smoke_cfg()
    with pytest.raises(MedgenError, match="classifier checkpoint not found"):
        export.targets(cfg)
