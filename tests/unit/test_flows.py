"""flows/: which failures are retried, how overrides are built (no Prefect server needed)."""

import pytest

from flows.pipeline import is_transient, select, stage_overrides
from medgen.errors import ConfigError, DataError, MedgenError


@pytest.mark.parametrize("exc", [OSError("locked"), TimeoutError(), ConnectionError(), RuntimeError("CUDA hiccup")])
def test_transient_failures_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc", [ConfigError("k"), DataError("d"), MedgenError("m"), TypeError(), None, KeyboardInterrupt()]
)
def test_user_and_programming_errors_fail_fast(exc):
    assert not is_transient(exc)


def test_overrides_put_the_parent_run_last():
    assert stage_overrides("breastmnist", ["a.b=1"], "abc") == [
        "data.flag=breastmnist",
        "a.b=1",
        "tracking.parent_run_id=abc",
    ]
    assert stage_overrides(None, [], "") == []


def test_select_keeps_pipeline_order_and_rejects_unknown_names():
    assert select(None)[0] == "prepare"
    with pytest.raises(MedgenError, match="unknown stage"):
        select(["prepare", "nope"])


@pytest.mark.parametrize("study", ["represent", "generate"])
def test_study_flows_run_prepare_then_their_stage_once_it_exists(study):
    from flows.pipeline import study_stages
    from medgen import stages

    if study in stages.STAGES:
        assert study_stages(study) == ["prepare", study]
    else:  # not merged yet: the flow fails before any run, naming the known stages
        with pytest.raises(MedgenError, match=f"unknown stage '{study}'"):
            study_stages(study)


def test_only_searched_stages_fan_out():
    from medgen import stages

    assert stages.get_search("classify").__name__ == "search_only"
    with pytest.raises(MedgenError, match="no search to fan out"):
        stages.get_search("prepare")
    with pytest.raises(MedgenError, match="unknown stage"):
        stages.get_search("nope")


def test_deploy_registers_the_fanout_on_its_own_pool():
    from flows.deploy import COMPUTE, CONTROL

    assert COMPUTE["medgen-search"] == "flows/fanout.py:search_flow" and set(CONTROL) == {"medgen-fanout"}
    assert not set(COMPUTE) & set(CONTROL)  # the coordinator never holds a compute worker's slot
