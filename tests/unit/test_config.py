import dataclasses

import pytest

from medgen.errors import ConfigError
from medgen.params import build_config, load_config, parse_override
from tests.conftest import ROOT


def test_repository_params_load_with_defaults():
    cfg = load_config(ROOT / "params.yaml", profile="full")
    assert cfg.data.flag == "breastmnist"
    assert cfg.data.size == 28
    assert cfg.prepare.metrics == "metrics/prepare.json"


def test_config_is_frozen():
    cfg = build_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.flag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "tree, key",
    [
        ({"data": {"flga": "breastmnist"}}, "data.flga"),
        ({"nosuch": {}}, "nosuch"),
        ({"data": {"size": 30}}, "data.size"),
        ({"data": {"size": "28"}}, "data.size"),
        ({"prepare": {"montage_per_class": 0}}, "prepare.montage_per_class"),
        ({"seed": -1}, "seed"),
        ({"data": {"download": "yes"}}, "data.download"),
    ],
)
def test_bad_params_name_the_key(tree, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        build_config(tree)


def test_override_applies_and_parses_yaml_values():
    cfg = build_config({}, overrides=["data.size=64", "prepare.montage_per_class=9", "data.download=false", "seed=7"])
    assert (cfg.data.size, cfg.prepare.montage_per_class, cfg.data.download, cfg.seed) == (64, 9, False, 7)


@pytest.mark.parametrize("text", ["data.size", "=3", "a.b.c=1"])
def test_malformed_override_is_rejected(text):
    with pytest.raises(ConfigError):
        build_config({}, overrides=[text])


def test_override_of_unknown_key_fails():
    with pytest.raises(ConfigError, match="data.nope"):
        build_config({}, overrides=["data.nope=1"])


def test_parse_override_keeps_strings():
    assert parse_override("data.flag=pathmnist") == ("data.flag", "pathmnist")


def test_profile_applies_its_overrides_and_cli_wins():
    tree = {"profiles": {"smoke": {"prepare.montage_per_class": 4}}}
    assert build_config(tree, profile="smoke").prepare.montage_per_class == 4
    assert build_config(tree, profile="full").prepare.montage_per_class == 36
    cfg = build_config(tree, profile="smoke", overrides=["prepare.montage_per_class=9"])
    assert cfg.prepare.montage_per_class == 9 and cfg.profile == "smoke"


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("MEDGEN_PROFILE", "smoke")
    assert build_config({"profiles": {"smoke": {}}}).profile == "smoke"


def test_unknown_profile_fails():
    with pytest.raises(ConfigError, match="unknown profile 'tiny'"):
        build_config({"profiles": {"smoke": {}}}, profile="tiny")


def test_missing_and_invalid_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_exponent_without_dot_is_a_number_not_a_string():
    cfg = build_config({}, overrides=["export.parity_tolerance=1e-5"])
    assert cfg.export.parity_tolerance == 1e-5
    with pytest.raises(ConfigError, match="export.parity_tolerance"):
        build_config({}, overrides=["export.parity_tolerance=small"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("classify.dropout=1.5", "classify.dropout: must be in [0, 1), got 1.5"),
        ("prepare.montage_per_class=0", "prepare.montage_per_class: must be in 1..400, got 0"),
        ("tracking.optuna_heartbeat_s=0", "tracking.optuna_heartbeat_s: must be >= 1 (seconds), got 0"),
        ("export.parity_tolerance=0.5", "export.parity_tolerance: must be in (0, 0.01], got 0.5"),
        ("represent.sampler=grid", "represent.sampler: must be tpe or random, got 'grid'"),
        ("classify.stem=xx", "classify.stem: must be one of standard, pool, cifar, auto, got 'xx'"),
        ("represent.methods=[pca, pca]", "represent.methods: lists a method twice"),
        ("augment.arms=[baseline, classic, classic]", "augment.arms: lists an arm twice"),
        ("generate.variants=[x]", "generate.variants: unknown variant 'x' (known: cdcgan, acgan, wgan-gp)"),
        ("export.parity_batches=[0]", "export.parity_batches: batch sizes must be in 1..512, got [0]"),
        ("classify.lr_range=[-1, 0.01]", "classify.lr_range: bounds must be >= 0, got [-1.0, 0.01]"),
        ("data.flag=''", "data.flag: must be a plain name, got ''"),
        ("export.out_dir=''", "export.out_dir: must not be empty (a path)"),
    ],
)
def test_declared_rules_give_the_whole_message(override, message):
    # the rules are declared on the fields (medgen.config.rule); the message names key, rule and value
    with pytest.raises(ConfigError) as caught:
        build_config({}, overrides=[override])
    assert str(caught.value) == message


def test_every_declared_rule_holds_for_its_default_and_the_profiles():
    from medgen import config

    sections = [
        f.default_factory() for f in dataclasses.fields(config.Config) if f.default_factory is not dataclasses.MISSING
    ]
    ruled = [(s, f) for s in sections for f in dataclasses.fields(s) if "rule" in f.metadata]
    assert len(ruled) > 80  # the numeric and choice fields of every section carry a rule
    for profile in ("full", "smoke"):
        load_config(ROOT / "params.yaml", profile=profile)  # raises on any breach
