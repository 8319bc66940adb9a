"""The champion rule (medgen.registry.decide): only forward, only default-profile, only on validation."""

import math

import pytest

from medgen import registry
from medgen.params import build_config
from medgen.registry import Standing, decide


def full(value, metric="val_auc", mode="max", flag="breastmnist"):
    return Standing("full", flag, metric, mode, value)


def test_no_champion_yet_a_default_profile_model_becomes_champion():
    assert decide(full(0.8), "full", None) == (True, "no champion yet (val_auc 0.8000)")


@pytest.mark.parametrize("trained, exported", [("smoke", "smoke"), ("smoke", "full"), ("full", "smoke")])
def test_a_smoke_model_or_smoke_export_never_becomes_champion(trained, exported):
    promoted, reason = decide(Standing(trained, "breastmnist", "val_auc", "max", 0.99), exported, ("1", full(0.5)))
    assert not promoted and "profile" in reason
    assert not decide(Standing(trained, "breastmnist", "val_auc", "max", 0.99), exported, None)[0]


def test_at_least_as_good_on_validation_moves_it_worse_does_not():
    assert decide(full(0.90), "full", ("3", full(0.90)))[0]  # a tie is "at least as good"
    assert decide(full(0.91), "full", ("3", full(0.90)))[0]
    promoted, reason = decide(full(0.89), "full", ("3", full(0.90)))
    assert not promoted and reason == "val_auc 0.8900 < champion v3's 0.9000 (not at least as good)"


def test_lower_is_better_for_the_generator():
    fd = lambda v: full(v, "val_fd", "min")  # noqa: E731
    assert decide(fd(0.30), "full", ("1", fd(0.35)))[0]
    assert not decide(fd(0.40), "full", ("1", fd(0.35)))[0]


def test_other_flag_missing_metric_or_unknown_champion_keep_the_champion():
    assert "is for 'breastmnist'" in decide(full(0.99, flag="pneumoniamnist"), "full", ("1", full(0.5)))[1]
    assert not decide(full(None), "full", None)[0]
    promoted, reason = decide(full(0.99), "full", ("2", None))  # registered before standings were tagged
    assert not promoted and "medgen promote" in reason


def test_standing_round_trips_through_version_tags_and_reads_checkpoints():
    standing = full(0.875)
    assert Standing.from_tags(standing.tags()) == standing
    assert Standing.from_tags({}) is None
    cfg = build_config({}, profile=None)
    checkpoint = {"config": {"profile": "smoke"}, "metrics": {"val_auc": 0.7, "test_auc": 0.99}}
    read = registry.standing("classifier", checkpoint, cfg)
    assert (read.profile, read.metric, read.value) == ("smoke", "val_auc", 0.7)  # never the test metric
    legacy = registry.standing("generator", {"config": {}, "metrics": {"val_fd": math.nan}}, cfg)
    assert (legacy.profile, legacy.flag, legacy.value) == ("full", "breastmnist", None)  # export run's profile
