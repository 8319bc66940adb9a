"""Faults during real stages (smoke profile, real BreastMNIST, `medgen` child processes).

One complete run of prepare, then represent, classify and generate *at the same time* on one store
(different stages sharing a store must not crash), is the "previous complete set" every test below
starts from, in its own copy. Then: kill -9 mid-search and re-run (nothing previous changed, zero runs
or trials left RUNNING, the re-run's metrics equal the uninterrupted run's), Ctrl-C and SIGTERM
(one line, runs KILLED and trials FAIL at once), a read-only metrics folder (refused before training,
models/classify/best.pt byte-identical), a full disk after training (previous set kept).
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import (FAST, MEDGEN, assert_one_line_error, default_sigint, env_for, leftovers, medgen, outputs_of,
                       running_runs, running_trials, snapshot)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SEARCHED = ("represent", "classify", "generate")


def _fresh_store(workdir: Path, template: Path) -> None:
    """A new MLflow store (pre-migrated copy) and no Optuna studies: the next run searches from scratch."""
    shutil.rmtree(workdir / "mlruns")
    (workdir / "mlruns").mkdir()
    shutil.copy(template, workdir / "mlruns" / "mlflow.db")


@pytest.fixture(scope="module")
def complete(tmp_path_factory, mlflow_template, breastmnist_npz) -> Path:
    """prepare, then represent | classify | generate concurrently on one store: all must succeed."""
    root = tmp_path_factory.mktemp("complete")
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", root / "params.yaml")
    (root / "mlruns").mkdir()
    shutil.copy(mlflow_template, root / "mlruns" / "mlflow.db")
    env = env_for(root, MEDGEN_DATA_SOURCE=str(breastmnist_npz))
    first = medgen(root, "stage", "prepare", *FAST, env=env)
    assert first.rc == 0, first.stderr[-3000:]
    children = {s: subprocess.Popen([*MEDGEN, "stage", s, *FAST], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True) for s in SEARCHED}
    for stage, child in children.items():
        _, err = child.communicate(timeout=1200)
        assert child.returncode == 0, f"{stage} failed next to the other stages:\n{err[-3000:]}"
    return root


@pytest.fixture
def copy_of(complete, tmp_path, mlflow_template):
    def make(fresh_store: bool = True) -> Path:
        workdir = tmp_path / "checkout"
        shutil.copytree(complete, workdir)
        if fresh_store:
            _fresh_store(workdir, mlflow_template)
        return workdir
    return make


def test_three_stages_ran_side_by_side_on_one_store(complete):
    db = complete / "mlruns/mlflow.db"
    with sqlite3.connect(db) as con:
        stage_runs = dict(con.execute("SELECT name, status FROM runs WHERE name IN ('prepare', 'represent', "
                                      "'classify', 'generate')").fetchall())
    assert stage_runs == {s: "FINISHED" for s in ("prepare", *SEARCHED)}
    assert running_runs(db) == [] and running_trials(complete / "mlruns/optuna.db") == []
    assert leftovers(complete) == []


def _wait_for_running_trial(child: subprocess.Popen, store: Path, timeout: float = 600) -> None:
    """Until an Optuna trial and its MLflow run (beside the stage run) are RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        assert child.poll() is None, f"stage ended before a trial ran: {child.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no trial started"
        try:
            if running_trials(store / "optuna.db") and len(running_runs(store / "mlflow.db")) >= 2:
                return
        except sqlite3.Error:  # schema being created right now
            pass
        time.sleep(0.05)


def _metrics(workdir: Path, stage: str) -> dict:
    """The stage's metrics file without wall-clock fields."""
    data = json.loads((workdir / "metrics" / f"{stage}.json").read_text())
    data.pop("seconds", None)
    return data


@pytest.mark.parametrize("stage", SEARCHED)
def test_kill_9_mid_search_then_rerun(complete, copy_of, stage):
    workdir = copy_of()
    declared = outputs_of(workdir, stage)
    before = snapshot(*declared)
    child = subprocess.Popen([*MEDGEN, "stage", stage, *FAST], cwd=workdir, env=env_for(workdir),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_running_trial(child, workdir / "mlruns")
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert snapshot(*declared) == before  # the previous complete set, byte for byte
    assert leftovers(workdir)  # killed inside its transaction: staging folders and journal remain
    ghosts = running_runs(workdir / "mlruns/mlflow.db")
    assert (stage, "RUNNING") in ghosts and len(ghosts) >= 2  # the stage run and its trial run
    assert running_trials(workdir / "mlruns/optuna.db")

    again = medgen(workdir, "stage", stage, *FAST)
    assert again.rc == 0, again.stderr[-3000:]
    assert f"marked {len(ghosts)} MLflow run(s) left RUNNING by a killed process as KILLED" in again.stderr
    assert "were left RUNNING by a killed process; marked FAIL" in again.stderr
    assert f"stage {stage}: discarded the staged outputs of a run that did not finish" in again.stderr
    assert running_runs(workdir / "mlruns/mlflow.db") == []
    assert running_trials(workdir / "mlruns/optuna.db") == []
    assert leftovers(workdir) == []
    assert _metrics(workdir, stage) == _metrics(complete, stage)  # same inputs, same outputs: as if never killed
    with sqlite3.connect(workdir / "mlruns/mlflow.db") as con:
        killed = con.execute("SELECT count(*) FROM runs WHERE status = 'KILLED'").fetchone()[0]
    assert killed == len(ghosts)


@pytest.mark.parametrize(("sig", "line", "rc"), [(signal.SIGINT, "medgen: interrupted", 130),
                                                 (signal.SIGTERM, "medgen: terminated", 143)])
def test_interrupt_mid_search_is_one_line_and_leaves_no_ghosts(copy_of, sig, line, rc):
    workdir = copy_of()
    declared = outputs_of(workdir, "classify")
    before = snapshot(*declared)
    child = subprocess.Popen([*MEDGEN, "stage", "classify", *FAST], cwd=workdir, env=env_for(workdir),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    _wait_for_running_trial(child, workdir / "mlruns")
    child.send_signal(sig)
    _, err = child.communicate(timeout=300)
    assert child.returncode == rc, err[-3000:]
    assert err.rstrip("\n").splitlines()[-1] == line
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert snapshot(*declared) == before and leftovers(workdir) == []
    assert running_runs(workdir / "mlruns/mlflow.db") == []  # KILLED by the process itself, not by a later run
    assert running_trials(workdir / "mlruns/optuna.db") == []
    with sqlite3.connect(workdir / "mlruns/mlflow.db") as con:
        statuses = dict(con.execute("SELECT name, status FROM runs WHERE name = 'classify'").fetchall())
    assert statuses == {"classify": "KILLED"}


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs a child with `folder` mounted read-only (a private mount namespace), or,
    where that is not allowed, None after making the folder immutable (chattr +i; undone by the caller)."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}'"],
                           capture_output=True)
    if probe.returncode == 0:
        return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return None
    pytest.skip("neither a read-only bind mount (unshare -m) nor chattr +i is available here")


def test_read_only_metrics_folder_is_refused_before_training(copy_of):
    workdir = copy_of(fresh_store=False)
    declared = outputs_of(workdir, "classify")
    before = snapshot(*declared)
    best = (workdir / "models/classify/best.pt").read_bytes()
    runs_before = _runs_named(workdir, "classify")
    prefix = _read_only(workdir / "metrics")
    try:
        started = time.monotonic()
        done = subprocess.run([*(prefix or []), *MEDGEN, "stage", "classify", *FAST], cwd=workdir, env=env_for(workdir),
                              capture_output=True, text=True, timeout=600)
        seconds = time.monotonic() - started
    finally:
        if prefix is None:
            subprocess.run(["chattr", "-i", str(workdir / "metrics")])
    from .conftest import Result

    reason = "Read-only file system" if prefix else "Operation not permitted"
    assert_one_line_error(Result(done.returncode, done.stdout, done.stderr, seconds),
                          f"cannot write {workdir}/metrics/classify.json: {workdir}/metrics is not writable ({reason})",
                          "stage classify stopped, its previous outputs are unchanged")
    assert (workdir / "models/classify/best.pt").read_bytes() == best
    assert snapshot(*declared) == before and leftovers(workdir) == []
    assert _runs_named(workdir, "classify") == runs_before  # refused before any run or trial started


def _runs_named(workdir: Path, name: str) -> int:
    with sqlite3.connect(workdir / "mlruns/mlflow.db") as con:
        return con.execute("SELECT count(*) FROM runs WHERE name = ?", (name,)).fetchone()[0]


def test_full_disk_after_training_keeps_the_previous_set(copy_of, monkeypatch, capsys):
    import errno

    from medgen import outputs

    from .conftest import medgen_here

    workdir = copy_of(fresh_store=False)
    declared = outputs_of(workdir, "classify")
    before = snapshot(*declared)
    monkeypatch.chdir(workdir)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MEDGEN_OPTUNA_STORAGE", "MEDGEN_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)  # mlflow.set_tracking_uri exports the URI of earlier tests
    monkeypatch.setenv("MEDGEN_DATA_SOURCE", env_for(workdir)["MEDGEN_DATA_SOURCE"])
    stage_file = outputs.Transaction.stage_file

    def disk_full_at_metrics(self, path):  # the model and its plots are staged by then; the metrics hit ENOSPC
        if Path(path).name == "classify.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return stage_file(self, path)

    monkeypatch.setattr(outputs.Transaction, "stage_file", disk_full_at_metrics)
    result = medgen_here(capsys, "stage", "classify", "--profile", "smoke", *FAST)
    assert_one_line_error(result, "metrics/classify.json (No space left on device)", "stage classify stopped")
    assert snapshot(*declared) == before and leftovers(workdir) == []
    with sqlite3.connect(workdir / "mlruns/mlflow.db") as con:
        last = con.execute("SELECT status FROM runs WHERE name = 'classify' ORDER BY start_time DESC").fetchone()[0]
