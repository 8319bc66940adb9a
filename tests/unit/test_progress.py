"""medgen.progress off a terminal: the first and last steps are logged, a rate-limited step held back is
printed when the level ends early (early stopping, a pruned trial), and nested levels show in a heartbeat."""

import logging

import pytest

from medgen import progress


@pytest.fixture
def log_mode(monkeypatch, caplog):
    monkeypatch.setenv("MEDGEN_PROGRESS", "log")
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 3600.0)  # only the forced lines appear
    caplog.set_level(logging.INFO, logger="medgen.progress")
    return caplog


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "medgen.progress"]


def test_first_and_last_steps_are_logged_with_their_facts(log_mode):
    with progress.Progress(4, "fit seed 7", unit="epochs") as p:
        for epoch in range(1, 5):
            p.update(epoch, val_auc=0.5 + epoch / 10, best=None)
    found = lines(log_mode)
    assert len(found) == 2
    assert found[0].startswith("fit seed 7: 1/4 epochs val_auc 0.6 (")
    assert found[1].startswith("fit seed 7: 4/4 epochs val_auc 0.9 (")


def test_an_early_end_prints_the_last_state(log_mode):
    with progress.Progress(30, "fit seed 1", unit="epochs") as p:
        for epoch in range(1, 9):
            p.update(epoch, stopped="early" if epoch == 8 else None)
    found = lines(log_mode)
    assert found[-1].startswith("fit seed 1: 8/30 epochs stopped early (")
    assert len(found) == 2


def test_heartbeat_shows_every_open_level_after_silence(log_mode, monkeypatch):
    outer = progress.Progress(3, "classify seeds", unit="seeds")
    with outer, progress.Progress(12, "fit seed 42", unit="epochs") as inner:
        inner.update(5, val_auc=0.8)
        progress.beat()  # just printed: nothing to add
        assert not any(line.startswith("still working") for line in lines(log_mode))
        monkeypatch.setattr(progress, "_last_line", [progress.time.monotonic() - progress.HEARTBEAT_S - 1])
        progress.beat()
    beats = [line for line in lines(log_mode) if line.startswith("still working: ")]
    assert len(beats) == 1
    assert beats[0].startswith("still working: classify seeds: 0/3 seeds")
    assert "> fit seed 42: 5/12 epochs val_auc 0.8" in beats[0]
