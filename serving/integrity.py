"""Proof of what is served: every file the service reads from the export folder must be listed in the
folder's manifest.json (written by `medgen stage export`, medgen.manifest) with the same sha256.

The service reads each file once, checks the bytes it read and builds its sessions from those very bytes,
so a file swapped after the check cannot be served either. Any missing file, unlisted file or hash
mismatch is an IntegrityError whose one-line message names the file; the service then refuses to start.
The format is medgen.manifest's (tests/serving checks the two agree); serving never imports medgen.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from serving.contract import ModelError

MANIFEST_NAME = "manifest.json"
FORMAT = "medgen-export-manifest/1"
REEXPORT = "re-run `medgen stage export`"


class IntegrityError(ModelError):
    """A served file is missing, unlisted or differs from the manifest."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an export folder; IntegrityError when it is missing or not a medgen manifest."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        what = "export folder not found" if not folder.is_dir() else "not found"
        raise IntegrityError(
            f"{path}: {what} (run `medgen stage export` first; the service serves only what an export wrote and listed)"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{path}: not valid JSON ({REEXPORT})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT:
        raise IntegrityError(f"{path}: not a {FORMAT} manifest ({REEXPORT})")
    return manifest


def verified_bytes(folder: Path, name: str, manifest: dict[str, Any]) -> bytes:
    """The bytes of <folder>/<name>, after checking them against the manifest's sha256 and size."""
    path = folder / name
    entry = manifest["files"].get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise IntegrityError(f"{path}: not listed in {MANIFEST_NAME} ({REEXPORT})")
    if not path.is_file():
        raise IntegrityError(f"{path}: missing (listed in {MANIFEST_NAME}; {REEXPORT})")
    data = path.read_bytes()
    digest = sha256(data)
    if digest != entry["sha256"] or ("bytes" in entry and entry["bytes"] != len(data)):
        raise IntegrityError(
            f"{path}: sha256 {digest[:12]}... differs from {MANIFEST_NAME} "
            f"({entry['sha256'][:12]}...): not the file export wrote ({REEXPORT})"
        )
    return data


def verify_all(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is present and intact (the service checks all, not only what it loads)."""
    for name in sorted(manifest["files"]):
        if Path(name).name != name:
            raise IntegrityError(f"{folder / MANIFEST_NAME}: lists {name!r}, a path outside the folder ({REEXPORT})")
        verified_bytes(folder, name, manifest)


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """What /metadata shows: hashes, code commit, params hash, registered versions."""
    keys = ("format", "code_commit", "code_dirty", "params_sha256", "registered", "medgen_version")
    return {
        **{k: manifest[k] for k in keys if k in manifest},
        "files": {n: e.get("sha256") for n, e in sorted(manifest["files"].items()) if isinstance(e, dict)},
    }
