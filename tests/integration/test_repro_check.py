"""`make repro-check` (scripts/repro_check.py): passes on the smoke pipeline (run twice from a clean copy, the
second time keeping mlruns/, plus once killed with SIGKILL during classify's search and resumed), and fails
when one stage is made non-deterministic: the pipeline command is wrapped so that the second run perturbs
an output, as a stage writing a timestamp into its metrics file would."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
SCRIPT = ROOT / "scripts" / "repro_check.py"


def check(tmp_path: Path, npz: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDGEN_"))}
    env["MEDGEN_DATA_SOURCE"] = str(npz)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "work"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PERTURB = (
    "python -c \"import json, time; p = 'metrics/prepare.json'; d = json.load(open(p)); "
    "d['written_at'] = time.time(); json.dump(d, open(p, 'w'))\""
)


def test_the_check_fails_when_a_stage_output_changes_between_runs(tmp_path, breastmnist_npz):
    pipeline = f'dvc repro prepare && if [ "$REPRO_CHECK_RUN" = again ]; then {PERTURB}; fi'
    done = check(
        tmp_path,
        breastmnist_npz,
        "--pipeline",
        pipeline,
        "--kill-at",
        "prepared breastmnist",
        "--kill-count",
        "1",
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED: the again run differs" in done.stderr
    assert "differs: metrics/prepare.json (first at /written_at" in done.stderr
    assert "first run" in done.stdout  # the unperturbed first run itself went through


def test_the_check_fails_when_the_kill_point_is_never_reached(tmp_path, breastmnist_npz):
    done = check(tmp_path, breastmnist_npz, "--pipeline", "dvc repro prepare", "--kill-at", "no such line", timeout=600)
    assert done.returncode == 1 and "line(s) matching --kill-at 'no such line'" in done.stderr
    assert "again: " in done.stdout  # first and again agreed before that


@pytest.mark.slow
def test_the_smoke_pipeline_is_reproducible_run_again_and_killed(tmp_path, breastmnist_npz):
    done = check(tmp_path, breastmnist_npz, "--keep")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK: same inputs, same outputs" in done.stdout
    work = tmp_path / "work"
    resumed_log = (work / "b" / "resumed.log").read_text()
    killed_at = resumed_log.index("repro_check: killed (SIGKILL) at: ")
    assert "#1: 1/" in resumed_log[killed_at:].splitlines()[0]  # inside classify's second candidate (trial 1)
    assert "were left RUNNING by a killed process; marked FAIL" in resumed_log[killed_at:]
    assert "-classify-" in resumed_log[killed_at:] and "1 of 2 trials finished, running 1" in resumed_log[killed_at:]
    for name in ("classify.json", "augment.json", "represent.json", "generate.json"):
        assert (work / "b" / "metrics" / name).read_bytes() == (work / "first" / "metrics" / name).read_bytes()
