"""Checks that need a CUDA GPU: `make test-gpu` on a machine with one (skipped elsewhere; CI has none).

classify's fold fits on the GPU (the `gpu` profile's path): the same fit run twice, and the same folds fitted by
worker processes sharing the GPU, must give the same weights and held-out probabilities, bit for bit, as on CPU
(tests/unit/test_ensemble.py). The optimiser's fused AdamW step runs on CUDA here too."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from medgen import ensemble
from medgen.config import ClassifyConfig
from tests.unit.test_ensemble import _pool  # the CPU test's pool: 1/4 minority, a learnable half

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("one_thread"),
]


def _differences(a, b):
    """Largest |difference| of two fold-fit lists: (weights, held-out probabilities)."""
    weights = max(_largest_difference(x["state"], y["state"]) for x, y in zip(a, b))
    probs = max(float(np.abs(x["probs"] - y["probs"]).max()) for x, y in zip(a, b))
    return weights, probs


@pytest.mark.parametrize("stem", ["pool", "cifar"])
def test_cuda_fold_fits_repeat_and_parallel_workers_equal_the_serial_fits(stem):
    pool = _pool(240, 28)
    folds = ensemble.make_folds(pool.labels, 3, 1, seed=0)
    cfg = replace(ClassifyConfig(), stem=stem, batch_size=32, search_epochs=3, threads=1)
    first = ensemble.fit_folds(replace(cfg, jobs=1), pool, 2, folds, {}, "cuda")
    assert all(not any(v.is_cuda for v in f["state"].values()) for f in first)  # weights come back as CPU tensors
    assert not np.isnan(np.concatenate([f["probs"] for f in first])).any()
    again = ensemble.fit_folds(replace(cfg, jobs=1), pool, 2, folds, {}, "cuda")
    assert _differences(first, again) == (0.0, 0.0)
    parallel = ensemble.fit_folds(replace(cfg, jobs=3), pool, 2, folds, {}, "cuda")
    assert _differences(first, parallel) == (0.0, 0.0)


def _largest_difference(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _twice(make_and_train):
    """Two runs of `make_and_train(device)` from the same seed: their returned state dicts."""
    from medgen.training import set_seed

    states = []
    for _ in range(2):
        set_seed(0)
        states.append({k: v.detach().cpu().clone() for k, v in make_and_train("cuda").items()})
    return states


def test_gan_training_on_cuda_repeats_exactly():
    from medgen.config import GenerateConfig
    from medgen.gan_training import GanHyper, GanTrainer

    images = torch.rand(96, 1, 28, 28) * 2 - 1
    labels = torch.arange(96) % 2

    def train(device):
        cfg = GenerateConfig(g_channels=16, d_channels=16, batch_size=32)
        trainer = GanTrainer(cfg, GanHyper("acgan", 2e-4, 2e-4, 0.5), 2, torch.device(device))
        for _ in range(3):
            trainer.train_epoch(images.to(device), labels.to(device))
        return {**{f"g.{k}": v for k, v in trainer.ema.state_dict().items()}, **trainer.d.state_dict()}

    first, again = _twice(train)
    assert _largest_difference(first, again) == 0.0


def test_diffusion_training_on_cuda_repeats_exactly():
    pytest.importorskip("diffusers")
    from medgen.diffusion import DiffusionTrainer
    from medgen.models.diffusion import ClassConditionalUNet

    images = torch.rand(96, 1, 28, 28) * 2 - 1
    labels = torch.arange(96) % 2

    def train(device):
        trainer = DiffusionTrainer(ClassConditionalUNet(width=16).to(device), hflip=True)
        for _ in range(3):
            trainer.train_epoch(images.to(device), labels.to(device), 32)
        return trainer.ema.state_dict()

    first, again = _twice(train)
    assert _largest_difference(first, again) == 0.0
