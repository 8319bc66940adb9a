"""The classify section of params.yaml: defaults load, bad values fail naming the key."""

import pytest

from medgen.errors import ConfigError
from medgen.params import load_config
from tests.conftest import ROOT


def test_defaults_and_smoke_profile_load():
    full = load_config(ROOT / "params.yaml", profile="full").classify
    smoke = load_config(ROOT / "params.yaml", profile="smoke").classify
    assert full.cv_folds * full.seeds >= 5 and full.stem in ("standard", "pool", "cifar")  # members of the product
    assert full.n_trials >= len(full.recipes)  # every named recipe is a candidate
    assert smoke.search_epochs < full.search_epochs and smoke.n_trials < full.n_trials
    assert (smoke.augment, smoke.dropout) == (full.augment, full.dropout)  # same code path
    # ResNet-18's stems differ in two layers (conv1, the max-pool); smoke takes the cheapest, a quarter of pool's work
    assert (full.stem, smoke.stem) == ("pool", "standard")
    assert smoke.recipes == full.recipes  # the same candidates, fewer of them scored


@pytest.mark.parametrize(
    "override, key",
    [
        ("classify.stem=big", "classify.stem"),
        ("classify.init=zeros", "classify.init"),
        ("classify.pretrained=vgg", "classify.pretrained"),
        ("classify.dropout=1.0", "classify.dropout"),
        ("classify.train_fraction=0", "classify.train_fraction"),
        ("classify.aug_rotation=-5", "classify.aug_rotation"),
        ("classify.lr_range=[0.1]", "classify.lr_range"),
        ("classify.freeze_epochs=30", "classify.freeze_epochs"),
        ("classify.augment=maybe", "classify.augment"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ROOT / "params.yaml", profile="full", overrides=[override])
