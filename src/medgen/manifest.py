"""The export manifest: <export.out_dir>/manifest.json lists every file of the export folder with its sha256 and size,
the code commit, a hash of the resolved parameters and the registered models.

Same inputs, same manifest (it is part of a DVC output): `code_commit` is the newest commit that changed the export
stage's code (CODE_PATHS: the code files dvc.yaml lists as export's deps), so committing results (dvc.lock, metrics)
or changing unrelated code does not change it; `registered` names each registered model with the sha256 of the
exported file, which its MLflow model version carries as tag `medgen.sha256`. The version *number* and alias depend
on the registry's history (not on code, data and params): the export run's tags and the log record them.

The service (serving/integrity.py, which reads this format without importing medgen) checks every file against it
before it reports ready and refuses to start on any difference. Written last by the export stage, after every other
file of the folder, atomically.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from medgen import __version__
from medgen.config import Config
from medgen.io import output_files, read_json, readable, write_json

MANIFEST_NAME = "manifest.json"
FORMAT = "medgen-export-manifest/1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# dvc.yaml's code deps of the export stage: the manifest may depend on nothing else (tests/unit/test_manifest.py)
CODE_PATHS = (
    "src/medgen/stages/export.py",
    "src/medgen/onnx_export.py",
    "src/medgen/manifest.py",
    "src/medgen/model_card.py",
)


def code_state() -> tuple[str, bool]:
    """(newest commit that changed CODE_PATHS, whether those files differ from it); ("unknown", False) outside git."""
    try:
        # git from PATH with fixed arguments: nothing from a user reaches the command line
        head = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", *CODE_PATHS], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown", False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False


def params_sha256(cfg: Config) -> str:
    """sha256 of the resolved configuration (params.yaml + profile + overrides), keys sorted."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def registered_models(files: list[Path]) -> dict[str, Any]:
    """{registry name: {"file", "sha256"}} from the folder's model metadata JSONs (`registry_name`, `file`,
    `sha256`); the MLflow version holding that file has tag medgen.sha256 = sha256."""
    found: dict[str, Any] = {}
    for path in files:
        if path.suffix != ".json":
            continue
        try:
            meta = read_json(readable(path))
        except (ValueError, UnicodeDecodeError):
            continue  # not a metadata JSON (e.g. a model card); it is still hashed
        if isinstance(meta, dict) and meta.get("registry_name") and meta.get("sha256"):
            found[str(meta["registry_name"])] = {"file": meta.get("file"), "sha256": meta["sha256"]}
    return found


def build(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """The manifest of the files now in `out_dir` (hidden and temporary files excluded)."""
    # output_files: inside a running stage the new files are still staged (medgen.outputs)
    files = [
        p
        for p in output_files(out_dir, "*")
        if p.name != MANIFEST_NAME and not p.name.startswith(".") and not p.name.endswith(".part")
    ]
    commit, dirty = code_state()
    return {
        "format": FORMAT,
        "files": {p.name: {"sha256": _sha256(readable(p)), "bytes": readable(p).stat().st_size} for p in files},
        "code_commit": commit,
        "code_dirty": dirty,
        "params_sha256": params_sha256(cfg),
        "registered": registered_models(files) if cfg.export.register else {},
        "medgen_version": __version__,
    }


def write(cfg: Config, out_dir: str | Path) -> Path:
    """Write <out_dir>/manifest.json for the files now in the folder; returns its path."""
    return write_json(Path(out_dir) / MANIFEST_NAME, build(cfg, out_dir))
