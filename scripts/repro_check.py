#!/usr/bin/env python
"""Same inputs, same outputs: run the pipeline three ways from clean copies of this checkout and compare.

  first    copy A, empty mlruns/: the pipeline command (default `dvc repro`)
  again    copy A once more, keeping mlruns/ (Optuna studies, MLflow runs) and the raw data but not dvc.lock,
           DVC's cache or the outputs, so every stage runs again on top of the stored history
  resumed  copy B, empty mlruns/: the pipeline is killed with SIGKILL (the whole process group, as kill -9
           of `dvc repro` and its stage) at the --kill-count-th output line matching --kill-at (default:
           inside classify's second search trial), then the same command is run again to the end; by
           default this copy runs beside the first one (--serial: after it)

Every file under metrics/ and plots/ and every DVC output hash in dvc.lock must be identical to the first
run; the check stops at the first run that differs, prints what differs and exits 1.

Copies run their own src/ (PYTHONPATH), not the editable install's; `profile` is set in their params.yaml
(default smoke). The environment variable REPRO_CHECK_RUN (first | again | resumed) tells the pipeline
command which run it is part of; the check itself never changes what a stage computes.

    scripts/repro_check.py                       # smoke profile; ~3 pipeline runs
    scripts/repro_check.py --pipeline 'dvc repro prepare' --kill-at 'prepared breastmnist' --kill-count 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPARED_DIRS = ("metrics", "plots")
# Classify's progress line after the first fold fit of its second candidate (trial 1; only classify prints
# "cv <recipe> #<trial>"): kill -9 inside trial 1, with trial 0 finished.
DEFAULT_KILL_AT = r"cv \w+ #1: 1/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="dvc repro", help="shell command run in each copy (default: dvc repro)")
    parser.add_argument("--profile", default="smoke", help="profile written into the copies' params.yaml")
    parser.add_argument("--kill-at", default=DEFAULT_KILL_AT, help="regex on the pipeline's output: kill -9 there")
    parser.add_argument("--kill-count", type=int, default=1, help="kill at the n-th matching line (default 1)")
    parser.add_argument(
        "--serial",
        dest="parallel",
        action="store_false",
        help="run the killed-and-resumed copy after the others, not beside the first run",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per pipeline run")
    parser.add_argument("--workdir", default=None, help="where the copies go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the copies (they are removed on success otherwise)")
    return parser.parse_args(argv)


def checkout_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a clean clone of this working tree holds."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in out.split("\0") if name and (root / name).is_file()})


def clean_copy(root: Path, dest: Path, profile: str) -> Path:
    """Copy the checkout to dest without its committed results (dvc.lock, metrics/, plots/), set `profile:` in
    its params.yaml, make it a git repository of its own."""
    for name in checkout_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    params = dest / "params.yaml"
    text, count = re.subn(r"(?m)^profile:[^\n#]*", f"profile: {profile}  ", params.read_text(), count=1)
    if count != 1:
        sys.exit(f"repro_check: no top-level `profile:` line in {params}")
    params.write_text(text)
    # Committed results are outputs of an earlier run, not inputs: every run starts without them
    (dest / "dvc.lock").unlink(missing_ok=True)
    for d in COMPARED_DIRS:
        shutil.rmtree(dest / d, ignore_errors=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def environment(copy: Path, run: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDGEN_")) or k == "MEDGEN_DATA_SOURCE"}
    env.update(
        PYTHONPATH=str(copy / "src"),
        MEDGEN_PROGRESS="log",
        REPRO_CHECK_RUN=run,
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run_pipeline(
    command: str, copy: Path, run: str, timeout: float, kill_at: str | None = None, kill_count: int = 1
) -> tuple[bool, float]:
    """Run `command` in `copy` in its own process group; with `kill_at`, SIGKILL the group at the
    `kill_count`-th output line matching it. Returns (killed, seconds). Output goes to copy/<run>.log."""
    started = time.monotonic()
    pattern = re.compile(kill_at) if kill_at else None
    matches = 0
    with open(copy / f"{run}.log", "ab") as log:
        # --pipeline is a shell command line by design, given by the person running the check
        proc = subprocess.Popen(  # nosec B602
            command,
            shell=True,  # nosec B602
            cwd=copy,
            env=environment(copy, run),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            for line in proc.stdout:
                log.write(line)
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{run}: pipeline still running after {timeout:.0f} s")
                matches += bool(pattern is not None and pattern.search(line.decode(errors="replace")))
                if pattern is not None and matches == kill_count:
                    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of dvc and the stage it runs
                    proc.wait()
                    waited = _wait_gone(proc.pid)
                    text = line.decode(errors="replace").strip()
                    log.write(f"\n=== repro_check: killed (SIGKILL) at: {text}\n".encode())
                    log.write(f"=== repro_check: every process of the group gone after {waited:.1f} s\n".encode())
                    return True, time.monotonic() - started
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
    if code != 0:
        tail = (copy / f"{run}.log").read_text(errors="replace").splitlines()[-40:]
        sys.exit(
            "\n".join(
                [
                    f"repro_check: {run}: `{command}` failed with exit code {code}; the end of {copy / f'{run}.log'}:",
                    *tail,
                ]
            )
        )
    return False, time.monotonic() - started


def _wait_gone(group: int, limit: float = 60.0) -> float:
    """Wait until no process of the killed group is left, zombies included: until the system reaps them, DVC
    takes a dead `dvc repro` for a live lock holder (exit 255, "is busy") and medgen a dead stage for the
    live owner of its Optuna trial. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return time.monotonic() - started
        time.sleep(0.2)
    sys.exit(f"repro_check: processes of the killed group {group} still exist after {limit:.0f} s")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(copy: Path) -> dict[str, str]:
    """{name: hash} of every file under metrics/ and plots/ and of every out recorded in dvc.lock."""
    import yaml

    files = [p for d in COMPARED_DIRS for p in sorted((copy / d).rglob("*")) if p.is_file()]
    found = {str(p.relative_to(copy)): sha256(p) for p in files}
    lock = yaml.safe_load((copy / "dvc.lock").read_text()) if (copy / "dvc.lock").exists() else {}
    for stage, spec in sorted((lock.get("stages") or {}).items()):
        for out in spec.get("outs") or []:
            found[f"dvc.lock {stage} out {out['path']}"] = str(out.get("md5"))
    return found


def differences(reference: dict[str, str], other: dict[str, str], ref_dir: Path, other_dir: Path) -> list[str]:
    lines = []
    for name in sorted(set(reference) | set(other)):
        if name not in other:
            lines.append(f"  missing in the later run: {name}")
        elif name not in reference:
            lines.append(f"  only in the later run: {name}")
        elif reference[name] != other[name]:
            lines.append(f"  differs: {name}{_json_hint(ref_dir / name, other_dir / name)}")
    return lines


def _json_hint(a: Path, b: Path) -> str:
    """For JSON files, the first differing key path and both values."""
    if a.suffix != ".json" or not (a.is_file() and b.is_file()):
        return ""
    try:
        left, right = json.loads(a.read_text()), json.loads(b.read_text())
    except ValueError:
        return " (not valid JSON in one of the runs)"
    path = _first_difference(left, right, "")
    return f" (first at {path or '/'})" if path is not None else ""


def _first_difference(a, b, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}/{key}"
            found = _first_difference(a[key], b[key], f"{path}/{key}")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = (_first_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
        return next((f for f in found if f), None)
    return None if a == b else f"{path}: {a!r} != {b!r}"


def compare(name: str, reference: dict[str, str], other: dict[str, str], ref_dir: Path, other_dir: Path) -> None:
    lines = differences(reference, other, ref_dir, other_dir)
    if lines:
        print(f"repro_check: FAILED: the {name} run differs from the first one:", *lines, sep="\n", file=sys.stderr)
        print(f"repro_check: copies and logs kept in {other_dir.parent}", file=sys.stderr)
        sys.exit(1)
    print(f"repro_check: {name}: {len(other)} files and DVC out hashes identical to the first run", flush=True)


def killed_and_resumed(args: argparse.Namespace, copy: Path) -> float:
    """The pipeline killed (SIGKILL) at the --kill-count-th line matching --kill-at, then run again to the end."""
    killed, before = run_pipeline(args.pipeline, copy, "resumed", args.timeout, args.kill_at, args.kill_count)
    if not killed:
        sys.exit(
            f"repro_check: the pipeline finished without printing {args.kill_count} line(s) matching "
            f"--kill-at {args.kill_at!r}"
        )
    print(f"repro_check: killed after {before:.0f} s; resuming", flush=True)
    _, after = run_pipeline(args.pipeline, copy, "resumed", args.timeout)
    return before + after


def again(args: argparse.Namespace, copy: Path, reference: Path) -> float:
    """The first copy once more: its outputs moved to `reference`; mlruns/ (Optuna studies, MLflow runs) and
    the raw data stay. dvc.lock and DVC's cache go too, or its run cache would restore the first outputs."""
    for d in COMPARED_DIRS:
        if (copy / d).exists():
            shutil.move(copy / d, reference / d)
    (copy / "dvc.lock").unlink(missing_ok=True)
    shutil.rmtree(copy / ".dvc" / "cache", ignore_errors=True)
    _, seconds = run_pipeline(args.pipeline, copy, "again", args.timeout)
    ran = [(copy / f"{run}.log").read_text(errors="replace").count("Running stage '") for run in ("first", "again")]
    if ran[1] < ran[0]:
        sys.exit(
            f"repro_check: the again run ran {ran[1]} stages, the first {ran[0]}: outputs were restored, not recomputed"
        )
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medgen-repro-"))
    work.mkdir(parents=True, exist_ok=True)
    a, b = clean_copy(ROOT, work / "a", args.profile), clean_copy(ROOT, work / "b", args.profile)
    reference = work / "first"  # the first run's outputs, kept to say what differs
    reference.mkdir(exist_ok=True)
    started = time.monotonic()
    # Copies a and b share nothing: the killed-and-resumed run goes on beside the first one
    with ThreadPoolExecutor(max_workers=2 if args.parallel else 1) as pool:
        resumed = pool.submit(killed_and_resumed, args, b) if args.parallel else None
        _, seconds = run_pipeline(args.pipeline, a, "first", args.timeout)
        first = snapshot(a)
        if not first:
            sys.exit("repro_check: the first run wrote nothing under metrics/ or plots/ and no dvc.lock")
        print(f"repro_check: first run {seconds:.0f} s, {len(first)} files and out hashes", flush=True)
        seconds = again(args, a, reference)
        print(f"repro_check: again (mlruns/ kept) {seconds:.0f} s", flush=True)
        compare("again", first, snapshot(a), reference, a)
        seconds = resumed.result() if resumed else killed_and_resumed(args, b)
    print(f"repro_check: killed and resumed {seconds:.0f} s", flush=True)
    compare("resumed", first, snapshot(b), reference, b)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"repro_check: OK: same inputs, same outputs (first = again with mlruns/ kept = killed and resumed); "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
