"""represent's search space is checked when params load: empty, inverted or unknown fails naming the key."""

import re

import pytest

from medgen.errors import ConfigError
from medgen.params import build_config


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "represent.latent_dim_min=64",
            "represent.latent_dim_min: search space is empty: latent_dim_min=64 > latent_dim_max=8",
        ),
        ("represent.k_min=9", "represent.k_min: search space is empty: k_min=9 > k_max=3"),
        ("represent.lr_max=0.00001", "represent.lr_min: search space is empty: lr_min=0.0001 > lr_max=1e-05"),
        ("represent.methods=[]", "represent.methods: is empty"),
        ("represent.methods=[pca, umap]", "represent.methods: unknown method 'umap'"),
        ("represent.lr_min=0", "represent.lr_min: must be > 0"),
    ],
)
def test_bad_search_spaces_fail_naming_the_key(override, message):
    tree = {"represent": {"latent_dim_max": 8, "k_max": 3}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(tree, overrides=[override])


def test_defaults_search_the_issue_ranges():
    rc = build_config({}).represent
    assert (rc.latent_dim_min, rc.latent_dim_max, rc.k_min, rc.k_max) == (2, 128, 1, 100)
    assert rc.methods == ("pca", "isomap", "ae_dense", "ae_conv", "vae_dense", "vae_conv")
    assert rc.neural_methods == ("ae_dense", "ae_conv", "vae_dense", "vae_conv")
