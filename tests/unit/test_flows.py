"""flows/: which failures are retried, how overrides are built (no Prefect server needed)."""

import pytest

from flows.pipeline import is_transient, select, stage_overrides
from medgen.errors import ConfigError, DataError, MedgenError


@pytest.mark.parametrize("exc", [OSError("locked"), TimeoutError(), ConnectionError(), RuntimeError("CUDA hiccup")])
def test_transient_failures_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [ConfigError("k"), DataError("d"), MedgenError("m"), TypeError(), None, KeyboardInterrupt()])
def test_user_and_programming_errors_fail_fast(exc):
    assert not is_transient(exc)


def test_overrides_put_the_parent_run_last():
    assert stage_overrides("breastmnist", ["a.b=1"], "abc") == ["data.flag=breastmnist", "a.b=1", "tracking.parent_run_id=abc"]
    assert stage_overrides(None, [], "") == []


def test_select_keeps_pipeline_order_and_rejects_unknown_names():
    assert select(None)[0] == "prepare"
    with pytest.raises(MedgenError, match="unknown stage"):
        select(["prepare", "nope"])
