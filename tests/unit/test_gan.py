"""Conditional GAN: shapes per variant, one-batch fits, stabilisers, DiffAugment."""

import dataclasses

import pytest
import torch

from medgen.config import GenerateConfig
from medgen.gan_training import GanHyper, GanTrainer, generator_kwargs
from medgen.models.gan import VARIANTS, Discriminator, Generator, diff_augment

SMALL = GenerateConfig(g_channels=8, d_channels=8, latent_dim=16, embed_dim=4, batch_size=8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_per_variant(variant):
    torch.manual_seed(0)
    g = Generator(latent_dim=16, n_classes=3, channels=8, embed_dim=4)
    d = Discriminator(variant, n_classes=3, channels=8, spectral_norm=True)
    labels = torch.tensor([0, 1, 2, 1, 0])
    images = g(torch.randn(5, 16), labels)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    logit, classes = d(images, labels)
    assert logit.shape == (5,)
    assert (classes.shape == (5, 3)) if variant == "acgan" else classes is None


def test_generator_rejects_bad_labels():
    g = Generator(latent_dim=16, n_classes=2, channels=8, embed_dim=4)
    with pytest.raises(ValueError, match="0..1"):
        g(torch.randn(2, 16), torch.tensor([0, 2]))


def test_dcgan_init_and_spectral_norm():
    g = Generator(channels=8)
    weight = g.net[0].weight.detach()
    assert abs(float(weight.std()) - 0.02) < 0.005 and abs(float(weight.mean())) < 0.005
    d = Discriminator("cdcgan", channels=8, spectral_norm=True)
    assert hasattr(d.features[0], "weight_orig")  # spectral norm reparametrises the conv
    assert not hasattr(Discriminator("cdcgan", channels=8).features[0], "weight_orig")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in Discriminator("wgan-gp", channels=8).modules())


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_batch_fit_per_variant(variant):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, diffaug=("brightness", "contrast", "translation", "cutout"), n_critic=1)
    trainer = GanTrainer(cfg, GanHyper(variant, 1e-3, 1e-3, 0.5), n_classes=2, device=torch.device("cpu"))
    images, labels = torch.rand(16, 1, 28, 28) * 2 - 1, torch.tensor([0, 1] * 8)
    before = [p.detach().clone() for p in trainer.g.parameters()]
    losses = [trainer.train_epoch(images, labels) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor([step["loss_d"], step["loss_g"]])).all() for step in losses)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.g.parameters()))
    # the EMA copy moved too, but lags behind the live generator
    ema_diff = [float((e - p).detach().abs().max()) for e, p in zip(trainer.ema.parameters(), trainer.g.parameters())]
    assert max(ema_diff) > 0


def test_label_smoothing_and_flip_targets():
    cfg = dataclasses.replace(SMALL, label_smoothing=0.1, label_flip=0.0)
    trainer = GanTrainer(cfg, GanHyper("cdcgan", 2e-4, 2e-4, 0.5), 2, torch.device("cpu"))
    real_t, fake_t = trainer._targets(1000)
    assert torch.allclose(real_t, torch.full((1000,), 0.9)) and torch.equal(fake_t, torch.zeros(1000))
    trainer.cfg = dataclasses.replace(cfg, label_flip=0.2)
    torch.manual_seed(0)
    real_t, fake_t = trainer._targets(10000)
    flipped = float((real_t == 0).float().mean())
    assert 0.17 < flipped < 0.23
    assert torch.equal(real_t == 0, fake_t > 0)  # a flipped sample swaps both targets


def test_diff_augment_keeps_shape_and_gradient():
    torch.manual_seed(0)
    x = (torch.rand(4, 1, 28, 28) * 2 - 1).requires_grad_(True)
    out = diff_augment(x, ("brightness", "contrast", "translation", "cutout"))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert torch.equal(diff_augment(x, ()), x)
    cut = diff_augment(torch.ones(8, 1, 28, 28), ("cutout",))
    share = (cut == 0).float().mean(dim=(1, 2, 3))
    assert bool(((share > 0.05) & (share <= 0.25)).all())  # a 14x14 hole, clipped at the border


def test_generator_kwargs_rebuild():
    kwargs = generator_kwargs(SMALL, 2)
    assert Generator(**kwargs)(torch.randn(3, 16), torch.tensor([0, 1, 1])).shape == (3, 1, 28, 28)
