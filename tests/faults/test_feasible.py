"""Values the parser accepts but the stage cannot run with: one line naming the key, before any training.

"Before any training" is checked by what exists afterwards: no MLflow run of the stage, no study, no
output; a value that slipped through would start a run and an Optuna study first.
"""

from __future__ import annotations

import mlflow
import pytest

from medgen import stages, tracking
from medgen.params import load_config

from .conftest import assert_one_line_error, medgen_here

CASES = [
    ("represent", "represent.cv_folds=200", "represent.cv_folds: 200 stratified folds need 200 images of every class"),
    ("represent", "represent.grid_n=100000", "represent.grid_n: a 100000x100000 latent grid needs ~"),
    (
        "represent",
        "represent.width=100000",
        "represent.width/latent_dim_max: ae_conv at latent_dim_max=16, width=100000 needs ~",
    ),
    ("classify", "classify.device=cuda", "classify.device: device='cuda' but no CUDA device is available"),
    (
        "generate",
        "generate.samples_per_class=2000000000",
        "generate.samples_per_class: 2000000000 samples x 2 classes needs ~",
    ),
    ("generate", "generate.g_channels=100000", "generate.g_channels/d_channels: G (latent_dim=100, g_channels=100000)"),
    ("generate", "generate.latent_dim=100000000", "generate.g_channels/d_channels: G (latent_dim=100000000"),
    ("generate", "generate.device=cuda:3", "generate.device: device='cuda:3' but no CUDA device is available"),
]


@pytest.fixture(scope="module")
def _cuda_absent():
    import torch

    if torch.cuda.is_available():
        pytest.skip("the device cases assume a machine without CUDA")


@pytest.fixture
def prepared(fault_dir):
    stages.get("prepare")(load_config("params.yaml", profile="smoke"))
    return fault_dir


@pytest.mark.usefixtures("_cuda_absent")
@pytest.mark.parametrize(("stage", "override", "fragment"), CASES, ids=[c[1].split("=")[0] for c in CASES])
def test_infeasible_value_fails_before_any_work(prepared, capsys, stage, override, fragment):
    result = medgen_here(capsys, "stage", stage, "--profile", "smoke", "-S", override)
    assert_one_line_error(result, fragment, f"stage {stage} stopped, its previous outputs are unchanged")
    cfg = load_config("params.yaml", profile="smoke")
    tracking.configure(cfg.tracking)
    assert mlflow.get_experiment_by_name(tracking.experiment_name("breastmnist", stage)) is None  # no run started
    assert not (prepared / "mlruns/optuna.db").exists()  # no study opened
    assert not (prepared / "models").exists() and not (prepared / "metrics" / f"{stage}.json").exists()
