"""Every file medgen writes goes through `write_file`: an output is either the old file or the complete
new one, never half. Inside a stage (medgen.outputs transaction) the new file is staged and swapped in
with the stage's other outputs at its end; outside one it replaces the old file by an atomic rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from medgen import outputs
from medgen.outputs import OutputError

Writer = Callable[[BinaryIO], Any]


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())  # the bytes are on disk before a rename makes them the output


def write_file(path: str | Path, write: Writer) -> Path:
    """Write `path` with `write(handle)` (a binary file handle); returns `path`.

    Any OSError (read-only folder, full disk, a file in the way) becomes one OutputError line.
    """
    path = Path(path)
    tx = outputs.current()
    try:
        if tx is not None:
            with open(tx.stage_file(path), "wb") as handle:
                write(handle)
                _sync(handle)
            return path
        _replace_atomically(path, write)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    return path


def _replace_atomically(path: Path, write: Writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            _sync(handle)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are shared files, not secrets
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to path atomically (medgen.io.write_file: temporary file, then rename)."""
    return write_file(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text file (CSV, reports)."""
    return atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> Path:
    """Pretty, key-sorted JSON (stable diffs for `dvc metrics diff` and git)."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# an entry's size must be known to fit 32-bit zip fields before it is written; 1 GiB leaves room for the
# .npy header and deflate's worst-case growth below the 2 GiB limit
ZIP64_FROM = 1 << 30


def savez_compressed(file: str | Path, **arrays: Any) -> None:
    """np.savez_compressed with a fixed timestamp in every zip entry: numpy stamps each entry with the
    current time, so the same arrays gave a different file (and DVC hash, and Optuna study name) per run.

    Zip64 headers only for an array near the 2 GiB zip limit: Python 3.11.4 changed what force_zip64 writes,
    so forcing it always made the same arrays different bytes under 3.11.2 (Debian) and 3.11.7."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name, value in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            array = np.asanyarray(value)
            with archive.open(entry, "w", force_zip64=array.nbytes > ZIP64_FROM) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy src to dst through write_file (dst is the old file or the complete copy)."""
    import shutil

    def write(handle: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, handle, 1 << 20)

    return write_file(dst, write)


def remove_output(path: str | Path) -> None:
    """Delete an output file: at the stage's commit inside a stage, at once outside one."""
    tx = outputs.current()
    if tx is not None:
        tx.remove(path)
    else:
        Path(path).unlink(missing_ok=True)


def readable(path: str | Path) -> Path:
    """Where to read `path` now: the staged new file when this stage wrote it, else the path itself."""
    tx = outputs.current()
    return tx.readable(path) if tx is not None else Path(path)


def output_files(folder: str | Path, pattern: str) -> list[Path]:
    """Files in `folder` matching `pattern`, as they will be once the running stage commits."""
    tx = outputs.current()
    if tx is not None:
        return tx.listing(folder, pattern)
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file())


def read_json(path: str | Path) -> Any:
    """The JSON at path (the staged copy while the running stage's transaction holds it)."""
    return json.loads(readable(path).read_text())


__all__ = [
    "atomic_write_bytes",
    "copy_file",
    "output_files",
    "read_json",
    "readable",
    "remove_output",
    "write_file",
    "write_json",
    "write_text",
]


def write_csv(path: str | Path, header: list[str], rows: list) -> Path:
    """A CSV of `rows` under `header`, atomically; floats with 6 significant digits (DVC plot data)."""
    lines = [",".join(header)] + [",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) for row in rows]
    return write_text(path, "\n".join(lines) + "\n")
