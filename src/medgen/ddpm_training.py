"""The diffusion family of the generate stage (variant `ddpm`): its settings, its fit on the shared training
loop and its Optuna study.

The study searches what `generate.ddpm_search` lists. Sampler settings (DDIM `steps`, guidance scale
`guidance`) cost no training: every trial samples the one trained model. `lr` and `width` need a model per
trial (`ddpm_search_epochs` each, pruned on the val FD): the `gpu` profile searches them, a 2-core CPU
cannot afford it inside the stage's budget (docs/diffusion.md). Objective: the FD of `ddpm_eval_samples`
samples (val's class proportions) against the train images: at val size (78) FD's small-sample bias
favours low-diversity samplers such as a high guidance scale.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import optuna
import torch

from medgen import generation, search
from medgen.config import Config, GenerateConfig
from medgen.diffusion import DiffusionSampler, DiffusionTrainer
from medgen.models.diffusion import ClassConditionalUNet
from medgen.training import Loop, fit, set_seed

TRAINED = ("lr", "width")  # searched parameters that need a training run per trial
# generate settings besides ddpm_* that change what a diffusion trial measures (feature net, batches, val size)
SHARED = ("batch_size", "eval_samples", "feature_epochs", "feature_dim", "threads")


@dataclass(frozen=True)
class DdpmHyper:
    """What the diffusion study chooses: optimiser lr, U-Net width, DDIM steps and guidance scale."""

    lr: float
    width: int
    steps: int
    guidance: float

    @classmethod
    def defaults(cls, g: GenerateConfig) -> DdpmHyper:
        return cls(g.ddpm_lr, g.ddpm_width, g.ddpm_steps, g.ddpm_guidance)


def sample_size(g: GenerateConfig, image_size: int) -> int:
    """The network canvas: generate.ddpm_sample_size, or the next power of two >= the image size (28 -> 32)."""
    return g.ddpm_sample_size or max(8, 1 << (image_size - 1).bit_length())


def model_kwargs(g: GenerateConfig, n_classes: int, image_shape: tuple[int, ...], width: int) -> dict[str, Any]:
    """ClassConditionalUNet's constructor arguments (plain data: training.save_model stores them)."""
    channels, size = int(image_shape[0]), int(image_shape[-1])
    return {
        "n_classes": int(n_classes),
        "image_size": size,
        "channels": channels,
        "sample_size": sample_size(g, size),
        "width": int(width),
    }


def fit_model(
    cfg: Config, real: generation.Real, device: torch.device, lr: float, width: int, epochs: int, label: str, trial=None
) -> tuple[ClassConditionalUNet, list[dict], int]:
    """Train a denoiser for `epochs` (cosine lr decay, EMA); returns the final EMA weights, the history
    (loss per epoch, val FD with the default sampler every ddpm_eval_every epochs: the curve and a trial's
    pruning) and the last epoch. The final weights, not the best-FD epoch: at val size (78 images) the FD
    check is too noisy to pick an epoch by (it picked epoch 50 of a loss still falling at 150)."""
    g = cfg.generate
    set_seed(cfg.seed)  # every fit starts from the same weights and batches: only its settings differ
    dataset = real.dataset
    model = ClassConditionalUNet(**model_kwargs(g, dataset.n_classes, dataset.image_shape, width)).to(device)
    per_epoch = math.ceil(len(real.x) / g.batch_size)
    trainer = DiffusionTrainer(
        model,
        lr=lr,
        ema_decay=g.ddpm_ema,
        label_dropout=g.ddpm_label_dropout,
        total_steps=epochs * per_epoch,
        lr_final=min(g.ddpm_lr_final, lr),
    )
    n_eval = g.eval_samples or len(dataset.val)
    loop = Loop(
        epochs,
        g.batch_size,
        label,
        device=device,
        min_batch=1,  # no batch norm in the U-Net
        first_epoch=1,
        eval_every=g.ddpm_eval_every,
        monitor="val_fd",
        mode="min",
        worst=math.inf,
        trial=trial,
        show=("loss",),
    )
    kept = trainer.sampler().model  # the EMA copy (the live model when ddpm_ema = 0)

    def validate(epoch: int) -> dict[str, float]:
        sampler = DiffusionSampler(kept, g.ddpm_steps, g.ddpm_guidance)
        return {"val_fd": generation.val_fd(sampler, real, n_eval, cfg.seed)}

    fitted = fit(trainer.steps(real.x, real.y), len(real.x), loop, validate)
    if not any(math.isfinite(row.get("val_fd", math.nan)) for row in fitted.rows):
        from medgen.errors import MedgenError

        raise MedgenError("generate: the diffusion model diverged (no finite val FD); lower generate.ddpm_lr")
    return kept.eval(), fitted.rows, len(fitted.rows)


def study_spec(cfg: Config) -> dict[str, Any]:
    """What defines the diffusion study: every ddpm_* setting but the trial count, and the shared ones."""
    keep = {f.name for f in fields(GenerateConfig) if f.name.startswith("ddpm_")} - {"ddpm_trials"} | set(SHARED)
    ignore = [f.name for f in fields(GenerateConfig) if f.name not in keep]
    return search.definition(cfg, "generate", ignore=ignore, family="ddpm")


def suggest(trial: optuna.Trial, g: GenerateConfig) -> DdpmHyper:
    """A trial's settings: the searched ones drawn from their ranges, the others from generate.ddpm_*."""
    wanted, base = set(g.ddpm_search), DdpmHyper.defaults(g)
    return DdpmHyper(
        trial.suggest_float("lr", g.ddpm_lr_min, g.ddpm_lr_max, log=True) if "lr" in wanted else base.lr,
        trial.suggest_categorical("width", list(g.ddpm_widths)) if "width" in wanted else base.width,
        trial.suggest_categorical("steps", list(g.ddpm_step_choices)) if "steps" in wanted else base.steps,
        (
            trial.suggest_float("guidance", g.ddpm_guidance_min, g.ddpm_guidance_max)
            if "guidance" in wanted
            else base.guidance
        ),
    )


def train_and_choose(
    cfg: Config, real: generation.Real, device: torch.device, parent_run_id: str
) -> tuple[ClassConditionalUNet, DdpmHyper, dict[str, Any], list[dict], int]:
    """The diffusion candidate: (EMA denoiser, its settings, study summary, final fit's history, kept epoch).

    Without lr/width in the search the final model is trained first and the study samples it; with them,
    each trial trains its own model and the final fit uses the best trial's lr and width."""
    g = cfg.generate
    base = DdpmHyper.defaults(g)
    retrain = bool(set(g.ddpm_search) & set(TRAINED)) and g.ddpm_trials > 0
    final = None
    if not retrain:
        final = fit_model(cfg, real, device, base.lr, base.width, g.ddpm_epochs, "ddpm fit")
    if g.ddpm_trials == 0:
        model, rows, best_epoch = final
        return model, base, {"n_trials": 0}, rows, best_epoch
    n_eval = g.ddpm_eval_samples or len(real.dataset.val)

    def objective(trial: optuna.Trial) -> float:
        hyper = suggest(trial, g)
        if retrain:
            label = f"ddpm trial {trial.number} (lr {hyper.lr:.2g}, width {hyper.width})"
            model = fit_model(cfg, real, device, hyper.lr, hyper.width, g.ddpm_search_epochs, label, trial)[0]
        else:
            model = final[0]
        return generation.val_fd(DiffusionSampler(model, hyper.steps, hyper.guidance), real, n_eval, cfg.seed)

    fixed = [{k: v for k, v in asdict(base).items() if k in g.ddpm_search}]  # the defaults are trial 0
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, g.ddpm_search_epochs // 3))
    study = search.open_study(
        cfg, "generate", study_spec(cfg), direction="minimize", suffix="ddpm", pruner=pruner, fixed=fixed
    )
    search.optimize(study, objective, g.ddpm_trials, parent_run_id=parent_run_id)
    best = search.best_params(study)
    chosen = DdpmHyper(**{**asdict(base), **best})
    if retrain:
        final = fit_model(cfg, real, device, chosen.lr, chosen.width, g.ddpm_epochs, f"ddpm fit (lr {chosen.lr:.2g})")
    found = search.counts(study)
    summary = {
        "n_trials": found["trials"],
        "n_pruned": found["pruned"],
        "best_val_fd": float(study.best_value),
        "searched": list(g.ddpm_search),
    }
    model, rows, best_epoch = final
    return model, chosen, summary, rows, best_epoch


def history_figure(history: list[dict]):
    """Denoising loss per epoch (left) and the validation FD at each check (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot([row["epoch"] for row in history], [row["loss"] for row in history])
    left.set(xlabel="epoch", ylabel="loss (v-prediction MSE)", title="diffusion loss")
    checks = [row for row in history if np.isfinite(row.get("val_fd", np.nan))]
    right.plot([row["epoch"] for row in checks], [row["val_fd"] for row in checks], marker="o")
    right.set(xlabel="epoch", ylabel="FD (feature net)", title="val-sized synthetic vs train real")
    fig.tight_layout()
    return fig


def candidate(cfg: Config, real: generation.Real, device: torch.device, run_id: str) -> generation.Candidate:
    """The diffusion candidate (medgen.ddpm_training): trained, its sampler settings searched."""
    started = time.perf_counter()
    model, hyper, summary, history, best_epoch = train_and_choose(cfg, real, device, run_id)
    sampler = DiffusionSampler(model, hyper.steps, hyper.guidance)
    # the GAN's val_fd figure (val-sized, cfg.seed) of the denoiser as it is served: export's champion rule
    val_fd = generation.val_fd(sampler, real, cfg.generate.eval_samples or len(real.dataset.val), cfg.seed)
    return generation.Candidate(
        "ddpm",
        "diffusion",
        model,
        model_kwargs(cfg.generate, real.dataset.n_classes, real.dataset.image_shape, hyper.width),
        sampler,
        {"sampler_steps": hyper.steps, "guidance": hyper.guidance, "lr": hyper.lr, "width": hyper.width},
        history,
        best_epoch,
        {"hyper": asdict(hyper), "search": summary, "best_epoch": best_epoch},
        figure=history_figure,
        seconds=time.perf_counter() - started,
        val_fd=val_fd,
    )
