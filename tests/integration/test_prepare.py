"""`prepare` on the real BreastMNIST (smoke profile) and what it leaves in MLflow."""

import json
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from medgen import tracking
from medgen.cli import run_pipeline
from medgen.errors import DataError
from medgen.stages import prepare

pytestmark = pytest.mark.integration


def _runs(cfg, stage):
    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name(tracking.experiment_name(cfg.data.flag, stage))
    assert experiment is not None, f"no MLflow experiment for {stage}"
    return mlflow.search_runs([experiment.experiment_id], output_format="list")


def test_prepare_real_breastmnist(smoke_cfg, workdir):
    cfg = smoke_cfg()
    metrics = prepare.run(cfg)
    assert metrics["n"] == {"train": 546, "val": 78, "test": 156}
    assert metrics["class_counts"]["train"] == {"0": 147, "1": 399}
    assert sum(metrics["class_counts"]["test"].values()) == 156
    on_disk = json.loads(Path(cfg.prepare.metrics).read_text())
    assert on_disk["n"] == metrics["n"] and on_disk["flag"] == "breastmnist"
    assert cfg.data.raw_path.exists() and cfg.data.prepared_path.exists()
    for label in (0, 1):
        with Image.open(Path(cfg.prepare.plots_dir) / f"montage_class_{label}.png") as image:
            image.verify()

    (run,) = _runs(cfg, "prepare")
    assert run.info.status == "FINISHED"
    assert run.data.tags["medgen.profile"] == "smoke"
    assert len(run.data.tags["medgen.data_md5"]) == 32
    assert "mlflow.source.git.commit" in run.data.tags
    assert run.data.metrics["n.train"] == 546
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "montages")}
    assert artifacts == {"montages/montage_class_0.png", "montages/montage_class_1.png"}


def test_second_prepare_uses_raw_file_without_source(smoke_cfg, workdir):
    prepare.run(smoke_cfg())
    again = prepare.run(smoke_cfg("data.source=", "data.download=false"))
    assert again["n"]["train"] == 546


def test_failed_stage_marks_run_failed_and_writes_nothing(smoke_cfg, workdir):
    cfg = smoke_cfg(f"data.source={workdir / 'absent.npz'}", "data.download=false")
    with pytest.raises(DataError, match="is not a file"):
        prepare.run(cfg)
    (run,) = _runs(cfg, "prepare")
    assert run.info.status == "FAILED"
    assert not Path(cfg.prepare.metrics).exists()


def test_pipeline_nests_stage_runs_under_a_parent(smoke_cfg, workdir):
    cfg = smoke_cfg()
    run_pipeline(cfg, only=["prepare"])
    (parent,) = _runs(cfg, "pipeline")
    (child,) = _runs(cfg, "prepare")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == child.info.status == "FINISHED"
