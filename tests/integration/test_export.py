"""`export` end to end on stand-in checkpoints and the real BreastMNIST: ONNX files, metadata, parity,
MLflow registry (champion only forward, `candidate` otherwise, `medgen promote`), and a failing parity
check that fails the stage."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from medgen import cli, onnx_export, registry, tracking
from medgen.errors import MedgenError
from medgen.models.reference import ReferenceClassifier
from medgen.params import load_config
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
    assert (
        json.loads(Path(cfg.export.metrics).read_text())["generator"]["max_abs_diff"]
        == metrics["generator"]["max_abs_diff"]
    )
    out = Path(cfg.export.out_dir)
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["class_names"] == ["malignant", "normal, benign"] and meta["input_size"] == 28
    assert meta["normalisation"]["range"] == [-1.0, 1.0] and meta["sha256"] == onnx_export.file_sha256(
        out / "classifier.onnx"
    )
    assert meta["inputs"][0]["shape"] == ["batch", 1, 28, 28]
    assert json.loads((out / "generator.json").read_text())["latent_dim"] == 16

    tracking.configure(cfg.tracking)
    client = mlflow.MlflowClient()
    # Registered every time; a smoke export never becomes champion: alias `candidate`, reason on the version.
    for name in ("medgen-classifier", "medgen-generator", "medgen-classifier-augmented"):
        assert registry.current(client, name, "champion") is None
        version = client.get_model_version_by_alias(name, "candidate")
        assert str(version.version) == "1" and version.tags["medgen.status"] == "candidate"
        assert "profile" in version.tags["medgen.reason"] and version.tags["medgen.profile"] == "smoke"
    cards = {n: (Path(cfg.export.out_dir) / n).read_bytes() for n in ("model_card.json", "model_card.md")}
    export.run(cfg)
    assert str(client.get_model_version_by_alias("medgen-classifier", "candidate").version) == "2"
    assert cards == {n: (Path(cfg.export.out_dir) / n).read_bytes() for n in cards}  # no run id, time or version
    # Same checkpoints, same export files: no registry version or alias in them (those depend on the
    # registry's history); the manifest names the model by the file's sha256, which the version carries.
    first = json.loads((out / "manifest.json").read_text())
    assert "registered" not in json.loads((out / "classifier.json").read_text())
    entry = first["registered"]["medgen-classifier"]
    assert entry == {"file": "classifier.onnx", "sha256": meta["sha256"]}
    latest = client.get_model_version_by_alias("medgen-classifier", "candidate")
    assert latest.tags["medgen.sha256"] == meta["sha256"]

    # Model cards: written before the manifest (so it lists them), the same bytes for the same inputs, and each
    # registered version's run holds its own model's card, whose sha256 the version carries.
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["models"]) == {"classifier", "augmented_classifier", "generator"} and card["schema"] == 1
    assert {"model_card.json", "model_card.md"} <= set(first["files"])
    assert first["files"]["model_card.md"]["sha256"] == hashlib.sha256((out / "model_card.md").read_bytes()).hexdigest()
    assert card["models"]["classifier"]["evaluation_data"]["n"] == 156
    assert "### Caveats and recommendations" in (out / "model_card.md").read_text()
    for name, key in (("medgen-classifier", "classifier"), ("medgen-generator", "generator")):
        version = client.get_model_version_by_alias(name, "candidate")
        folder = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=f"model_card/{key}"))
        own = (folder / "model_card.json").read_text()
        assert version.tags["medgen.model_card"] == hashlib.sha256(own.encode()).hexdigest()
        assert json.loads(own)["models"] == {key: card["models"][key]}
        assert f"## {key}: `" in (folder / "model_card.md").read_text()

    # The service loads a registry alias, still without torch or pickle.
    env = {
        **__import__("os").environ,
        "MEDGEN_MODEL_SOURCE": "mlflow",
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg.tracking),
        "MEDGEN_MODEL_ALIAS": "candidate",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import numpy as np\n" + NO_TORCH],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mlflow:models:/medgen-classifier@candidate" in done.stdout


def _aliases(client, name: str) -> dict[str, str]:
    return {
        alias: str(client.get_model_version_by_alias(name, alias).version)
        for alias in ("champion", "candidate")
        if registry.current(client, name, alias)
    }


def _export(cfg, profile: str, val_auc: float, val_fd: float) -> None:
    scores = {"val_auc": val_auc, "test_auc": 1.0}  # a perfect test score must not matter
    save_classifier(cfg.export.classifier_checkpoint, seed=1, profile=profile, metrics=scores)
    save_generator(cfg.export.generator_checkpoint, seed=2, profile=profile, metrics={"val_fd": val_fd})
    export.run(cfg)


def test_champion_only_moves_forward_and_promote_moves_it_by_hand(smoke_cfg, workdir, breastmnist_npz, capsys):
    smoke = smoke_cfg()
    full = load_config(workdir / "params.yaml", overrides=[f"data.source={breastmnist_npz}"])
    prepare.run(full)
    tracking.configure(full.tracking)
    client = mlflow.MlflowClient()
    _export(full, "full", val_auc=0.90, val_fd=1.0)  # v1: the first default-profile model
    assert _aliases(client, "medgen-classifier") == {"champion": "1"} == _aliases(client, "medgen-generator")
    _export(smoke, "smoke", val_auc=0.99, val_fd=0.1)  # v2: better numbers, but a smoke run
    assert _aliases(client, "medgen-classifier") == {"champion": "1", "candidate": "2"}
    _export(full, "full", val_auc=0.85, val_fd=2.0)  # v3: default profile, worse on validation
    assert _aliases(client, "medgen-classifier") == {"champion": "1", "candidate": "3"}
    assert "not at least as good" in client.get_model_version("medgen-generator", "3").tags["medgen.reason"]
    _export(full, "full", val_auc=0.90, val_fd=0.5)  # v4: as good (AUC tie), better FD
    assert _aliases(client, "medgen-classifier")["champion"] == "4" == _aliases(client, "medgen-generator")["champion"]

    params = ["--params", str(workdir / "params.yaml")]
    assert cli.main(["promote", "2", "--model", "medgen-generator", *params]) == 0
    assert "medgen-generator: champion v4 -> v2" in capsys.readouterr().out
    assert _aliases(client, "medgen-generator")["champion"] == "2"
    assert _aliases(client, "medgen-classifier")["champion"] == "4"
    assert cli.main(["promote", "9", *params]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("medgen: error: medgen-classifier has no version 9 (registered: 1, 2, 3, 4")


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
    path = onnx_export.export_onnx(
        exported, (torch.zeros(2, 1, 28, 28),), tmp_path / "c.onnx", ("images",), ("logits",), 17, {}
    )
    batches = onnx_export.classifier_batches(
        np.random.default_rng(0).uniform(-1, 1, (10, 1, 28, 28)).astype(np.float32), (1, 7)
    )
    session = onnx_export.session(path)
    assert onnx_export.max_abs_diff(session, exported, batches)["max"] < 1e-5
    assert onnx_export.max_abs_diff(session, other, batches)["max"] > 1e-3


def test_missing_checkpoint_is_one_clear_error(smoke_cfg, workdir):
    cfg = smoke_cfg()
    with pytest.raises(MedgenError, match="classifier checkpoint not found"):
        export.targets(cfg)
