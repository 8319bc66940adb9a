"""Fault injection helpers: run `medgen` as a child process, snapshot output files, count ghost runs.

Every fault test asserts three things: the one-line error (`medgen: error: ...`, nothing else on
stderr that looks like a traceback), the exit code, and that the previous complete outputs are
byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEDGEN = [sys.executable, "-m", "medgen.cli"]
# The small settings every fault test runs stages with (a stage's code paths, in seconds).
FAST = [
    "-S",
    "generate.samples_per_class=20",
    "-S",
    "generate.feature_epochs=1",
    "-S",
    "generate.search_epochs=1",
    "-S",
    "generate.epochs=1",
    "-S",
    "represent.methods=[pca,ae_conv]",
]


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        """stderr lines that are not log records or library warnings (what a user reads as the outcome)."""
        skip = ("WARNING", "INFO", "DEBUG", "Warning:", "  warnings.warn", "  optuna_warn(", "  failed_trial_callback")
        return [line for line in self.stderr.splitlines() if line.strip() and not any(s in line for s in skip)]


def env_for(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDGEN_"))}
    env.update(
        {
            "MEDGEN_PROFILE": "smoke",
            "PYTHONPATH": os.pathsep.join(sys.path),
            "MEDGEN_PROGRESS": "log",
            "PYTHONWARNINGS": "ignore",
        }
    )
    source = os.environ.get("MEDGEN_DATA_SOURCE") or str(ROOT.parent / "shared" / "data" / "breastmnist.npz")
    env["MEDGEN_DATA_SOURCE"] = source
    env.update(extra)
    return env


def medgen(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
    """Run `python -m medgen.cli <args>` in workdir and wait for it."""
    started = time.monotonic()
    done = subprocess.run(
        [*MEDGEN, *args], cwd=workdir, env=env or env_for(workdir), capture_output=True, text=True, timeout=timeout
    )
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def medgen_here(capsys: pytest.CaptureFixture, *args: str) -> Result:
    """`medgen <args>` in this process (cwd = the test's workdir): the CLI's exit code and stderr, without
    an interpreter start-up per case (torch and MLflow imports take seconds on a busy machine)."""
    from medgen import cli

    capsys.readouterr()
    started = time.monotonic()
    rc = cli.main(list(args))
    captured = capsys.readouterr()
    return Result(rc, captured.out, captured.err, time.monotonic() - started)


def start(workdir: Path, *args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([*MEDGEN, *args], cwd=workdir, env=env or env_for(workdir), text=True, **popen)


def assert_one_line_error(result: Result, *fragments: str, rc: int = 1) -> str:
    """Exit code `rc`, no traceback, exactly one `medgen: error:` line containing every fragment."""
    assert result.rc == rc, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.error_lines
    assert len(lines) == 1 and lines[0].startswith("medgen: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (hidden staging folders included: they must be gone)."""
    digests = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for path in files:
            digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def outputs_of(workdir: Path, stage: str) -> list[Path]:
    """The stage's declared outputs under workdir (as the runner checks them)."""
    import importlib

    from medgen.params import load_config

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = load_config("params.yaml", profile="smoke")
        return [o.path for o in importlib.import_module(f"medgen.stages.{stage}").outputs(cfg)]
    finally:
        os.chdir(cwd)


def running_runs(db: Path) -> list[tuple[str, str]]:
    """(run name, status) of MLflow runs with status RUNNING in a SQLite tracking store."""
    with sqlite3.connect(db) as con:
        return con.execute("SELECT name, status FROM runs WHERE status = 'RUNNING'").fetchall()


def running_trials(db: Path) -> list[int]:
    """Numbers of Optuna trials in state RUNNING in a SQLite study storage."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT number FROM trials WHERE state = 'RUNNING'")]


def default_sigint() -> None:
    """preexec_fn: SIGINT as a terminal's foreground job has it (a shell starts background jobs, e.g. a CI
    runner's, with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def leftovers(workdir: Path) -> list[str]:
    """Staging folders and output journals: none may remain after a run ends (or is recovered)."""
    staged = [str(p) for p in workdir.rglob(".medgen-staging-*")]
    journals = [str(p) for p in (workdir / ".medgen" / "journal").glob("*.json")]
    return staged + journals


@pytest.fixture
def fault_dir(workdir: Path, breastmnist_npz: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's working directory, with MEDGEN_DATA_SOURCE for the stages run in-process too."""
    monkeypatch.setenv("MEDGEN_DATA_SOURCE", str(breastmnist_npz))
    return workdir


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
