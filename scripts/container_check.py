"""`make container-check`: build the `serve` image, run it as docs/serving.md prints, and check it end to end.

    python scripts/container_check.py [--model-dir DIR] [--base IMAGE] [--keep] [--no-baked]

1. engine: docker when its daemon answers, else podman (`--runtime runc`, the ulimits and `--network host`
   these machines need);
2. base: BASE_IMAGE (python:3.11-slim-bookworm) when present or pullable, else a stand-in with the same
   Python built here: `debootstrap --variant=minbase bookworm` + `podman import` + Debian's python3
   python3-venv ca-certificates (cached as localhost/medgen-python:3.11-bookworm);
3. models: --model-dir, else models/export when it holds a manifest, else stand-ins exported here;
4. build `serve` (pip inside the build reaches the index through the host's CA bundle, mounted for the build
   only), print the image size and `pip list` inside (no torch allowed), size <= 700 MB;
5. run the documented `docker run` line (host networking and a free loopback port where the engine needs it),
   then: /healthz ok; /classify on 64 real test images = in-process onnxruntime (max abs diff <= 1e-5);
   /generate a valid image per class; a bad request and a missing key get their 4xx; HEALTHCHECK passes;
   the process is not root; SIGTERM stops it within 10 s; without keys the image refuses to start;
6. the documented lines with the models baked in (--build-arg MODELS=models/export, from a build context holding
   the same models at models/export): healthy, the same parity, the same SIGTERM stop.
`make container-check-pipeline` (scripts/container_pipeline.py) does the same for the `pipeline` target.
Prints each result and writes reports/container_check.json; exits 1 on any miss, 2 when no engine exists.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]
DEFAULT_BASE = "python:3.11-slim-bookworm"
STAND_IN_BASE = "localhost/medgen-python:3.11-bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
MAX_IMAGE_MB = 700
JUNK = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
# The lines docs/serving.md prints (tests/serving/test_container_docs.py keeps them equal).
DOC_BUILD = "docker build -t medgen ."
DOC_RUN = (
    "docker run -d --name medgen -p 127.0.0.1:3000:3000 -e MEDGEN_API_KEYS "
    '-v "$PWD/models/export:/app/models/export:ro" medgen'
)
DOC_STOP = "docker stop medgen"
DOC_BUILD_BAKED = "docker build --build-arg MODELS=models/export -t medgen:baked ."
DOC_RUN_BAKED = "docker run -d --name medgen -p 127.0.0.1:3000:3000 -e MEDGEN_API_KEYS medgen:baked"


@dataclass
class Engine:
    name: str
    cmd: list[str]
    build_flags: list[str] = field(default_factory=list)
    run_flags: list[str] = field(default_factory=list)

    @property
    def host_network(self) -> bool:
        return "--network" in self.run_flags


def sh(args: list[str], timeout: float = 600, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a command (never through a shell); raise with its output's tail when check and it fails."""
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and out.returncode != 0:
        raise RuntimeError(f"{shlex.join(args[:6])}... exited {out.returncode}: {(out.stderr or out.stdout)[-1500:]}")
    return out


def find_engine() -> Engine | None:
    docker = shutil.which("docker")
    if docker and sh([docker, "info"], timeout=20, check=False).returncode == 0:
        return Engine("docker", [docker])
    podman = shutil.which("podman")
    if podman:
        limits = ["--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:4096", "--network", "host"]
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []  # crun refuses this machine's cgroups
        return Engine("podman", [podman, *runtime], ["--format", "docker", *limits], limits)
    return None


def image_exists(engine: Engine, image: str) -> bool:
    return sh([*engine.cmd, "image", "inspect", image], check=False, timeout=60).returncode == 0


def stand_in_base(engine: Engine) -> str:
    """Debian bookworm minbase + python3 (3.11, as in the default base), built once and cached by tag."""
    if image_exists(engine, STAND_IN_BASE):
        return STAND_IN_BASE
    if not shutil.which("debootstrap"):
        raise RuntimeError("the default base cannot be pulled and debootstrap is missing (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="medgen-base-") as work:
        rootfs = Path(work) / "rootfs"
        sh(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], timeout=900)
        for junk in JUNK:  # caches and docs: ~100 MB the image does not need
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh([*engine.cmd, "import", "-", "localhost/debian-base:bookworm"], stdin=tar.stdout, timeout=600)
        tar.wait()
        containerfile = Path(work) / "Containerfile"
        containerfile.write_text(
            "FROM localhost/debian-base:bookworm\n"
            "RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates"
            " && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*\n"
        )
        sh(
            [*engine.cmd, "build", *engine.build_flags, "-t", STAND_IN_BASE, "-f", str(containerfile), work],
            timeout=900,
        )
    return STAND_IN_BASE


def base_image(engine: Engine, wanted: str) -> tuple[str, str]:
    """(image, how it was obtained): present, pulled, or the stand-in."""
    if image_exists(engine, wanted):
        return wanted, "present"
    if sh([*engine.cmd, "pull", wanted], check=False, timeout=300).returncode == 0:
        return wanted, "pulled"
    return stand_in_base(engine), f"stand-in ({wanted} cannot be pulled here)"


def model_dir(given: Path | None, work: Path) -> Path:
    if given:
        return given.resolve()
    if (ROOT / "models" / "export" / "manifest.json").is_file():
        return ROOT / "models" / "export"
    from tests.conftest import real_npz
    from tests.serving.conftest import export_standins

    return export_standins(work, real_npz())


def build(engine: Engine, base: str, tag: str, line: str = DOC_BUILD, context: Path = ROOT) -> float:
    """A documented build line (in `context`) with the base, the CA bundle (mounted, never copied) and engine
    flags; the line's image name becomes `tag`."""
    args = shlex.split(line)[2:]  # after `docker build`
    args[args.index("-t") + 1] = tag
    cert = ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    cert = cert if HOST_CA.is_file() else []
    t0 = time.monotonic()
    sh(
        [*engine.cmd, "build", *engine.build_flags, *cert, "--build-arg", f"BASE_IMAGE={base}", *args],
        cwd=context,
        timeout=1800,
    )
    return time.monotonic() - t0


def image_facts(engine: Engine, tag: str) -> dict[str, Any]:
    size = int(sh([*engine.cmd, "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())
    pip = sh([*engine.cmd, "run", "--rm", *engine.run_flags, "--entrypoint", "pip", tag, "list", "--format=freeze"])
    pip = pip.stdout
    packages = sorted(line.split("==")[0].lower() for line in pip.splitlines() if "==" in line)
    user = sh([*engine.cmd, "image", "inspect", "--format", "{{.Config.User}}", tag]).stdout.strip()
    return {"size_mb": round(size / 1e6, 1), "packages": packages, "user": user}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_line(engine: Engine, tag: str, name: str, port: int, pwd: Path, line: str = DOC_RUN) -> list[str]:
    """A documented run line as printed, with this engine, a unique name, the image tag and a free loopback port."""
    args = shlex.split(line)
    args = [a.replace("$PWD", str(pwd)) for a in args[2:]]
    args[args.index("--name") + 1] = name
    publish = args.index("-p")
    if engine.host_network:  # no port mapping on the host network: BentoML binds loopback:port itself
        del args[publish : publish + 2]
        args[:0] = [*engine.run_flags, "-e", "BENTOML_HOST=127.0.0.1", "-e", f"BENTOML_PORT={port}"]
    else:
        args[publish + 1] = f"127.0.0.1:{port}:3000"
    args[-1] = tag
    return [*engine.cmd, "run", *args]


def wait_healthy(engine: Engine, url: str, name: str, started: float, limit: float = 120) -> float:
    """Seconds from `run` to the first 200 on /healthz; RuntimeError with the logs if it never comes."""
    import urllib.request

    while time.monotonic() - started < limit:
        try:
            # an http://127.0.0.1 URL built here, never a user-given one (hence the nosec)
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # nosec B310
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        state = sh([*engine.cmd, "inspect", "--format", "{{.State.Running}}", name], check=False).stdout.strip()
        if state == "false":
            break
        time.sleep(0.5)
    logs = sh([*engine.cmd, "logs", name], check=False)
    raise RuntimeError(f"container never answered /healthz: {(logs.stdout + logs.stderr)[-1500:]}")


def http_checks(url: str, key: str, models: Path) -> dict[str, Any]:
    """Parity on 64 real images, /generate per class, refusals: each result a number or a bool."""
    import base64
    import io

    import httpx
    import numpy as np
    from PIL import Image

    from serving import runtime
    from tests.conftest import real_npz

    auth = {"Authorization": f"Bearer {key}"}
    with np.load(real_npz()) as archive:
        images = archive["test_images"][:64]
    local = runtime.load_models(str(models))
    contract = local["classifier"].contract
    batch = contract.to_nchw(images, 64)
    got = httpx.post(f"{url}/classify", json={"images": images.tolist()}, headers=auth, timeout=60)
    got.raise_for_status()
    probs = np.array([p["probabilities"] for p in got.json()["predictions"]])
    expected = runtime.classify_probs(local["classifier"], runtime.to_model_input(batch))
    generated = {}
    for label in range(int(local["generator"].metadata["n_classes"])):
        body = httpx.post(f"{url}/generate", json={"label": label, "n": 4, "seed": 1}, headers=auth, timeout=60).json()
        with Image.open(io.BytesIO(base64.b64decode(body["png_base64"]))) as grid:
            generated[label] = grid.format == "PNG" and grid.size == (2 * contract.size + 6,) * 2
    deep = httpx.post(
        f"{url}/classify", content=b"[" * 5000 + b"]" * 5000, headers={**auth, "content-type": "application/json"}
    )
    anonymous = httpx.get(f"{url}/metadata", timeout=10)
    return {
        "images": len(images),
        "max_abs_diff": float(np.max(np.abs(probs - expected))),
        "generate_valid_png_per_class": generated,
        "deep_json_status": deep.status_code,
        "no_key_status": anonymous.status_code,
        "no_key_www_authenticate": "Bearer" in anonymous.headers.get("www-authenticate", ""),
    }


def stop_timed(engine: Engine, name: str) -> tuple[float, str]:
    """SIGTERM (engine stop, SIGKILL only after 10 s): seconds taken and the exit code."""
    t0 = time.monotonic()
    sh([*engine.cmd, "stop", "-t", "10", name], timeout=60)
    seconds = time.monotonic() - t0
    return seconds, sh([*engine.cmd, "inspect", "--format", "{{.State.ExitCode}}", name]).stdout.strip()


def refuses_without_keys(engine: Engine, tag: str, pwd: Path) -> tuple[int, list[str]]:
    """The image binds 0.0.0.0: with no key and no MEDGEN_ALLOW_ANONYMOUS it must refuse (exit 1, one line)."""
    args = [a.replace("$PWD", str(pwd)) for a in shlex.split(DOC_RUN)[2:]]
    args = [a for a in args if a not in ("-d", "MEDGEN_API_KEYS")]
    args[args.index("--name") + 1] = f"medgen-anon-{os.getpid()}"
    publish = args.index("-p")
    del args[publish : publish + 2]
    args.remove("-e")
    out = sh(
        [*engine.cmd, "run", "--rm", *engine.run_flags, "-e", f"BENTOML_PORT={free_port()}", *args[:-1], tag],
        check=False,
        timeout=120,
    )
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("medgen: error:")]
    return out.returncode, lines


def run_and_check(engine: Engine, tag: str, models: Path, work: Path) -> dict[str, Any]:
    pwd = work / "checkout"
    shutil.copytree(models, pwd / "models" / "export", dirs_exist_ok=True)
    for path in [pwd / "models" / "export", *(pwd / "models" / "export").iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's unprivileged user
    key, port, name = secrets.token_urlsafe(32), free_port(), f"medgen-check-{os.getpid()}"
    started = time.monotonic()
    sh(run_line(engine, tag, name, port, pwd), env={**os.environ, "MEDGEN_API_KEYS": key})
    try:
        url = f"http://127.0.0.1:{port}"
        result: dict[str, Any] = {"seconds_to_first_healthy": round(wait_healthy(engine, url, name, started), 1)}
        result.update(http_checks(url, key, models))
        health = [*engine.cmd, "healthcheck", "run", name] if engine.name == "podman" else None
        result["healthcheck_ok"] = sh(health, check=False).returncode == 0 if health else True
        result["uid"] = sh([*engine.cmd, "exec", name, "id", "-u"]).stdout.strip()
        result["stop_seconds"], result["exit_code"] = stop_timed(engine, name)
    finally:
        sh([*engine.cmd, "rm", "-f", name], check=False)
    result["without_keys_exit"], result["without_keys_lines"] = refuses_without_keys(engine, tag, pwd)
    return result


def baked_context(models: Path, work: Path) -> Path:
    """A build context with what the serve target reads (a checkout's Dockerfile, lock, serving/) and `models`
    at models/export, as after `medgen stage export`."""
    context = work / "baked-context"
    (context / "models").mkdir(parents=True)
    for name in ("Dockerfile", ".dockerignore", "requirements.lock"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "serving", context / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(models, context / "models" / "export")
    for path in (context / "models" / "export").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return context


def baked_check(engine: Engine, base: str, models: Path, work: Path) -> dict[str, Any]:
    """DOC_BUILD_BAKED and DOC_RUN_BAKED: the models inside the image, served with no mount."""
    tag, name = f"localhost/medgen:baked-{os.getpid()}", f"medgen-baked-{os.getpid()}"
    key, port = secrets.token_urlsafe(32), free_port()
    seconds = build(engine, base, tag, DOC_BUILD_BAKED, baked_context(models, work))
    result: dict[str, Any] = {"build_seconds": round(seconds, 1)}
    try:
        result["size_mb"] = image_facts(engine, tag)["size_mb"]
        started = time.monotonic()
        sh(run_line(engine, tag, name, port, work, DOC_RUN_BAKED), env={**os.environ, "MEDGEN_API_KEYS": key})
        try:
            url = f"http://127.0.0.1:{port}"
            result["seconds_to_first_healthy"] = round(wait_healthy(engine, url, name, started), 1)
            checks = http_checks(url, key, models)
            result.update(images=checks["images"], max_abs_diff=checks["max_abs_diff"])
            result["stop_seconds"], result["exit_code"] = stop_timed(engine, name)
        finally:
            sh([*engine.cmd, "rm", "-f", name], check=False)
    finally:
        sh([*engine.cmd, "rmi", "-f", tag], check=False)
    return result


def misses(facts: dict[str, Any], checks: dict[str, Any], baked: dict[str, Any] | None = None) -> list[str]:
    """Every target of the issue that the measured numbers miss."""
    rules = {
        f"image <= {MAX_IMAGE_MB} MB": facts["size_mb"] <= MAX_IMAGE_MB,
        "no torch in the image": not any(p.startswith("torch") for p in facts["packages"]),
        "non-root user": facts["user"] not in ("", "0", "root") and checks["uid"] != "0",
        "parity <= 1e-5 on 64 real images": checks["images"] == 64 and checks["max_abs_diff"] <= 1e-5,
        "a valid PNG per class": all(checks["generate_valid_png_per_class"].values()),
        "deep JSON -> 400": checks["deep_json_status"] == 400,
        "no key -> 401 + WWW-Authenticate": checks["no_key_status"] == 401 and checks["no_key_www_authenticate"],
        "HEALTHCHECK passes": checks["healthcheck_ok"],
        "SIGTERM stop < 10 s, exit 0": checks["stop_seconds"] < 10 and checks["exit_code"] == "0",
        "no keys -> exit 1, one line": checks["without_keys_exit"] == 1 and len(checks["without_keys_lines"]) == 1,
    }
    if baked is not None:
        rules["baked models: parity <= 1e-5 on 64 images, SIGTERM stop < 10 s"] = (
            baked["images"] == 64
            and baked["max_abs_diff"] <= 1e-5
            and baked["stop_seconds"] < 10
            and baked["exit_code"] == "0"
        )
    return [rule for rule, ok in rules.items() if not ok]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="exported models (default: models/export, else stand-ins)"
    )
    parser.add_argument(
        "--base", default=DEFAULT_BASE, help=f"BASE_IMAGE (default {DEFAULT_BASE}; a stand-in when it cannot be pulled)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the built image (tag printed)")
    parser.add_argument("--no-baked", action="store_true", help="skip the image with the models baked in")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "container_check.json")
    args = parser.parse_args(argv)
    engine = find_engine()
    if engine is None:
        print("container_check: no container engine (apt-get install -y podman runc debootstrap)", file=sys.stderr)
        return 2
    tag = f"localhost/medgen:check-{os.getpid()}"
    report: dict[str, Any] = {"engine": engine.name}
    with tempfile.TemporaryDirectory(prefix="medgen-container-") as tmp:
        t0 = time.monotonic()
        report["base"], report["base_source"] = base_image(engine, args.base)
        report["base_seconds"] = round(time.monotonic() - t0, 1)
        models = model_dir(args.model_dir, Path(tmp))
        report["models"] = str(models)
        try:
            report["build_seconds"] = round(build(engine, report["base"], tag), 1)
            facts = image_facts(engine, tag)
            report.update(image=facts, checks=run_and_check(engine, tag, models, Path(tmp)))
            if not args.no_baked:
                report["baked"] = baked_check(engine, report["base"], models, Path(tmp))
        finally:
            if not args.keep:
                sh([*engine.cmd, "rmi", "-f", tag], check=False)
    report["misses"] = misses(report["image"], report["checks"], report.get("baked"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(summary(report))
    return 1 if report["misses"] else 0


def summary(report: dict[str, Any]) -> str:
    image, checks = report["image"], report["checks"]
    torch = "yes" if any(p.startswith("torch") for p in image["packages"]) else "no"
    lines = [
        f"container_check: engine {report['engine']}, base {report['base']} ({report['base_source']}, "
        f"{report['base_seconds']} s), build {report['build_seconds']} s",
        f"container_check: image size {image['size_mb']} MB (limit {MAX_IMAGE_MB}), user {image['user']}, "
        f"{len(image['packages'])} packages, torch: {torch}",
        f"container_check: pip list: {' '.join(image['packages'])}",
        f"container_check: first healthy answer after {checks['seconds_to_first_healthy']} s; parity on "
        f"{checks['images']} images max |diff| {checks['max_abs_diff']:.2e}; stop {checks['stop_seconds']:.1f} s "
        f"(exit {checks['exit_code']}); without keys: exit {checks['without_keys_exit']} "
        f"{checks['without_keys_lines']}",
    ]
    if "baked" in report:
        baked = report["baked"]
        lines.append(
            f"container_check: baked models ({DOC_BUILD_BAKED!r}): built {baked['build_seconds']} s, "
            f"{baked['size_mb']} MB, healthy after {baked['seconds_to_first_healthy']} s, parity on "
            f"{baked['images']} images max |diff| {baked['max_abs_diff']:.2e}, "
            f"stop {baked['stop_seconds']:.1f} s (exit {baked['exit_code']})"
        )
    lines.append("container_check: OK" if not report["misses"] else f"container_check: MISSED {report['misses']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
