"""The generate stage's models in the training loop: the conditional GAN (with its stabilisers) and the metric
feature net.

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
from medgen.training import Loop, Steps, fit, run_epoch


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


def generator_kwargs(
    cfg: GenerateConfig, n_classes: int, image_shape: tuple[int, int, int] = GREY_28
) -> dict[str, Any]:
    """Constructor kwargs of the Generator for images (C, S, S) (plain data: stored in the checkpoint by save_model)."""
    channels, size, _ = image_shape
    return {
        "latent_dim": cfg.latent_dim,
        "n_classes": n_classes,
        "channels": cfg.g_channels,
        "embed_dim": cfg.embed_dim,
        "image_size": size,
        "image_channels": channels,
    }


class GanTrainer:
    """One conditional GAN being trained on images (C, S, S): G, D, the EMA generator and their optimisers."""

    def __init__(
        self,
        cfg: GenerateConfig,
        hyper: GanHyper,
        n_classes: int,
        device: torch.device,
        image_shape: tuple[int, int, int] = GREY_28,
    ):
        self.cfg, self.hyper, self.n_classes, self.device = cfg, hyper, n_classes, device
        self.g = Generator(**generator_kwargs(cfg, n_classes, image_shape)).to(device)
        self.d = Discriminator(
            hyper.variant,
            n_classes,
            cfg.d_channels,
            cfg.spectral_norm,
            image_size=image_shape[1],
            image_channels=image_shape[0],
        ).to(device)
        self.ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        betas = (hyper.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=hyper.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=hyper.lr_d, betas=betas)
        self.g_steps = 0

    @property
    def wasserstein(self) -> bool:
        return self.hyper.variant == "wgan-gp"

    def steps(self, images: torch.Tensor, labels: torch.Tensor, prune_diverged: bool = False) -> GanSteps:
        """This GAN's part of the training loop over (N, C, S, S) images in [-1, 1] and (N,) labels."""
        return GanSteps(self, images, labels, prune_diverged)

    def train_epoch(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One pass over (N, C, S, S) images in [-1, 1] and (N,) labels; mean G and D losses."""
        return run_epoch(self.steps(images, labels), len(images), self.cfg.batch_size, device=self.device)

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
            loss = F.binary_cross_entropy_with_logits(real_logit, real_t) + F.binary_cross_entropy_with_logits(
                fake_logit, fake_t
            )
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


class GanSteps(Steps):
    """A GAN's part of the training loop: a D step on each batch, a G step (with the EMA update) after it, or
    after every n_critic-th D step for wgan-gp. Shuffled with torch's global RNG on the trainer's device."""

    def __init__(self, trainer: GanTrainer, images: torch.Tensor, labels: torch.Tensor, prune_diverged: bool) -> None:
        self.trainer, self.images, self.labels, self.prune_diverged = trainer, images, labels, prune_diverged

    def start_epoch(self, epoch: int) -> None:
        self.trainer.g.train(), self.trainer.d.train()

    def step(self, index: torch.Tensor, i: int) -> dict[str, float]:
        trainer = self.trainer
        real, y = self.images[index], self.labels[index]
        losses = {"loss_d": trainer.d_step(real, y)}
        if not trainer.wasserstein or (i + 1) % trainer.cfg.n_critic == 0:
            losses["loss_g"] = trainer.g_step(y)
        return losses

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, float]:
        losses_g = [s["loss_g"] for s in steps if "loss_g" in s]
        losses = {
            "loss_d": float(np.mean([s["loss_d"] for s in steps])),
            "loss_g": float(np.mean(losses_g)) if losses_g else math.nan,
        }
        if self.prune_diverged and not math.isfinite(losses["loss_d"]):
            import optuna

            raise optuna.TrialPruned()  # diverged: not a failure of the code, a bad region
        return losses


class FeatureNetSteps(Steps):
    """The metric feature net's part of the training loop: cross-entropy on joint (class, rotation) targets."""

    def __init__(self, net: FeatureNet, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.net, self.images, self.labels = net, images, labels
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def start_epoch(self, epoch: int) -> None:
        self.net.train()

    def step(self, index: torch.Tensor, i: int) -> dict[str, float]:
        x, t = rotate_batch(self.images[index], self.labels[index])
        loss = F.cross_entropy(self.net(x), t)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, float]:
        return {"loss": steps[-1]["loss"]}  # the last batch's loss: what the progress line shows


def fit_feature_net(
    images: torch.Tensor, labels: torch.Tensor, n_classes: int, cfg: GenerateConfig, device: torch.device
) -> FeatureNet:
    """Train the metric feature net on real images (N, C, S, S) with joint (class, rotation) targets."""
    net = FeatureNet(n_classes, feature_dim=cfg.feature_dim, in_channels=images.shape[1]).to(device)
    images, labels = images.to(device), labels.to(device)
    loop = Loop(
        cfg.feature_epochs, 64, "metric feature net", device=device, min_batch=1, log_mlflow=False, show=("loss",)
    )
    fit(FeatureNetSteps(net, images, labels), len(images), loop)
    return net.eval()


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch: int = 512) -> np.ndarray:
    """(N, C, S, S) in [-1, 1] -> penultimate features (N, feature_dim) as float64 numpy."""
    net.eval()
    device = next(net.parameters()).device
    parts = [net.features(images[i : i + batch].to(device)).cpu() for i in range(0, len(images), batch)]
    return torch.cat(parts).double().numpy()
