"""`represent` on the real BreastMNIST (smoke profile): all six methods end to end, resumable studies,
pruning, figures, the encoder checkpoint classify reads, and bad inputs failing before any training."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
import torch

from medgen import search, tracking
from medgen.cli import main
from medgen.errors import ConfigError
from medgen.stages import prepare, represent
from medgen.training import load_model

pytestmark = pytest.mark.integration

ENTRY_KEYS = {"latent_dim", "k", "val_acc", "test_acc", "test_balanced_acc", "test_auc"}
FIGURES = ("comparison", "latent_grid", "latent_scatter", "posterior_hist", "reconstructions")


def _stage_runs(cfg):
    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name(tracking.experiment_name(cfg.data.flag, "represent"))
    assert experiment is not None
    return mlflow.search_runs([experiment.experiment_id], output_format="list")


def _study(cfg, method):
    name = search.study_name(cfg.data.flag, "represent", method, represent.study_spec(cfg, method))
    return optuna.load_study(study_name=name, storage=search.storage_url(cfg.tracking))


def test_all_methods_end_to_end(smoke_cfg, workdir, caplog, monkeypatch):
    monkeypatch.setenv("MEDGEN_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="medgen.progress")
    cfg = smoke_cfg()
    prepare.run(cfg)
    metrics = represent.run(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "medgen.progress"]
    assert any(line.startswith("represent methods: 6/6 ") for line in lines), lines[-5:]
    assert any(line.startswith("fit ") and "/2 epochs recon " in line for line in lines), lines[-5:]
    assert list(metrics) == list(cfg.represent.methods)
    assert json.loads(Path(cfg.represent.metrics).read_text()) == metrics
    for method, entry in metrics.items():
        assert ENTRY_KEYS <= set(entry), method
        assert cfg.represent.latent_dim_min <= entry["latent_dim"] <= cfg.represent.latent_dim_max
        assert cfg.represent.k_min <= entry["k"] <= cfg.represent.k_max
        assert all(0.0 <= entry[key] <= 1.0 for key in ENTRY_KEYS - {"latent_dim", "k"}), entry
        assert ("lr" in entry) == (method not in ("pca", "isomap"))
        for key in ("test_acc", "test_balanced_acc", "test_auc"):  # 95% bootstrap interval around the value
            lo, hi = entry[f"{key}_ci95"]
            assert lo <= entry[key] <= hi and hi - lo > 0.01, (method, key)
        if method != "pca":  # paired comparison with PCA on the same test images, decided by the rule
            for key in ("test_balanced_acc", "test_auc"):
                found = entry["vs_pca"][key]
                assert found["diff"] == pytest.approx(entry[key] - metrics["pca"][key])
                assert found["ci95"][0] <= found["diff"] <= found["ci95"][1]
                assert 0 < found["p_value"] <= found["p_holm"] <= 1
                assert found["significant"] == (found["p_holm"] < 0.05)
    assert "vs_pca" not in metrics["pca"]
    for name in FIGURES:
        path = Path(cfg.represent.plots_dir) / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        from PIL import Image

        with Image.open(path) as image:
            image.verify()

    encoder, checkpoint = load_model(cfg.represent.encoder_checkpoint)
    assert checkpoint["config"]["method"] in ("ae_conv", "vae_conv")
    features = encoder(torch.zeros(3, 1, 28, 28))
    assert features.shape == (3, encoder.out_features) == (3, checkpoint["config"]["out_features"])

    runs = _stage_runs(cfg)
    (stage,) = [r for r in runs if r.info.run_name == "represent"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id]
    assert stage.info.status == "FINISHED"
    assert len(trials) == 2 * cfg.represent.trials_classic + 4 * cfg.represent.trials_neural
    assert {"latent_dim", "k"} <= set(trials[0].data.params)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id, "figures")}
    assert artifacts == {f"figures/{name}.png" for name in FIGURES}


def test_rerun_reaches_the_same_study_and_prunes(smoke_cfg, workdir):
    # Pruner built to prune: 90th percentile after one start-up trial, no warm-up, so only a trial that
    # is the best so far at every epoch survives.
    cfg = smoke_cfg(
        "represent.methods=[pca, ae_dense]",
        "represent.trials_neural=4",
        "represent.epochs=3",
        "represent.prune_percentile=90",
        "represent.prune_startup_trials=1",
        "represent.prune_warmup_epochs=0",
    )
    rc = cfg.represent
    prepare.run(cfg)
    first = represent.run(cfg)
    assert first["ae_dense"]["pruned"] >= 1
    pruned = [t for t in _study(cfg, "ae_dense").trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == first["ae_dense"]["pruned"]
    run = mlflow.MlflowClient().get_run(pruned[0].user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "PRUNED" and run.info.status == "FINISHED"

    second = represent.run(cfg)  # n_trials is a target: the re-run adds no trial and reports the same
    assert second == first
    assert (first["pca"]["trials"], first["ae_dense"]["trials"]) == (rc.trials_classic, rc.trials_neural)
    grown = represent.run(replace(cfg, represent=replace(rc, trials_neural=rc.trials_neural + 1)))
    assert grown["ae_dense"]["trials"] == rc.trials_neural + 1 and grown["pca"] == first["pca"]
    for method in ("pca", "ae_dense"):
        trials = _study(cfg, method).trials
        assert sorted(t.number for t in trials) == list(range(len(trials)))
        assert not [
            t for t in trials if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ]


def test_latent_dim_larger_than_the_input_fails_before_training(smoke_cfg, workdir):
    cfg = smoke_cfg("represent.latent_dim_max=1000")
    prepare.run(cfg)
    with pytest.raises(ConfigError, match="latent_dim_max: 1000 is larger than the input \\(784 values per image\\)"):
        represent.run(cfg)
    assert not Path(cfg.represent.metrics).exists()
    (stage,) = _stage_runs(cfg)
    assert stage.info.status == "FAILED"  # and no trial ran under it
    with pytest.raises(KeyError):
        _study(cfg, "pca")


@pytest.mark.parametrize(
    "override, message",
    [
        ("represent.methods=[pca, tsne]", "medgen: error: represent.methods: unknown method 'tsne'"),
        ("represent.latent_dim_min=200", "medgen: error: represent.latent_dim_min: search space is empty"),
    ],
)
def test_cli_reports_bad_input_in_one_line(workdir, capsys, override, message):
    assert main(["stage", "represent", "-S", override]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message)
