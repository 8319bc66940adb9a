"""The Prefect front door on the real BreastMNIST (smoke profile): same files as `dvc repro`, MLflow
nesting under the flow's parent run, fail-fast on bad input, retries on transient failures, resumption."""

import re
from pathlib import Path

import mlflow
import pytest
import yaml

from flows import pipeline
from medgen import stages, tracking
from medgen.params import load_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _runs(cfg, experiment_stage):
    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name(tracking.experiment_name(cfg.data.flag, experiment_stage))
    return [] if experiment is None else mlflow.search_runs([experiment.experiment_id], output_format="list")


def dvc_declared_paths(cfg) -> dict[str, list[str]]:
    """Stage -> every out/metrics/plots path dvc.yaml declares, with ${section.key} resolved from cfg."""
    tree = cfg.to_dict()

    def resolve(text: str) -> str:
        return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(tree[m[1]][m[2]]), text)

    declared = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        entries = [e for kind in ("outs", "metrics", "plots") for e in stage.get(kind, [])]
        declared[name] = [resolve(e if isinstance(e, str) else next(iter(e))) for e in entries]
    return declared


def run_flow(workdir, npz, *overrides, **kwargs):
    return pipeline.medgen_pipeline(
        profile="smoke",
        overrides=[f"data.source={npz}", *overrides],
        params=str(workdir / "params.yaml"),
        return_state=True,
        **kwargs,
    )


@pytest.mark.slow
def test_flow_runs_every_stage_writes_dvc_outputs_and_nests_runs(prefect_harness, workdir, breastmnist_npz):
    state = run_flow(workdir, breastmnist_npz)
    assert state.is_completed(), state.message
    result = state.result()
    assert list(result["stages"]) == list(stages.STAGES)

    cfg = load_config("params.yaml", profile="smoke")
    for stage, path in pipeline.metrics_paths(cfg).items():
        assert Path(path).is_file(), f"{stage}: {path} missing"
    declared = dvc_declared_paths(cfg)
    assert set(declared) == set(stages.STAGES)  # dvc.yaml and the flow know the same stages
    missing = [p for paths in declared.values() for p in paths if not Path(p).exists()]
    assert not missing, f"dvc.yaml outputs the Prefect run did not write: {missing}"

    (parent,) = _runs(cfg, "pipeline")
    assert parent.info.run_id == result["parent_run_id"] and parent.info.status == "FINISHED"
    assert parent.data.tags["medgen.front_door"] == "prefect"
    for stage in stages.STAGES:
        # A stage's experiment also holds its Optuna trials (children of the stage run): pick by parent.
        runs = _runs(cfg, stage)
        (run,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert run.info.status == "FINISHED" and run.info.run_name == stage
        assert run.data.tags["medgen.profile"] == "smoke"


def test_bad_input_fails_fast_then_a_good_rerun_resumes(prefect_harness, workdir, breastmnist_npz):
    state = run_flow(workdir, breastmnist_npz, f"data.source={workdir / 'absent.npz'}", "data.download=false")
    assert state.is_failed()
    cfg = load_config("params.yaml", profile="smoke")
    (failed,) = _runs(cfg, "prepare")  # one run only: a DataError is not retried
    assert failed.info.status == "FAILED"
    (parent,) = _runs(cfg, "pipeline")
    assert parent.info.status == "FAILED"
    assert failed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert not Path(cfg.prepare.metrics).exists()

    again = run_flow(workdir, breastmnist_npz, only=["prepare"])  # the whole pipeline runs in the test above
    assert again.is_completed(), again.message
    assert Path(cfg.prepare.metrics).is_file()
    statuses = sorted(r.info.status for r in _runs(cfg, "prepare"))
    assert statuses == ["FAILED", "FINISHED"]


def test_transient_failure_is_retried(prefect_harness, workdir, monkeypatch):
    calls = []

    def flaky(cfg):
        calls.append(cfg.tracking.parent_run_id)
        if len(calls) == 1:
            raise OSError("database is locked")  # transient: the retry succeeds
        return {"ok": 1}

    monkeypatch.setattr(stages, "STAGES", ("flaky",))
    monkeypatch.setattr(stages, "get", lambda name: flaky)
    monkeypatch.setattr(pipeline, "RETRY_DELAY_S", 0)
    state = pipeline.medgen_pipeline(params=str(workdir / "params.yaml"), return_state=True)
    assert state.is_completed(), state.message
    assert len(calls) == 2 and calls[0] == calls[1] == state.result()["parent_run_id"]


def test_unknown_stage_fails_before_any_run(prefect_harness, workdir):
    state = pipeline.medgen_pipeline(only=["nope"], params=str(workdir / "params.yaml"), return_state=True)
    assert state.is_failed()
    assert _runs(load_config("params.yaml"), "pipeline") == []
