"""`make container-check-pipeline`: build the `pipeline` image, run the smoke pipeline in it as docs/serving.md
prints, and compare what it wrote with the same smoke run on the host's virtual environment.

    python scripts/container_pipeline.py [--base IMAGE] [--keep] [--no-host] [--serial]

1. engine and base as `make container-check` (scripts/container_check.py): docker when its daemon answers, else
   podman with runc; the default base, else the debootstrap stand-in with the same Python;
2. build the documented line (`docker build --target pipeline ...`; pip reaches the index through the host's CA
   bundle, mounted for the build only), print the image size and check torch/dvc are inside;
3. in a scratch folder holding only params.yaml, run the documented lines as printed (bash; `docker` is the
   engine): the smoke params file, the output folders, then `docker run --user "$(id -u):$(id -g)" ...` with the
   real data mounted read-only through $MEDGEN_DATA_SOURCE. As root the user is 10001 (a user's uid stand-in),
   so the check sees whether the outputs belong to the user;
4. beside it (--serial: after it) the same smoke `dvc repro` in a clean copy of this checkout on the host venv
   (scripts/repro_check.py's copy), then every file under metrics/, plots/ and models/ must be byte-identical.
Prints each result and timings with the load average, writes reports/container_pipeline.json, exits 1 on any
miss and 2 when no engine exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import container_check as cc  # noqa: E402
import repro_check  # noqa: E402

ROOT = cc.ROOT
OUTPUT_DIRS = ("metrics", "plots", "models")
STAND_IN_UID = 10001  # the uid the run uses when this check runs as root
# The lines docs/serving.md prints (tests/serving/test_docs.py keeps them equal); run here as printed.
DOC_BUILD = "docker build --target pipeline -t medgen-pipeline ."
DOC_PREPARE = (
    "mkdir -p out/metrics out/plots out/models && sed 's/^profile: full/profile: smoke/' params.yaml > out/params.yaml"
)
DOC_RUN = (
    'docker run --rm --user "$(id -u):$(id -g)" -e MEDGEN_DATA_SOURCE=/data/source.npz '
    '-v "$MEDGEN_DATA_SOURCE:/data/source.npz:ro" -v "$PWD/out/params.yaml:/app/params.yaml:ro" '
    '-v "$PWD/out/metrics:/app/metrics" -v "$PWD/out/plots:/app/plots" -v "$PWD/out/models:/app/models" '
    "medgen-pipeline"
)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def build(engine: cc.Engine, base: str, tag: str, log: Path) -> float:
    """DOC_BUILD with the engine's flags, the base and the CA bundle (mounted, never copied); seconds taken."""
    args = shlex.split(DOC_BUILD)[2:]
    args[args.index("medgen-pipeline")] = tag
    cert = ["-v", f"{cc.HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    started = time.monotonic()
    out = cc.sh(
        [
            *engine.cmd,
            "build",
            *engine.build_flags,
            *(cert if cc.HOST_CA.is_file() else []),
            "--build-arg",
            f"BASE_IMAGE={base}",
            *args,
        ],
        cwd=ROOT,
        timeout=3600,
        check=False,
    )
    log.write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"build failed ({out.returncode}); the end of {log}:\n{(out.stdout + out.stderr)[-3000:]}")
    return time.monotonic() - started


def image_facts(engine: cc.Engine, tag: str) -> dict[str, Any]:
    size = int(cc.sh([*engine.cmd, "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())
    pip = cc.sh([*engine.cmd, "run", "--rm", *engine.run_flags, tag, "pip", "list", "--format=freeze"]).stdout
    versions = dict(line.split("==", 1) for line in pip.splitlines() if "==" in line)
    pinned = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    off_lock = sorted(
        f"{name}=={v} (lock: {pinned[name]})" for name, v in versions.items() if name in pinned and pinned[name] != v
    )
    missing = sorted(name for name in pinned if name not in versions)
    python = cc.sh(
        [
            *engine.cmd,
            "run",
            "--rm",
            *engine.run_flags,
            tag,
            "python",
            "-c",
            "import platform; print(platform.python_version())",
        ]
    ).stdout.strip()
    return {
        "size_mb": round(size / 1e6, 1),
        "python": python,
        "torch": versions.get("torch"),
        "dvc": versions.get("dvc"),
        "packages": len(versions),
        "off_lock": off_lock,
        "missing_from_lock": missing,
    }


def blas_env() -> list[str]:
    """-e flags for this machine's OpenBLAS settings (OPENBLAS_CORETYPE pins its kernels): the container computes
    with the host's kernels, so a difference left is one of code, data, params or packages. Without them the
    Frechet distances differ in the 9th digit (docs/serving.md, "Container")."""
    return [flag for name in sorted(os.environ) if name.startswith("OPENBLAS_") for flag in ("-e", name)]


def doc_line(line: str, engine: cc.Engine, tag: str) -> str:
    """A documented `docker run` line for bash: this engine with its flags (and the host's OpenBLAS settings),
    the image tag; as root the user becomes STAND_IN_UID (a root-owned output would otherwise pass unseen)."""
    line = line.replace("docker run ", shlex.join([*engine.cmd, "run", *engine.run_flags, *blas_env()]) + " ", 1)
    line = line[: line.rindex("medgen-pipeline")] + tag
    if os.getuid() == 0:
        line = line.replace('"$(id -u):$(id -g)"', f"{STAND_IN_UID}:{STAND_IN_UID}")
    return line


def container_run(engine: cc.Engine, tag: str, scratch: Path, data: Path) -> dict[str, Any]:
    """DOC_PREPARE and DOC_RUN in `scratch` (params.yaml only) through bash, as a user types them."""
    shutil.copy2(ROOT / "params.yaml", scratch / "params.yaml")
    env = {**os.environ, "MEDGEN_DATA_SOURCE": str(data)}
    cc.sh(["bash", "-c", DOC_PREPARE], cwd=scratch, env=env)
    uid = STAND_IN_UID if os.getuid() == 0 else os.getuid()
    if os.getuid() == 0:
        for name in OUTPUT_DIRS:  # the folders a user with this uid made with DOC_PREPARE
            os.chown(scratch / "out" / name, uid, uid)
    started = time.monotonic()
    with open(scratch / "container.log", "wb") as log:
        code = subprocess.run(
            ["bash", "-c", doc_line(DOC_RUN, engine, tag)],
            cwd=scratch,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=3600,
        ).returncode
    seconds = time.monotonic() - started
    out = scratch / "out"
    files = [p for name in OUTPUT_DIRS for p in (out / name).rglob("*")]
    foreign = sorted(str(p.relative_to(out)) for p in files if p.stat().st_uid != uid)
    return {
        "exit_code": code,
        "seconds": round(seconds, 1),
        "uid": uid,
        "files": len(files),
        "not_owned_by_uid": foreign[:10],
        "metrics": sorted(p.name for p in (out / "metrics").glob("*.json")),
        "log": str(scratch / "container.log"),
    }


def host_run(work: Path) -> dict[str, Any]:
    """The same smoke `dvc repro` in a clean copy of this checkout on the host venv (repro_check's copy)."""
    copy = repro_check.clean_copy(ROOT, work / "host", "smoke")
    _, seconds = repro_check.run_pipeline("dvc repro", copy, "host", timeout=3600)
    return {"seconds": round(seconds, 1), "dir": str(copy)}


def outputs(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under OUTPUT_DIRS."""
    return {
        str(p.relative_to(folder)): repro_check.sha256(p)
        for name in OUTPUT_DIRS
        for p in sorted((folder / name).rglob("*"))
        if p.is_file()
    }


def compare(container_out: Path, host_copy: Path, pythons: tuple[str, str]) -> dict[str, Any]:
    """Byte comparison of OUTPUT_DIRS: every difference is a miss. (The stand-in base's Python is Debian's
    3.11.2, the host's 3.11.7; medgen.io writes npz files that do not depend on the patch release.)"""
    ours, theirs = outputs(container_out), outputs(host_copy)
    return {
        "files_compared": len(theirs),
        "pythons": {"image": pythons[0], "host": pythons[1]},
        "differences": repro_check.differences(theirs, ours, host_copy, container_out),
    }


def misses(report: dict[str, Any]) -> list[str]:
    """Every target the measured facts miss."""
    image, run = report["image"], report["run"]
    expected = sorted(p.name for p in (ROOT / "metrics").glob("*.json"))
    rules = {
        "torch and dvc in the image": bool(image["torch"] and image["dvc"]),
        "every package at its requirements.lock version": not image["off_lock"] and not image["missing_from_lock"],
        "the smoke pipeline exits 0": run["exit_code"] == 0,
        f"every stage's metrics written ({len(expected)} files)": run["metrics"] == expected,
        "every output owned by the run's uid": not run["not_owned_by_uid"],
    }
    if "host" in report:
        rules["metrics/, plots/, models/ byte-identical to the host run"] = (
            report["host"]["files_compared"] > 0 and not report["host"]["differences"]
        )
    return [rule for rule, ok in rules.items() if not ok]


def checked(engine: cc.Engine, args: argparse.Namespace, work: Path, data: Path, tag: str) -> dict[str, Any]:
    report: dict[str, Any] = {"engine": engine.name, "load_at_start": load()}
    t0 = time.monotonic()
    report["base"], report["base_source"] = cc.base_image(engine, args.base)
    report["base_seconds"] = round(time.monotonic() - t0, 1)
    report["build_seconds"] = round(build(engine, report["base"], tag, work / "build.log"), 1)
    report["image"] = image_facts(engine, tag)
    report["load_after_build"] = load()
    scratch = work / "scratch"
    scratch.mkdir()
    os.environ["MEDGEN_DATA_SOURCE"] = str(data)  # the host run reads the same file
    with ThreadPoolExecutor(max_workers=1 if args.serial else 2) as pool:
        host = None if args.no_host else pool.submit(host_run, work)
        report["run"] = container_run(engine, tag, scratch, data)
        if host is not None:
            pythons = (report["image"]["python"], platform.python_version())
            report["host"] = {**host.result(), **compare(scratch / "out", Path(host.result()["dir"]), pythons)}
    report["load_at_end"] = load()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base",
        default=cc.DEFAULT_BASE,
        help=f"BASE_IMAGE (default {cc.DEFAULT_BASE}; a stand-in when it cannot be pulled)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the image and the scratch folders")
    parser.add_argument("--no-host", action="store_true", help="skip the host run and the comparison")
    parser.add_argument("--serial", action="store_true", help="run the host copy after the container, not beside it")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "container_pipeline.json")
    args = parser.parse_args(argv)
    engine = cc.find_engine()
    if engine is None:
        print("container_pipeline: no container engine (apt-get install -y podman runc debootstrap)", file=sys.stderr)
        return 2
    from tests.conftest import real_npz

    data = real_npz()
    if data is None:
        print("container_pipeline: real data not found: set MEDGEN_DATA_SOURCE", file=sys.stderr)
        return 1
    tag = f"localhost/medgen-pipeline:check-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="medgen-pipeline-"))
    work.chmod(0o755)  # the run's uid reads the scratch files mounted from here
    try:
        report = checked(engine, args, work, data.resolve(), tag)
    finally:
        if not args.keep:
            cc.sh([*engine.cmd, "rmi", "-f", tag], check=False)
    report["misses"] = misses(report)
    if not args.keep and not report["misses"]:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(summary(report, work))
    return 1 if report["misses"] else 0


def summary(report: dict[str, Any], work: Path) -> str:
    image, run = report["image"], report["run"]
    lines = [
        f"container_pipeline: engine {report['engine']}, base {report['base']} ({report['base_source']}), "
        f"build {report['build_seconds']} s (load {report['load_at_start']} -> {report['load_after_build']})",
        f"container_pipeline: image size {image['size_mb']} MB, Python {image['python']}, "
        f"{image['packages']} packages, torch {image['torch']}, dvc {image['dvc']}, "
        f"off the lock: {image['off_lock'] or 'none'}",
        f"container_pipeline: smoke `dvc repro` in the container: exit {run['exit_code']}, {run['seconds']} s, "
        f"{run['files']} files as uid {run['uid']} (others: {run['not_owned_by_uid'] or 'none'}), "
        f"metrics {' '.join(run['metrics'])}",
    ]
    if "host" in report:
        host = report["host"]
        lines.append(
            f"container_pipeline: host run {host['seconds']} s; {host['files_compared']} files compared, "
            f"{len(host['differences'])} differ" + "".join(f"\n{d}" for d in host["differences"])
        )
    lines.append(f"container_pipeline: load average at the end {report['load_at_end']}")
    lines.append(
        "container_pipeline: OK"
        if not report["misses"]
        else f"container_pipeline: MISSED {report['misses']} (work folder kept: {work})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
