"""Denoising diffusion with diffusers' schedulers: the training loss, a trainer with EMA, and a DDIM sampler.

* Training (Ho et al., 2020): x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps at a uniform t; the denoiser
  regresses eps (or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0, Salimans & Ho, 2022) with an MSE loss.
  The label is replaced by the null class with probability `label_dropout`, so one network learns the
  conditional and the unconditional model (classifier-free guidance, Ho & Salimans, 2022).
* Sampling: DDIM (Song et al., 2021) with eta = 0 - deterministic given the starting noise, so the numpy
  loop of the service (serving/ddim.py) can be checked step by step against this one. Timesteps are
  spaced "trailing" (the first step starts at t = T-1, i.e. from pure noise; Lin et al., 2024 showed
  that "leading" spacing never does). Guidance: pred = uncond + g * (cond - uncond); g = 1 is the plain
  conditional model and costs one network pass per step instead of two.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medgen.models.diffusion import ClassConditionalUNet
from medgen.training import Steps, run_epoch

DEFAULT_STEPS = 20  # DDIM sampler steps: the study's setting (a 2-core stage samples thousands of images)
DEFAULT_GUIDANCE = 1.0  # classifier-free guidance scale (1 = conditional model alone)
TIMESTEP_SPACING = "trailing"


def noise_scheduler(model: ClassConditionalUNet):
    """diffusers' DDPMScheduler with the model's schedule: the forward process of training."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=model.train_timesteps, beta_schedule=model.beta_schedule, prediction_type=model.prediction
    )


def ddim_scheduler(model: ClassConditionalUNet, steps: int):
    """diffusers' DDIMScheduler (eta = 0 at step time) over `steps` trailing timesteps, x_0 clipped to [-1, 1]."""
    from diffusers import DDIMScheduler

    if not 1 <= steps <= model.train_timesteps:
        raise ValueError(f"sampler steps must be in 1..{model.train_timesteps}, got {steps}")
    scheduler = DDIMScheduler(
        num_train_timesteps=model.train_timesteps,
        beta_schedule=model.beta_schedule,
        prediction_type=model.prediction,
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing=TIMESTEP_SPACING,
    )
    scheduler.set_timesteps(steps)
    return scheduler


def diffusion_loss(
    model: ClassConditionalUNet, scheduler, x0: torch.Tensor, labels: torch.Tensor, label_dropout: float
) -> torch.Tensor:
    """MSE of the denoiser's prediction on one batch x0 (N, C, H, W) in [-1, 1], labels (N,) int64.

    t ~ U{0..T-1}, eps ~ N(0, I) and the label drop come from torch's global RNG (seeded by set_seed).
    """
    n = len(x0)
    noise = torch.randn_like(x0)
    t = torch.randint(0, model.train_timesteps, (n,), device=x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    drop = torch.rand(n, device=x0.device) < label_dropout
    y = torch.where(drop, torch.full_like(labels, model.null_label), labels)
    target = noise if model.prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
    return F.mse_loss(model(x_t, t, y), target)


def guided_prediction(
    model: ClassConditionalUNet, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guided prediction at one step: x (N, C, H, W), t scalar, labels (N,) -> (N, C, H, W)."""
    n = len(x)
    if guidance == 1.0:
        return model(x, t.expand(n), labels)
    both = model(torch.cat([x, x]), t.expand(2 * n), torch.cat([labels, torch.full_like(labels, model.null_label)]))
    cond, uncond = both[:n], both[n:]
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def ddim_sample(
    model: ClassConditionalUNet,
    labels: torch.Tensor,
    noise: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    trace: list | None = None,
) -> torch.Tensor:
    """DDIM from `noise` (N, C, H, W) for `labels` (N,) -> images (N, C, H, W) in [-1, 1].

    Deterministic (eta = 0): the same noise gives the same images. When `trace` is a list, each step's
    (t, prediction, x_prev) is appended to it (float32 numpy) for step-by-step parity checks.
    """
    scheduler = ddim_scheduler(model, steps)
    was_training = model.training
    model.eval()
    x = noise
    for t in scheduler.timesteps:
        t = t.to(x.device)
        pred = guided_prediction(model, x, t, labels, guidance)
        x = scheduler.step(pred, t, x, eta=0.0).prev_sample
        if trace is not None:
            trace.append((int(t), pred.cpu().numpy(), x.cpu().numpy()))
    model.train(was_training)
    return x.clamp(-1.0, 1.0)


@dataclass
class DiffusionSampler:
    """The sampler interface of medgen.synthetic (`n_classes`, `max_batch`, `draw(labels, rng)`) for a denoiser."""

    model: ClassConditionalUNet
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    max_batch: int = 256  # images per DDIM run (x2 network batch with guidance): bounds the activations' memory

    @property
    def n_classes(self) -> int:
        return self.model.n_classes

    def draw(self, labels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """labels (N,) int64 -> images (N, C, H, W) in [-1, 1]; the starting noise comes from `rng` (CPU)."""
        m = self.model
        noise = torch.randn(len(labels), m.channels, m.image_size, m.image_size, generator=rng)
        device = next(m.parameters()).device
        return ddim_sample(m, labels.to(device), noise.to(device), self.steps, self.guidance)


class DiffusionTrainer:
    """A denoiser being trained: AdamW, an EMA copy (what is sampled and saved), the DDPM forward process."""

    def __init__(
        self,
        model: ClassConditionalUNet,
        lr: float = 2e-4,
        ema_decay: float = 0.999,
        label_dropout: float = 0.1,
        hflip: bool = False,
        weight_decay: float = 0.0,
        total_steps: int = 0,
        lr_final: float | None = None,
    ) -> None:
        """total_steps > 0 with lr_final: the lr follows a cosine from lr down to lr_final over total_steps
        (then stays there); otherwise it stays at lr (a constant lr plateaued early: docs/diffusion.md)."""
        self.model, self.ema_decay, self.label_dropout, self.hflip = model, ema_decay, label_dropout, hflip
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.noise = noise_scheduler(model)
        self.done_steps = 0  # optimiser steps taken (lr schedule, EMA warm-up)
        self.lr, self.lr_final, self.total_steps = lr, lr if lr_final is None else lr_final, total_steps

    def current_lr(self) -> float:
        """The lr of the next step (cosine decay, see __init__)."""
        if self.total_steps <= 0:
            return self.lr
        done = min(self.done_steps / self.total_steps, 1.0)
        return self.lr_final + (self.lr - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * done))

    def train_step(self, x0: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on x0 (N, C, H, W) in [-1, 1], labels (N,); returns the batch loss."""
        self.model.train()
        if self.hflip:  # a mirrored ultrasound image is still a plausible image of its class
            flip = torch.rand(len(x0), device=x0.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        loss = diffusion_loss(self.model, self.noise, x0, labels, self.label_dropout)
        for group in self.opt.param_groups:
            group["lr"] = self.current_lr()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.done_steps += 1
        self._update_ema()
        return float(loss.detach())

    def steps(self, images: torch.Tensor, labels: torch.Tensor) -> DiffusionSteps:
        """This denoiser's part of medgen.training's loop over images (N, C, H, W) and labels (N,)."""
        return DiffusionSteps(self, images, labels)

    def train_epoch(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict[str, float]:
        """One shuffled pass over images (N, C, H, W) and labels (N,); the mean loss."""
        return run_epoch(self.steps(images, labels), len(images), batch_size, device=images.device, min_batch=1)

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up as in TF's ExponentialMovingAverage: early on the EMA follows the live weights closely
        decay = min(self.ema_decay, (1 + self.done_steps) / (10 + self.done_steps))
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            ema_p.lerp_(p, 1 - decay)

    def sampler(self, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE) -> DiffusionSampler:
        """Sample from the EMA copy (the live model when ema_decay = 0)."""
        return DiffusionSampler(self.ema if self.ema_decay > 0 else self.model, steps, guidance)


class DiffusionSteps(Steps):
    """The diffusion model's part of the training loop: the denoising loss of a batch, then the EMA update."""

    def __init__(self, trainer: DiffusionTrainer, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.trainer, self.images, self.labels = trainer, images, labels

    def step(self, index: torch.Tensor, i: int) -> dict[str, float]:
        return {"loss": self.trainer.train_step(self.images[index], self.labels[index])}
