"""The faults of docs/reliability.md, each run once as a user would meet it: command, exit code, the line
printed, seconds from start to exit (wall clock of the `medgen` process, interpreter start-up included).

Runs in a temporary folder (smoke profile, real BreastMNIST from $MEDGEN_DATA_SOURCE); the repository's
own outputs and stores are untouched. The assertions live in tests/faults; this prints the table.
Usage: .venv/bin/python scripts/fault_table.py [--only NAME ...] > /tmp/faults.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDGEN = [sys.executable, "-m", "medgen.cli"]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDGEN_"))}
    source = os.environ.get("MEDGEN_DATA_SOURCE", str(ROOT.parent / "shared/data/breastmnist.npz"))
    out.update(MEDGEN_PROFILE="smoke", PYTHONWARNINGS="ignore", MEDGEN_PROGRESS="log", MEDGEN_DATA_SOURCE=source)
    return out | extra


def run(cwd: Path, args: list[str], prefix: list[str] = (), **extra: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([*prefix, *MEDGEN, *args], cwd=cwd, env=env(**extra), capture_output=True, text=True)
    return done.returncode, last_line(done.stderr), time.monotonic() - started


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("medgen: ")]
    return lines[-1] if lines else (stderr.strip().splitlines() or [""])[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def damage_zlib(src: Path, dst: Path) -> Path:
    with np.load(src) as archive:
        np.savez_compressed(dst, **{k: archive[k] for k in archive.files})
    raw = bytearray(dst.read_bytes())
    info = zipfile.ZipFile(dst).infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start : start + 64] = bytes(64)
    dst.write_bytes(bytes(raw))
    return dst


def truncated_checkpoint(path: Path) -> None:
    from medgen.models.classifier import ResNetClassifier
    from medgen.training import save_model

    save_model(path, ResNetClassifier(2), {"n_classes": 2}, config={"hparams": {}}, metrics={})
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 5])


def fresh(base: Path, name: str) -> Path:
    work = base.parent / name
    shutil.copytree(base, work)
    return work


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchone()[0]


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_case(work: Path, sig: int) -> tuple[int, str, float]:
    """`medgen stage classify`, signalled while an Optuna trial runs; seconds from the signal to exit."""
    # a shell starts background jobs with SIGINT ignored; a terminal's foreground job has the default
    child = subprocess.Popen(
        [*MEDGEN, "stage", "classify"],
        cwd=work,
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    db = work / "mlruns/optuna.db"
    while True:
        try:
            if db.exists() and count(db, "select count(*) from trials where state='RUNNING'"):
                break
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    sent = time.monotonic()
    child.send_signal(sig)
    _, err = child.communicate()
    running = count(work / "mlruns/mlflow.db", "select count(*) from runs where status='RUNNING'")
    return child.returncode, f"{last_line(err)}  (runs RUNNING afterwards: {running})", time.monotonic() - sent


CASES: dict[str, tuple[str, Callable[[Path], tuple[int, str, float]]]] = {}


def case(name: str, command: str):
    def register(fn):
        CASES[name] = (command, fn)
        return fn

    return register


@case("params-empty", "`: > params.yaml; medgen stage prepare`")
def _(base):
    work = fresh(base, "empty")
    (work / "params.yaml").write_text("")
    return run(work, ["stage", "prepare"])


@case("params-utf8", "params.yaml with a Latin-1 byte; `medgen stage prepare`")
def _(base):
    work = fresh(base, "utf8")
    params = work / "params.yaml"
    params.write_bytes(params.read_bytes().replace(b"breastmnist", b"breastmnist\xe9", 1))
    return run(work, ["stage", "prepare"])


@case("params-duplicate", "params.yaml naming `seed` twice; `medgen stage prepare`")
def _(base):
    work = fresh(base, "dup")
    (work / "params.yaml").write_text((work / "params.yaml").read_text() + "seed: 7\n")
    return run(work, ["stage", "prepare"])


@case("params-list", "params.yaml holding a list; `medgen stage prepare`")
def _(base):
    work = fresh(base, "list")
    (work / "params.yaml").write_text("- prepare\n")
    return run(work, ["stage", "prepare"])


@case("npz-zlib", "`MEDGEN_DATA_SOURCE=corrupt.npz medgen stage prepare` (damaged deflate stream)")
def _(base):
    work = fresh(base, "zlib")
    shutil.rmtree(work / "data")
    bad = damage_zlib(Path(env()["MEDGEN_DATA_SOURCE"]), work / "corrupt.npz")
    return run(work, ["stage", "prepare"], MEDGEN_DATA_SOURCE=str(bad))


@case("tracking-db", "mlruns/mlflow.db cut to a third; `medgen stage prepare`")
def _(base):
    work = fresh(base, "mlflowdb")
    db = work / "mlruns/mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    return run(work, ["stage", "prepare"])


@case("study-db", "mlruns/optuna.db not a database; `medgen stage classify`")
def _(base):
    work = fresh(base, "optunadb")
    (work / "mlruns/optuna.db").write_bytes(b"SQLite format 3\x00" + bytes(5000))
    return run(work, ["stage", "classify"])


@case("checkpoint-export", "models/classify/best.pt truncated to 40 %; `medgen stage export`")
def _(base):
    work = fresh(base, "ckpt")
    truncated_checkpoint(work / "models/classify/best.pt")
    return run(work, ["stage", "export"])


@case("checkpoint-augment", "models/classify/best.pt truncated to 40 %; `medgen stage augment`")
def _(base):
    work = fresh(base, "ckpt2")
    truncated_checkpoint(work / "models/classify/best.pt")
    return run(work, ["stage", "augment"])


INFEASIBLE = (
    ("represent.cv_folds", "200"),
    ("represent.grid_n", "100000"),
    ("generate.samples_per_class", "2000000000"),
    ("generate.g_channels", "100000"),
    ("classify.device", "cuda"),
)
for _key, _value in INFEASIBLE:

    def _infeasible(base, key=_key, value=_value):
        return run(base, ["stage", key.split(".")[0], "-S", f"{key}={value}"])

    case(f"infeasible-{_key}", f"`medgen stage {_key.split('.')[0]} -S {_key}={_value}`")(_infeasible)


@case("closed-port", "`MLFLOW_TRACKING_URI=http://127.0.0.1:<closed port> medgen stage prepare`")
def _(base):
    return run(base, ["stage", "prepare"], MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed_port()}")


@case("hung-server", "`MLFLOW_TRACKING_URI=http://127.0.0.1:<port that accepts, never answers> medgen stage prepare`")
def _(base):
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        return run(base, ["stage", "prepare"], MLFLOW_TRACKING_URI=f"http://127.0.0.1:{hung.getsockname()[1]}")


STUDY_URL = "postgresql://u:pw@127.0.0.1:{port}/db"  # pragma: allowlist secret (a made-up password on a closed port)


@case("study-server", f"`MEDGEN_OPTUNA_STORAGE={STUDY_URL.format(port='<closed>')} medgen stage prepare`")
def _(base):
    return run(base, ["stage", "prepare"], MEDGEN_OPTUNA_STORAGE=STUDY_URL.format(port=closed_port()))


@case("read-only-metrics", "metrics/ mounted read-only (`unshare -m` + `mount --bind -o ro`); `medgen stage classify`")
def _(base):
    work = fresh(base, "ro")
    prefix = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(work / "metrics")]
    return run(work, ["stage", "classify"], prefix=prefix)


@case("file-in-the-way", "a file named `plots/classify`; `medgen stage classify`")
def _(base):
    work = fresh(base, "file")
    shutil.rmtree(work / "plots/classify", ignore_errors=True)
    (work / "plots/classify").write_text("not a folder")
    return run(work, ["stage", "classify"])


@case("second-run", "`medgen stage classify` while another `medgen stage classify` runs in the checkout")
def _(base):
    work = fresh(base, "lock")
    first = subprocess.Popen([*MEDGEN, "stage", "classify"], cwd=work, env=env(), stderr=subprocess.DEVNULL)
    lock = work / ".medgen/locks/classify.lock"
    while not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    try:
        return run(work, ["stage", "classify"])
    finally:
        first.kill()
        first.wait()


@case("ctrl-c", "Ctrl-C (SIGINT) during `medgen stage classify`'s search; seconds = signal to exit")
def _(base):
    return signal_case(fresh(base, "sigint"), signal.SIGINT)


@case("sigterm", "SIGTERM during `medgen stage classify`'s search; seconds = signal to exit")
def _(base):
    return signal_case(fresh(base, "sigterm"), signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help=f"cases to run (default all: {', '.join(CASES)})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medgen-faults-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        shutil.copy(ROOT / "params.yaml", base)
        rc, line, _ = run(base, ["stage", "prepare"])
        assert rc == 0, line
        rc, line, _ = run(
            base,
            [
                "stage",
                "classify",
                "-S",
                "classify.n_trials=1",
                "-S",
                "classify.cv_folds=2",
                "-S",
                "classify.search_epochs=2",
            ],
        )
        assert rc == 0, line
        print("| fault | command | exit | line printed (stderr) | seconds |\n|---|---|---|---|---|")
        for name, (command, fn) in CASES.items():
            if args.only and name not in args.only:
                continue
            rc, line, seconds = fn(base)
            print(f"| {name} | {command} | {rc} | `{line.replace('|', '/')}` | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
