"""Fit loops of the generate stage: the conditional GAN (with its stabilisers) and the metric feature net.

Stabilisers, each a GenerateConfig parameter, and why they are here: BreastMNIST has 546 training
images, where a DCGAN's discriminator memorises the set within a few dozen epochs and G collapses.
* one-sided label smoothing (real target 1 - s; Salimans et al., 2016) keeps D from over-confidence;
* label-flip noise (report 002): with probability p a sample's real/fake target is swapped;
* DiffAugment (Zhao et al., 2020): the same differentiable augmentation on real and fake before D;
* spectral norm on D's layers (Miyato et al., 2018) bounds D's Lipschitz constant;
* an EMA copy of G (Karras et al., 2018) is what we sample and checkpoint: smoother than the last G.
Label smoothing and flips apply to the BCE variants (cdcgan, acgan); wgan-gp has no targets to smooth.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medgen.config import GenerateConfig
from medgen.models.features import FeatureNet, rotate_batch
from medgen.models.gan import Discriminator, Generator, diff_augment
from medgen.progress import Progress


@dataclass(frozen=True)
class GanHyper:
    """What the search chooses: the variant and the optimiser settings."""

    variant: str
    lr_g: float
    lr_d: float
    beta1: float

    @classmethod
    def defaults(cls, cfg: GenerateConfig) -> GanHyper:
        return cls(cfg.variant, cfg.lr_g, cfg.lr_d, cfg.beta1)


GREY_28 = (1, 28, 28)  # default image shape (C, S, S): BreastMNIST's


def generator_kwargs(cfg: GenerateConfig, n_classes: int,
                     image_shape: tuple[int, int, int] = GREY_28) -> dict[str, Any]:
    """Constructor kwargs of the Generator for images (C, S, S) (plain data: stored in the checkpoint by save_model)."""
    channels, size, _ = image_shape
    return {"latent_dim": cfg.latent_dim, "n_classes": n_classes, "channels": cfg.g_channels,
            "embed_dim": cfg.embed_dim, "image_size": size, "image_channels": channels}


class GanTrainer:
    """One conditional GAN being trained on images (C, S, S): G, D, the EMA generator and their optimisers."""

    def __init__(self, cfg: GenerateConfig, hyper: GanHyper, n_classes: int, device: torch.device,
                 image_shape: tuple[int, int, int] = GREY_28):
        self.cfg, self.hyper, self.n_classes, self.device = cfg, hyper, n_classes, device
        self.g = Generator(**generator_kwargs(cfg, n_classes, image_shape)).to(device)
        self.d = Discriminator(hyper.variant, n_classes, cfg.d_channels, cfg.spectral_norm,
                               image_size=image_shape[1], image_channels=image_shape[0]).to(device)
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        betas = (hyper.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=hyper.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=hyper.lr_d, betas=betas)
        self.g_steps = 0

    @property
    def wasserstein(self) -> bool:
        return self.hyper.variant == "wgan-gp"

    def train_epoch(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One pass over (N, C, S, S) images in [-1, 1] and (N,) labels; mean G and D losses."""
        self.g.train(), self.d.train()
        order = torch.randperm(len(images), device=self.device)
        losses_d, losses_g = [], []
        for i, start in enumerate(range(0, len(images), self.cfg.batch_size)):
            index = order[start : start + self.cfg.batch_size]
            if len(index) < 2:  # batch norm needs two samples
                continue
            real, y = images[index], labels[index]
            losses_d.append(self.d_step(real, y))
            if not self.wasserstein or (i + 1) % self.cfg.n_critic == 0:
                losses_g.append(self.g_step(y))
        return {"loss_d": float(np.mean(losses_d)), "loss_g": float(np.mean(losses_g)) if losses_g else math.nan}

    def _fake(self, y: torch.Tensor) -> torch.Tensor:
        z = torch.randn(len(y), self.cfg.latent_dim, device=self.device)
        return self.g(z, y)  # fakes reuse the real batch's labels: D cannot exploit a label-frequency gap

    def _d(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.d(diff_augment(x, self.cfg.diffaug), y)

    def d_step(self, real: torch.Tensor, y: torch.Tensor) -> float:
        fake = self._fake(y).detach()
        real_logit, real_cls = self._d(real, y)
        fake_logit, fake_cls = self._d(fake, y)
        if self.wasserstein:
            loss = fake_logit.mean() - real_logit.mean() + self.cfg.gp_weight * self._gradient_penalty(real, fake, y)
        else:
            real_t, fake_t = self._targets(len(y))
            loss = F.binary_cross_entropy_with_logits(real_logit, real_t) + F.binary_cross_entropy_with_logits(fake_logit, fake_t)
            if real_cls is not None:  # acgan: D also learns to name the class of reals and fakes
                loss = loss + F.cross_entropy(real_cls, y) + F.cross_entropy(fake_cls, y)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return float(loss.detach())

    def _targets(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """D's BCE targets: one-sided smoothing on reals, then label-flip noise on both."""
        real_t = torch.full((n,), 1.0 - self.cfg.label_smoothing, device=self.device)
        fake_t = torch.zeros(n, device=self.device)
        if self.cfg.label_flip > 0:
            flip = torch.rand(n, device=self.device) < self.cfg.label_flip
            real_t, fake_t = torch.where(flip, fake_t, real_t), torch.where(flip, real_t, fake_t)
        return real_t, fake_t

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(||grad_x D(x_hat)|| - 1)^2 on random interpolates of real and fake (Gulrajani et al., 2017)."""
        alpha = torch.rand(len(real), 1, 1, 1, device=self.device)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        logit, _ = self._d(x_hat, y)
        (grad,) = torch.autograd.grad(logit.sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def g_step(self, y: torch.Tensor) -> float:
        logit, cls = self._d(self._fake(y), y)
        if self.wasserstein:
            loss = -logit.mean()
        else:  # non-saturating loss (Goodfellow et al., 2014): G maximises log D(G(z))
            loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            if cls is not None:
                loss = loss + F.cross_entropy(cls, y)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.g_steps += 1
        self._update_ema()
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (as in TF's ExponentialMovingAverage num_updates): early on the EMA follows G closely
        decay = min(self.cfg.ema_decay, (1 + self.g_steps) / (10 + self.g_steps))
        for ema_p, p in zip(self.ema.parameters(), self.g.parameters(), strict=True):
            ema_p.lerp_(p, 1 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.g.buffers(), strict=True):
            ema_b.copy_(b)  # batch-norm running statistics follow the live G

    def sampler(self) -> nn.Module:
        """The generator to sample from: the EMA copy (or the live G, in eval mode, when EMA is off)."""
        return self.ema if self.cfg.ema_decay > 0 else self.g.eval()


def fit_feature_net(images: torch.Tensor, labels: torch.Tensor, n_classes: int, cfg: GenerateConfig,
                    device: torch.device) -> FeatureNet:
    """Train the metric feature net on real images (N, C, S, S) with joint (class, rotation) targets."""
    net = FeatureNet(n_classes, feature_dim=cfg.feature_dim, in_channels=images.shape[1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    images, labels = images.to(device), labels.to(device)
    with Progress(cfg.feature_epochs, "metric feature net", unit="epochs") as progress:
        for epoch in range(cfg.feature_epochs):
            net.train()
            order = torch.randperm(len(images), device=device)
            for start in range(0, len(images), 64):
                index = order[start : start + 64]
                x, t = rotate_batch(images[index], labels[index])
                loss = F.cross_entropy(net(x), t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            progress.update(epoch + 1, loss=float(loss.detach()))
    return net.eval()


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    """(N, C, S, S) in [-1, 1] -> penultimate features (N, feature_dim) as float64 numpy."""
    net.eval()
    device = next(net.parameters()).device
    parts = [net.features(images[i : i + batch].to(device)).cpu() for i in range(0, len(images), batch)]
    return torch.cat(parts).double().numpy()
