"""The profiles in params.yaml load, and say what docs/shapes.md and docs/q1.md promise."""

import pytest

from medgen.params import load_config
from tests.conftest import ROOT


@pytest.mark.parametrize("profile, size", [("size64", 64), ("size128", 128), ("size224", 224)])
def test_size_profiles_fit_the_size_and_shrink_the_work(profile, size):
    full, cfg = load_config(ROOT / "params.yaml", profile="full"), load_config(ROOT / "params.yaml", profile=profile)
    assert cfg.data.size == size and cfg.classify.stem == "auto" and cfg.data.flag == full.data.flag

    def epochs(c):
        k = c.classify
        return k.n_trials * k.cv_folds * k.seeds * k.search_epochs  # every candidate's fold fits

    assert epochs(cfg) < epochs(full) and cfg.generate.epochs < full.generate.epochs
    assert cfg.represent.trials_neural * cfg.represent.epochs < full.represent.trials_neural * full.represent.epochs


def test_q1_profile_is_the_assignment_question():
    cfg = load_config(ROOT / "params.yaml", profile="q1")
    assert (cfg.data.flag, cfg.data.size) == ("cifar10", 32)
    assert set(cfg.represent.methods) == {"pca", "isomap", "ae_dense", "ae_conv", "vae_dense", "vae_conv"}
    assert cfg.represent.sampler == "random" and cfg.represent.epochs <= 10  # "no more than 10 epochs"
    assert (cfg.represent.grid_n, cfg.represent.grid_scale) == (10, 2.0)  # the assignment's np.linspace grid
    assert cfg.represent.isomap_subset == 5000  # 10% of CIFAR-10's training images, as the report


def test_gpu_profile_is_the_costlier_classify_recipe():
    full, gpu = load_config(ROOT / "params.yaml"), load_config(ROOT / "params.yaml", profile="gpu")
    assert gpu.classify.device == "cuda" and gpu.classify.jobs > 1  # fold fits share the GPU
    assert set(full.classify.recipes) < set(gpu.classify.recipes)  # every CPU candidate, and more
    assert gpu.classify.recipe("official").stem == "cifar" and not gpu.classify.recipe("official").augment
    assert gpu.classify.n_trials >= len(gpu.classify.recipes)  # every named recipe is scored
    members = [c.classify.cv_folds * c.classify.seeds for c in (full, gpu)]
    assert members[1] > members[0] and gpu.classify.search_epochs > full.classify.search_epochs
    assert len(gpu.classify.tta) > len(full.classify.tta)
