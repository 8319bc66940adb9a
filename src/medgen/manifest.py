"""The export manifest: <export.out_dir>/manifest.json lists every file of the export folder with its sha256
and size, the code commit, a hash of the resolved parameters and the registered model versions.

The service (serving/integrity.py, which reads this format without importing medgen) checks every file
against it before it reports ready and refuses to start on any difference. Written last by the export
stage, after every other file of the folder, atomically.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from medgen import __version__
from medgen.config import Config
from medgen.io import read_json, write_json

MANIFEST_NAME = "manifest.json"
FORMAT = "medgen-export-manifest/1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_state() -> tuple[str, bool]:
    """(git commit of the working directory, whether tracked files differ from it); ("unknown", False) outside git."""
    try:
        # git from PATH with fixed arguments: nothing from a user reaches the command line
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown", False
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False


def params_sha256(cfg: Config) -> str:
    """sha256 of the resolved configuration (params.yaml + profile + overrides), keys sorted."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def registered_versions(files: list[Path]) -> dict[str, Any]:
    """{registry name: {"version", "alias"}} from the `registered` entries of the folder's metadata JSONs."""
    found: dict[str, Any] = {}
    for path in files:
        if path.suffix != ".json":
            continue
        try:
            meta = read_json(path)
        except (ValueError, UnicodeDecodeError):
            continue  # not a metadata JSON (e.g. a model card); it is still hashed
        registered = meta.get("registered") if isinstance(meta, dict) else None
        if isinstance(registered, dict) and registered.get("name"):
            found[str(registered["name"])] = {k: registered[k] for k in ("version", "alias") if k in registered}
    return found


def build(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """The manifest of the files now in `out_dir` (hidden and temporary files excluded)."""
    folder = Path(out_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_NAME
                   and not p.name.startswith(".") and not p.name.endswith(".part"))
    commit, dirty = code_state()
    return {
        "format": FORMAT,
        "files": {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files},
        "code_commit": commit,
        "code_dirty": dirty,
        "params_sha256": params_sha256(cfg),
        "registered": registered_versions(files),
        "medgen_version": __version__,
    }


def write(cfg: Config, out_dir: str | Path) -> Path:
    """Write <out_dir>/manifest.json for the files now in the folder; returns its path."""
    return write_json(Path(out_dir) / MANIFEST_NAME, build(cfg, out_dir))
