"""A stage's outputs as one transaction: every file it writes is staged, then all are swapped in together.

The stage runner (medgen.runner) opens a `Transaction` over the outputs a stage declares. While it is
open, every medgen writer (medgen.io.write_file and everything built on it) writes into a staging folder
`.medgen-staging-<id>/` beside the final file, on the same filesystem, so the swap is a rename. Nothing a
reader can see changes until `commit`, which renames every staged file into place and applies staged
deletions; a failure before that (exception, Ctrl-C, kill -9) leaves the previous complete set untouched.

A journal `<state_dir>/journal/<stage>.json` makes the swap itself crash-safe: it lists the staging
folders while the stage runs, and every rename before the first one happens. `recover` on the next
start rolls a half-done swap forward (the staged files are complete by then) and discards the staging
folders of a run that died before its swap. Readers inside the stage use `readable(path)` to see what
the stage itself staged (e.g. export reads back the ONNX file it wrote; MLflow logs staged figures).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import os
import shutil
import signal
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medgen.errors import MedgenError
from medgen.owner import describe, owner_alive, owner_id

log = logging.getLogger(__name__)
STAGING_PREFIX = ".medgen-staging-"  # git- and dvc-ignored (.gitignore, .dvcignore)
_FS_IOC_GETFLAGS = 0x80086601
_IMMUTABLE_OR_APPEND = 0x10 | 0x20  # chattr +i / +a: even root cannot replace the file
_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("medgen_outputs", default=None)


class OutputError(MedgenError):
    """An output location cannot be written (read-only, full, a file in the way, immutable)."""


@dataclass(frozen=True)
class Output:
    """One declared output: a file, or a folder whose files the stage writes (e.g. plots_dir)."""

    path: Path
    folder: bool = False


def output_file(path: str | Path) -> Output:
    """A declared output that is one file."""
    return Output(_abs(path), folder=False)


def output_folder(path: str | Path) -> Output:
    """A declared output that is a folder: the files the stage writes in it."""
    return Output(_abs(path), folder=True)


def _abs(path: str | Path) -> Path:
    return Path(os.path.abspath(path))  # absolute without resolving symlinks: the path the user named


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_durably(path: Path, obj: dict) -> None:
    """Journal write: temporary file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def is_immutable(path: Path) -> bool:
    """True for a file with the immutable or append-only attribute (unsupported filesystems: False)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        return bool(flags & _IMMUTABLE_OR_APPEND)
    except OSError:
        return False
    finally:
        os.close(fd)


def _blocking_path(path: Path) -> Path | None:
    """The first existing ancestor of `path` (or path itself) that is not a folder, if any."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
        if not candidate.exists():
            return None
    return None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while files are renamed: they are delivered (and handled) right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Transaction:
    """The outputs of one stage run; see the module docstring. Use `open_transaction`."""

    def __init__(self, stage: str, declared: Sequence[Output], state_dir: str | Path) -> None:
        self.stage = stage
        self.id = f"{stage}-{os.getpid()}-{time.time_ns() // 1_000_000}"
        self.declared = list(declared)
        self.journal = _abs(state_dir) / "journal" / f"{stage}.json"
        self.staged: dict[Path, Path] = {}  # final path -> staged file
        self.removed: set[Path] = set()
        self.dirs: dict[Path, Path] = {}  # final folder -> its staging folder
        self.created: list[Path] = []  # output folders this transaction created (removed again on abort)
        self.owner = owner_id()

    # ---------------------------------------------------------------- checks and staging
    def check(self) -> None:
        """Every declared output location writable, before any work: creates the staging folders."""
        for out in self.declared:
            target = out.path if out.folder else out.path.parent
            blocker = _blocking_path(target)
            if blocker is not None:
                raise OutputError(f"cannot write {out.path}: {blocker} is a file, not a folder")
            if not out.folder and out.path.is_dir():
                raise OutputError(f"cannot write {out.path}: a folder is in the way")
            self._staging_dir(target, out.path)
            existing = [p for p in target.iterdir() if p.is_file()] if out.folder else [out.path]
            stuck = next((p for p in existing if p.exists() and is_immutable(p)), None)
            if stuck is not None:
                raise OutputError(f"cannot replace {stuck}: the file is immutable or append-only (lsattr)")

    def _declared_for(self, path: Path) -> Output:
        for out in self.declared:
            if path == out.path or (out.folder and out.path in path.parents):
                return out
        known = ", ".join(str(o.path) for o in self.declared)
        raise OutputError(
            f"stage {self.stage} wrote {path}, which it does not declare as an output (declared: {known})"
        )

    def _staging_dir(self, folder: Path, for_path: Path) -> Path:
        if folder in self.dirs:
            return self.dirs[folder]
        staging = folder / f"{STAGING_PREFIX}{self.id}"
        missing = [p for p in [*reversed(folder.parents), folder] if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.created.extend(missing)
            staging.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write {for_path}: {folder} is not writable ({_why(exc)})") from None
        self.dirs[folder] = staging
        self._save_journal("staging")
        return staging

    def stage_file(self, path: str | Path) -> Path:
        """Where to write the new content of output `path` (a file in a staging folder)."""
        final = _abs(path)
        if final in self.staged:
            return self.staged[final]
        self._declared_for(final)
        staged = self._staging_dir(final.parent, final) / final.name
        self.staged[final] = staged
        self.removed.discard(final)
        return staged

    def remove(self, path: str | Path) -> None:
        """Delete output `path` when the transaction commits (e.g. figures of an earlier, longer run)."""
        final = _abs(path)
        self._declared_for(final)
        staged = self.staged.pop(final, None)
        if staged is not None:
            staged.unlink(missing_ok=True)
        if final.exists():
            self.removed.add(final)

    def readable(self, path: str | Path) -> Path:
        """The staged file for an output written in this transaction, else `path` itself."""
        return self.staged.get(_abs(path), Path(path))

    def listing(self, folder: str | Path, pattern: str) -> list[Path]:
        """Final paths in `folder` matching `pattern` as they will be after commit."""
        folder = _abs(folder)
        now = {p for p in folder.glob(pattern) if p.is_file()} - self.removed
        return sorted(now | {p for p in self.staged if p.parent == folder and p.match(pattern)})

    # ---------------------------------------------------------------- end
    def _save_journal(self, state: str) -> None:
        _write_json_durably(
            self.journal,
            {
                "stage": self.stage,
                "id": self.id,
                "owner": self.owner,
                "state": state,
                "dirs": [str(d) for d in self.dirs.values()],
                "moves": [[str(s), str(f)] for f, s in self.staged.items()],
                "removes": [str(p) for p in sorted(self.removed)],
            },
        )

    def commit(self) -> int:
        """Swap every staged file in and apply deletions; returns the number of files changed."""
        with _signals_deferred():
            self._save_journal("commit")  # from here on, a crash is rolled forward
            changed = _apply(self.journal_state())
            self.journal.unlink(missing_ok=True)
        return changed

    def journal_state(self) -> dict:
        return json.loads(self.journal.read_text())

    def abort(self) -> None:
        """Drop every staged file; the previous outputs stay as they were."""
        for staging in self.dirs.values():
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(self.created):  # deepest first; a folder someone else filled stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.journal.unlink(missing_ok=True)


def _apply(journal: dict) -> int:
    """Renames and deletions of a committing journal; safe to repeat (a rename already done is skipped)."""
    changed, touched = 0, set()
    for staged, final in journal["moves"]:
        if os.path.exists(staged):
            os.replace(staged, final)
            changed += 1
            touched.add(Path(final).parent)
    for final in journal["removes"]:
        if os.path.exists(final):
            os.unlink(final)
            changed += 1
            touched.add(Path(final).parent)
    for staging in journal["dirs"]:
        shutil.rmtree(staging, ignore_errors=True)
    for folder in touched:
        _fsync_dir(folder)
    return changed


def current() -> Transaction | None:
    """The transaction of the stage running in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def open_transaction(stage: str, declared: Sequence[Output], state_dir: str | Path) -> Iterator[Transaction]:
    """Check the outputs, stage every write of the block, commit on success, discard on any exit else."""
    tx = Transaction(stage, declared, state_dir)
    token = _current.set(tx)
    try:
        tx.check()
        yield tx
    except BaseException:
        tx.abort()
        raise
    finally:
        _current.reset(token)
    try:
        changed = tx.commit()
    except OSError as exc:  # the journal stays: the next run of the stage completes the swap
        raise OutputError(
            f"stage {stage}: swapping its outputs in failed ({exc}); the next run of {stage} completes the swap"
        ) from None
    log.info("%s: %d output file(s) replaced as one set", stage, changed)


def recover(state_dir: str | Path, stage: str) -> str | None:
    """Finish or discard the output swap of a dead run of `stage`; returns what was done (for the log).

    Call it while holding the stage's lock. A journal whose owner is alive is left alone.
    """
    journal_path = _abs(state_dir) / "journal" / f"{stage}.json"
    try:
        journal = json.loads(journal_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # a journal is written by rename, so this is not ours to guess about
        raise MedgenError(f"{journal_path}: unreadable output journal; inspect and delete it") from None
    owner = journal.get("owner", "")
    if owner_alive(owner):
        return None
    who = describe(owner)
    if journal.get("state") == "commit":
        changed = _apply(journal)
        done = f"stage {stage}: finished swapping in the outputs of a run killed mid-swap ({who}; {changed} file(s))"
    else:
        for staging in journal.get("dirs", []):
            shutil.rmtree(staging, ignore_errors=True)
        done = (
            f"stage {stage}: discarded the staged outputs of a run that did not finish ({who}); previous outputs kept"
        )
    journal_path.unlink(missing_ok=True)
    return done


def pending(state_dir: str | Path) -> list[str]:
    """Stages with an output journal on disk (running now, or killed and not yet recovered)."""
    folder = _abs(state_dir) / "journal"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
