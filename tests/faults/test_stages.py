"""Faults during real stages (smoke profile, real BreastMNIST, `medgen` child processes).

Every test starts from a prepared checkout whose stage outputs hold a "previous complete set" (a real
classifier checkpoint at models/classify/best.pt, marker bytes elsewhere: the checks are byte-level).
Then: represent, classify and generate killed with kill -9 mid-search, side by side on one store, and
re-run side by side (different stages sharing a store must not crash); Ctrl-C and SIGTERM (one line,
runs KILLED and trials FAIL at once, generate's diffusion worker included); a read-only metrics folder
(refused before training, best.pt byte-identical); a full disk after training (previous set kept, stage
run FAILED).
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import (
    FAST,
    MEDGEN,
    Result,
    assert_one_line_error,
    default_sigint,
    env_for,
    leftovers,
    medgen,
    medgen_here,
    outputs_of,
    running_runs,
    running_trials,
    snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SEARCHED = ("represent", "classify", "generate")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, mlflow_template, breastmnist_npz) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", root / "params.yaml")
    (root / "mlruns").mkdir()
    shutil.copy(mlflow_template, root / "mlruns" / "mlflow.db")
    done = medgen(root, "stage", "prepare", *FAST, env=env_for(root, MEDGEN_DATA_SOURCE=str(breastmnist_npz)))
    assert done.rc == 0, done.stderr[-3000:]
    return root


@pytest.fixture
def checkout(prepared, tmp_path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "checkout"))


def previous_set(workdir: Path, *stages: str) -> dict[str, str]:
    """Fill every declared output of `stages` with a previous run's files; returns their digests."""
    from medgen.models.classifier import ResNetClassifier
    from medgen.training import save_model

    for stage in stages:
        for path in outputs_of(workdir, stage):
            target = path / "previous.png" if not path.suffix else path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f"previous {stage} run: {target.name}\n".encode())
    if "classify" in stages:
        save_model(
            workdir / "models/classify/best.pt",
            ResNetClassifier(2, stem="pool"),
            {"n_classes": 2, "stem": "pool"},
            config={"hparams": {"lr": 1e-3}},
            metrics={},
        )
    return snapshot(*[p for s in stages for p in outputs_of(workdir, s)])


def _running(store: Path) -> tuple[set[str], set[str]]:
    """Stages with a RUNNING Optuna trial, and MLflow trial runs RUNNING (named <flag>-<stage>-...)."""
    try:
        with sqlite3.connect(store / "optuna.db") as con:
            studies = {
                r[0]
                for r in con.execute(
                    "SELECT s.study_name FROM trials t JOIN studies s "
                    "ON t.study_id = s.study_id WHERE t.state = 'RUNNING'"
                )
            }
        runs = {name for name, _ in running_runs(store / "mlflow.db")}
    except sqlite3.Error:  # schema being created right now
        return set(), set()
    return {s for s in SEARCHED if any(f"-{s}-" in n for n in studies)}, runs


def _trial_running(stage: str, store: Path) -> bool:
    trials, runs = _running(store)
    return stage in trials and any(n.startswith(f"breastmnist-{stage}-") for n in runs)


def _kill_each_mid_search(children: dict[str, subprocess.Popen], store: Path, timeout: float = 900) -> None:
    """kill -9 each stage as soon as one of its Optuna trials and that trial's MLflow run are RUNNING."""
    deadline, alive = time.monotonic() + timeout, dict(children)
    while alive:
        assert time.monotonic() < deadline, f"no trial started in {sorted(alive)}"
        for stage, child in list(alive.items()):
            assert child.poll() is None, f"{stage} ended before a trial ran: {child.communicate()[1][-3000:]}"
            if _trial_running(stage, store):
                child.send_signal(signal.SIGKILL)
                child.wait()
                del alive[stage]
        time.sleep(0.05)


def _start(workdir: Path, stage: str, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [*MEDGEN, "stage", stage, *FAST, *extra],
        cwd=workdir,
        env=env_for(workdir),
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **popen,
    )


def test_kill_9_mid_search_then_rerun_side_by_side(checkout):
    before = previous_set(checkout, *SEARCHED)
    _kill_each_mid_search({s: _start(checkout, s) for s in SEARCHED}, checkout / "mlruns")

    assert snapshot(*[p for s in SEARCHED for p in outputs_of(checkout, s)]) == before  # byte for byte
    assert leftovers(checkout)  # killed inside their transactions: staging folders and journals remain
    ghosts = running_runs(checkout / "mlruns/mlflow.db")
    # A stage killed before another one got past its start is already swept by that start (its stage run
    # KILLED, its trial FAIL): every killed stage run is either still a ghost or closed, never FINISHED.
    with sqlite3.connect(checkout / "mlruns/mlflow.db") as con:
        stage_runs = dict(
            con.execute("SELECT name, status FROM runs WHERE name IN ('represent', 'classify', 'generate')").fetchall()
        )
    assert set(stage_runs) == set(SEARCHED) and set(stage_runs.values()) <= {"RUNNING", "KILLED"}
    still = [n for n, status in stage_runs.items() if status == "RUNNING"]
    assert still and len(ghosts) >= 2 * len(still)  # stage runs and their trial runs
    ghost_trials = running_trials(checkout / "mlruns/optuna.db")
    # Not one per still-running stage: a trial seen RUNNING can finish before the SIGKILL lands (generate's
    # diffusion trials only sample, milliseconds in smoke), leaving its stage run RUNNING with no trial open.
    assert ghost_trials

    reruns = {s: _start(checkout, s) for s in SEARCHED}  # side by side on the store the ghosts are in
    logs = {}
    for stage, child in reruns.items():
        _, logs[stage] = child.communicate(timeout=1200)
        assert child.returncode == 0, f"{stage} re-run failed:\n{logs[stage][-3000:]}"
    log = "\n".join(logs.values())
    closed = sum(int(n) for n in re.findall(r"marked (\d+) MLflow run\(s\) left RUNNING by a killed process", log))
    failed = sum(len(t.split(",")) for t in re.findall(r"trial\(s\) \[([\d, ]+)\] were left RUNNING by a killed", log))
    assert closed == len(ghosts) and failed == len(ghost_trials)
    for stage in SEARCHED:
        assert f"stage {stage}: discarded the staged outputs of a run that did not finish" in log
    assert running_runs(checkout / "mlruns/mlflow.db") == []  # zero ghosts: runs ...
    assert running_trials(checkout / "mlruns/optuna.db") == []  # ... and trials
    assert leftovers(checkout) == []
    with sqlite3.connect(checkout / "mlruns/mlflow.db") as con:
        statuses = dict(
            con.execute(
                "SELECT status, count(*) FROM runs WHERE name IN ('represent', 'classify', 'generate') GROUP BY status"
            ).fetchall()
        )
    assert statuses == {"KILLED": 3, "FINISHED": 3}
    after = snapshot(*[p for s in SEARCHED for p in outputs_of(checkout, s)])
    for stage in SEARCHED:  # the re-runs replaced each previous set as a whole
        metrics = checkout / "metrics" / f"{stage}.json"
        assert after[str(metrics)] != before[str(metrics)] and metrics.read_text().startswith("{")


@pytest.mark.parametrize(
    ("sig", "line", "rc"), [(signal.SIGINT, "medgen: interrupted", 130), (signal.SIGTERM, "medgen: terminated", 143)]
)
def test_interrupt_mid_search_is_one_line_and_leaves_no_ghosts(checkout, sig, line, rc):
    before = previous_set(checkout, "classify")
    child = _start(checkout, "classify", preexec_fn=default_sigint)
    deadline = time.monotonic() + 600
    while not _trial_running("classify", checkout / "mlruns"):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-3000:]
        time.sleep(0.05)
    child.send_signal(sig)
    _, err = child.communicate(timeout=300)
    assert child.returncode == rc, err[-3000:]
    assert err.rstrip("\n").splitlines()[-1] == line
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert snapshot(*outputs_of(checkout, "classify")) == before and leftovers(checkout) == []
    assert running_runs(checkout / "mlruns/mlflow.db") == []  # KILLED by the process itself, not by a later run
    assert running_trials(checkout / "mlruns/optuna.db") == []
    with sqlite3.connect(checkout / "mlruns/mlflow.db") as con:
        statuses = dict(con.execute("SELECT name, status FROM runs WHERE name = 'classify'").fetchall())
    assert statuses == {"classify": "KILLED"}


def _diffusion_trial_owner(store: Path) -> str | None:
    """The owner tag (host:pid:start) of a RUNNING diffusion-study trial run whose Optuna trial is RUNNING too."""
    try:
        with sqlite3.connect(store / "optuna.db") as con:
            running = con.execute(
                "SELECT count(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                "WHERE t.state = 'RUNNING' AND s.study_name LIKE '%-generate-ddpm-%'"
            ).fetchone()[0]
        with sqlite3.connect(store / "mlflow.db") as con:
            owners = con.execute(
                "SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE r.status = 'RUNNING' "
                "AND r.name LIKE 'breastmnist-generate-ddpm-%' AND t.key = 'medgen.owner'"
            ).fetchall()
    except sqlite3.Error:  # schema being created right now
        return None
    return owners[0][0] if running and owners else None


def test_interrupt_while_the_diffusion_worker_runs_a_trial_leaves_no_ghosts(checkout):
    """generate.jobs = 2: Ctrl-C while the worker process (medgen.workers) runs a diffusion-study trial. The
    stage ends the worker and closes what it left RUNNING at once, not at the next run: one line, exit 130,
    the previous outputs unchanged, no RUNNING run or trial, the worker gone."""
    import psutil

    before = previous_set(checkout, "generate")
    child = _start(checkout, "generate", "-S", "generate.jobs=2", preexec_fn=default_sigint)
    deadline, owner = time.monotonic() + 600, None
    while owner is None:
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1][-3000:]
        owner = _diffusion_trial_owner(checkout / "mlruns")
        time.sleep(0.05)
    worker = int(owner.split(":")[1])
    assert worker != child.pid  # the trial runs in the worker process
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-3000:]
    assert err.rstrip("\n").splitlines()[-1] == "medgen: interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    assert snapshot(*outputs_of(checkout, "generate")) == before and leftovers(checkout) == []
    assert running_runs(checkout / "mlruns/mlflow.db") == []
    assert running_trials(checkout / "mlruns/optuna.db") == []


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs a child with `folder` mounted read-only (a private mount namespace), or,
    where that is not allowed, None after making the folder immutable (chattr +i; undone by the caller)."""
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}'"], capture_output=True
    )
    if probe.returncode == 0:
        return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return None
    pytest.skip("neither a read-only bind mount (unshare -m) nor chattr +i is available here")


def test_read_only_metrics_folder_is_refused_before_training(checkout):
    before = previous_set(checkout, "classify")
    best = (checkout / "models/classify/best.pt").read_bytes()
    prefix = _read_only(checkout / "metrics")
    try:
        started = time.monotonic()
        done = subprocess.run(
            [*(prefix or []), *MEDGEN, "stage", "classify", *FAST],
            cwd=checkout,
            env=env_for(checkout),
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds = time.monotonic() - started
    finally:
        if prefix is None:
            subprocess.run(["chattr", "-i", str(checkout / "metrics")])
    reason = "Read-only file system" if prefix else "Operation not permitted"
    metrics = checkout / "metrics"
    assert_one_line_error(
        Result(done.returncode, done.stdout, done.stderr, seconds),
        f"cannot write {metrics}/classify.json: {metrics} is not writable ({reason})",
        "stage classify stopped, its previous outputs are unchanged",
    )
    assert (checkout / "models/classify/best.pt").read_bytes() == best
    assert snapshot(*outputs_of(checkout, "classify")) == before and leftovers(checkout) == []
    assert _runs_named(checkout, "classify") == 0 and not (checkout / "mlruns/optuna.db").exists()  # before any work


def _runs_named(workdir: Path, name: str) -> int:
    with sqlite3.connect(workdir / "mlruns/mlflow.db") as con:
        return con.execute("SELECT count(*) FROM runs WHERE name = ?", (name,)).fetchone()[0]


def test_full_disk_after_training_keeps_the_previous_set(checkout, monkeypatch, capsys):
    import errno

    from medgen import outputs

    before = previous_set(checkout, "classify")
    monkeypatch.chdir(checkout)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MEDGEN_OPTUNA_STORAGE", "MEDGEN_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)  # mlflow.set_tracking_uri exports the URI of earlier tests
    monkeypatch.setenv("MEDGEN_DATA_SOURCE", env_for(checkout)["MEDGEN_DATA_SOURCE"])
    stage_file = outputs.Transaction.stage_file

    def disk_full_at_metrics(self, path):  # the model and its plots are staged by then; the metrics hit ENOSPC
        if Path(path).name == "classify.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return stage_file(self, path)

    monkeypatch.setattr(outputs.Transaction, "stage_file", disk_full_at_metrics)
    result = medgen_here(capsys, "stage", "classify", "--profile", "smoke", *FAST)
    assert_one_line_error(result, "metrics/classify.json (No space left on device)", "stage classify stopped")
    assert snapshot(*outputs_of(checkout, "classify")) == before and leftovers(checkout) == []
    with sqlite3.connect(checkout / "mlruns/mlflow.db") as con:
        assert con.execute("SELECT status FROM runs WHERE name = 'classify'").fetchall() == [("FAILED",)]
