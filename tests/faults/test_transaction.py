"""Stage outputs as one transaction (medgen.outputs): all new files or all old ones, also across kill -9."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medgen import io, outputs
from medgen.errors import MedgenError

from .conftest import default_sigint, snapshot


def _previous(tmp: Path) -> dict[str, str]:
    """A previous complete set: a model, a metrics file and a plots folder with two figures."""
    for name, text in (
        ("models/best.pt", "old model"),
        ("metrics/m.json", "old metrics"),
        ("plots/a.png", "old a"),
        ("plots/stale.png", "old stale"),
    ):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return snapshot(tmp / "models", tmp / "metrics", tmp / "plots")


def _declared(tmp: Path) -> list[outputs.Output]:
    return [
        outputs.output_file(tmp / "models/best.pt"),
        outputs.output_file(tmp / "metrics/m.json"),
        outputs.output_folder(tmp / "plots"),
    ]


def test_commit_replaces_the_whole_set_and_reads_see_staged_files(tmp_path):
    _previous(tmp_path)
    with outputs.open_transaction("demo", _declared(tmp_path), tmp_path / ".medgen"):
        io.atomic_write_bytes(tmp_path / "models/best.pt", b"new model")
        io.write_json(tmp_path / "metrics/m.json", {"auc": 0.5})
        io.write_text(tmp_path / "plots/a.png", "new a")
        io.remove_output(tmp_path / "plots/stale.png")
        # nothing visible changed yet; the stage itself reads its new files
        assert (tmp_path / "models/best.pt").read_text() == "old model"
        assert io.readable(tmp_path / "models/best.pt").read_bytes() == b"new model"
        assert io.read_json(tmp_path / "metrics/m.json") == {"auc": 0.5}
        assert io.output_files(tmp_path / "plots", "*.png") == [tmp_path / "plots/a.png"]
        assert (tmp_path / ".medgen/journal/demo.json").exists()
    assert (tmp_path / "models/best.pt").read_bytes() == b"new model"
    assert (tmp_path / "plots/a.png").read_text() == "new a"
    assert not (tmp_path / "plots/stale.png").exists()
    assert list(tmp_path.rglob(".medgen-staging-*")) == [] and not (tmp_path / ".medgen/journal/demo.json").exists()


def test_a_failure_at_any_point_leaves_the_previous_set_untouched(tmp_path):
    before = _previous(tmp_path)
    with pytest.raises(ValueError), outputs.open_transaction("demo", _declared(tmp_path), tmp_path / ".medgen"):
        io.atomic_write_bytes(tmp_path / "models/best.pt", b"new model")  # trained and saved ...
        io.remove_output(tmp_path / "plots/stale.png")
        raise ValueError("... then the metrics could not be computed")
    assert snapshot(tmp_path / "models", tmp_path / "metrics", tmp_path / "plots") == before
    assert list(tmp_path.rglob(".medgen-staging-*")) == []


def test_an_undeclared_write_is_refused(tmp_path):
    with (
        pytest.raises(MedgenError, match="does not declare"),
        outputs.open_transaction("demo", _declared(tmp_path), tmp_path / ".medgen"),
    ):
        io.write_text(tmp_path / "elsewhere.txt", "x")
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_file_in_place_of_an_output_folder_fails_before_the_stage_body(tmp_path):
    (tmp_path / "metrics").write_text("a file where the metrics folder should be")
    ran = []
    with (
        pytest.raises(outputs.OutputError, match=r"metrics is a file, not a folder"),
        outputs.open_transaction("demo", _declared(tmp_path), tmp_path / ".medgen"),
    ):
        ran.append(1)
    assert ran == [] and list(tmp_path.rglob(".medgen-staging-*")) == []


def test_a_full_disk_mid_stage_is_one_line_and_keeps_the_previous_set(tmp_path, monkeypatch):
    before = _previous(tmp_path)
    stage_file = outputs.Transaction.stage_file

    def full_at_metrics(self, path):
        if Path(path).name == "m.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return stage_file(self, path)

    monkeypatch.setattr(outputs.Transaction, "stage_file", full_at_metrics)
    with (
        pytest.raises(outputs.OutputError, match=r"cannot write .*m.json \(No space left on device\)$"),
        outputs.open_transaction("demo", _declared(tmp_path), tmp_path / ".medgen"),
    ):
        io.atomic_write_bytes(tmp_path / "models/best.pt", b"new model")
        io.write_json(tmp_path / "metrics/m.json", {})
    assert snapshot(tmp_path / "models", tmp_path / "metrics", tmp_path / "plots") == before


def test_immutable_file_is_refused_up_front(tmp_path):
    target = tmp_path / "metrics/m.json"
    target.parent.mkdir()
    target.write_text("old")
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported on this filesystem / without CAP_LINUX_IMMUTABLE")
    try:
        with (
            pytest.raises(outputs.OutputError, match="immutable"),
            outputs.open_transaction("demo", [outputs.output_file(target)], tmp_path / ".medgen"),
        ):
            pass
    finally:
        subprocess.run(["chattr", "-i", str(target)])
    assert target.read_text() == "old"


CRASHER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from medgen import io, outputs
    root, phase, pause = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    declared = [outputs.output_folder(root / "out")]
    real_replace = os.replace
    def slow_replace(src, dst):
        real_replace(src, dst)
        if Path(dst).parent == root / "out" and not (root / "renamed").exists():
            (root / "renamed").write_text("1")
            time.sleep(pause)  # the test kills or interrupts us here, after the first rename of the swap
    with outputs.open_transaction("demo", declared, root / ".medgen"):
        for i in range(5):
            io.write_text(root / "out" / f"f{i}.txt", "new")
        if phase == "staged":
            (root / "staged").write_text("1")
            time.sleep(30)  # killed here: every file staged, nothing swapped
        outputs.os.replace = slow_replace
    print("committed")
""")


def _crash(tmp_path: Path, phase: str, sig: int, pause: float = 60) -> subprocess.Popen:
    (tmp_path / "out").mkdir()
    for i in range(5):
        (tmp_path / "out" / f"f{i}.txt").write_text("old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(tmp_path), phase, str(pause)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    marker = tmp_path / ("staged" if phase == "staged" else "renamed")
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.02)
    child.send_signal(sig)
    child.out, child.err = child.communicate(timeout=60)
    return child


def _contents(tmp_path: Path) -> list[str]:
    return [(tmp_path / "out" / f"f{i}.txt").read_text() for i in range(5)]


def test_kill_9_before_the_swap_is_rolled_back_on_the_next_start(tmp_path):
    _crash(tmp_path, "staged", signal.SIGKILL)
    assert _contents(tmp_path) == ["old"] * 5  # a reader meanwhile sees the previous set
    assert len(list((tmp_path / "out").glob(".medgen-staging-*"))) == 1
    done = outputs.recover(tmp_path / ".medgen", "demo")
    assert "discarded the staged outputs" in done
    assert _contents(tmp_path) == ["old"] * 5 and list((tmp_path / "out").glob(".medgen-*")) == []


def test_kill_9_in_the_middle_of_the_swap_is_rolled_forward_on_the_next_start(tmp_path):
    _crash(tmp_path, "swap", signal.SIGKILL)
    assert sorted(_contents(tmp_path)).count("new") == 1  # killed after one of five renames
    done = outputs.recover(tmp_path / ".medgen", "demo")
    assert "finished swapping in" in done and "4 file(s)" in done
    assert _contents(tmp_path) == ["new"] * 5 and list((tmp_path / "out").glob(".medgen-*")) == []
    assert outputs.recover(tmp_path / ".medgen", "demo") is None  # journal gone: nothing left to do


def test_ctrl_c_during_the_swap_waits_for_the_swap_to_finish(tmp_path):
    child = _crash(tmp_path, "swap", signal.SIGINT, pause=2)
    # SIGINT arrived after the first of five renames; it was held until the swap was complete, then
    # surfaced as KeyboardInterrupt: the process exits non-zero, its outputs are the whole new set
    assert _contents(tmp_path) == ["new"] * 5
    assert child.returncode != 0 and "committed" not in child.out and "KeyboardInterrupt" in child.err
    assert list((tmp_path / "out").glob(".medgen-*")) == [] and not (tmp_path / ".medgen/journal/demo.json").exists()
