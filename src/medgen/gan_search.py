"""The GAN family of the generate stage: its Optuna search (variant, lr_g, lr_d, beta1; objective = the val
FD, pruned every eval_every epochs) and the trained candidate it yields."""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from typing import Any

import optuna
import torch

from medgen import generation, plots, search, synthetic
from medgen.config import Config, GenerateConfig
from medgen.gan_training import GanHyper, GanTrainer, generator_kwargs
from medgen.training import fit, set_seed


def hyper_from_trial(trial: optuna.Trial, cfg: GenerateConfig) -> GanHyper:
    """The GAN settings a trial suggests (variant, lr_g, lr_d, beta1) within generate's search space."""
    return GanHyper(
        variant=trial.suggest_categorical("variant", list(cfg.variants)),
        lr_g=trial.suggest_float("lr_g", cfg.lr_min, cfg.lr_max, log=True),
        lr_d=trial.suggest_float("lr_d", cfg.lr_min, cfg.lr_max, log=True),
        beta1=trial.suggest_float("beta1", cfg.beta1_min, cfg.beta1_max),
    )


def make_objective(cfg: Config, real: generation.Real, device: torch.device):
    """The search objective: a seeded GAN fit for search_epochs; best val FD, reported and pruned on."""
    gcfg, n_eval = cfg.generate, cfg.generate.eval_samples or len(real.dataset.val)

    def objective(trial: optuna.Trial) -> float:
        set_seed(cfg.seed)  # every trial starts from the same weights and batches: only hypers differ
        trainer = GanTrainer(
            gcfg, hyper_from_trial(trial, gcfg), real.dataset.n_classes, device, real.dataset.image_shape
        )
        label = f"gan trial {trial.number} ({trainer.hyper.variant})"
        loop = generation.gan_loop(gcfg, gcfg.search_epochs, label, device, trial)
        validate = lambda epoch: {"val_fd": generation.val_fd(trainer.sampler(), real, n_eval, cfg.seed)}  # noqa: E731
        return fit(trainer.steps(real.x, real.y, prune_diverged=True), len(real.x), loop, validate).best

    return objective


# The final fit, sampling, figures, the choice between families and the diffusion model's settings (its own
# study, medgen.ddpm_training): none of them changes what a GAN trial measures.
NOT_SEARCH = (
    "epochs",
    "checkpoint_every",
    "samples_per_class",
    "labels",
    "ddpm",
    "select",
    "max_memorization",
    "fd_draws",
    "jobs",
)


def study_spec(cfg: Config) -> dict[str, Any]:
    """What defines the GAN search: the generate section except the final fit's and sampling's settings."""
    ddpm = [f.name for f in fields(GenerateConfig) if f.name.startswith("ddpm_")]
    return search.definition(cfg, "generate", ignore=(*NOT_SEARCH, *ddpm))


def choose_hyper(
    cfg: Config, real: generation.Real, device: torch.device, parent_run_id: str
) -> tuple[GanHyper, dict[str, Any]]:
    """Optuna search (resumable study `<flag>-generate`); n_trials = 0 takes the configured defaults."""
    gcfg = cfg.generate
    if gcfg.n_trials == 0:
        return GanHyper.defaults(gcfg), {"n_trials": 0}
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, gcfg.search_epochs // 3))
    # The DCGAN paper's settings are always the first candidate
    fixed = (
        [{"variant": gcfg.variant, "lr_g": gcfg.lr_g, "lr_d": gcfg.lr_d, "beta1": gcfg.beta1}]
        if gcfg.variant in gcfg.variants
        else []
    )
    study = search.open_study(cfg, "generate", study_spec(cfg), direction="minimize", pruner=pruner, fixed=fixed)
    search.optimize(study, make_objective(cfg, real, device), gcfg.n_trials, parent_run_id=parent_run_id)
    best = search.best_params(study)
    found = search.counts(study)
    summary = {"n_trials": found["trials"], "n_pruned": found["pruned"], "best_val_fd": float(study.best_value)}
    return GanHyper(best["variant"], best["lr_g"], best["lr_d"], best["beta1"]), summary


def candidate(cfg: Config, real: generation.Real, device: torch.device, run_id: str) -> generation.Candidate:
    """The GAN candidate: the searched variant and settings, trained for generate.epochs."""
    started = time.perf_counter()
    hyper, summary = choose_hyper(cfg, real, device, run_id)
    generator, history, best_epoch = generation.fit_final(cfg, hyper, real, device)
    shape = real.dataset.image_shape
    return generation.Candidate(
        hyper.variant,
        "gan",
        generator,
        generator_kwargs(cfg.generate, real.dataset.n_classes, shape),
        synthetic.as_sampler(generator),
        {"latent_dim": cfg.generate.latent_dim, **asdict(hyper)},
        history,
        best_epoch,
        {"hyper": asdict(hyper), "search": summary, "best_epoch": best_epoch},
        figure=plots.gan_history,
        seconds=time.perf_counter() - started,
        val_fd=history[best_epoch - 1]["val_fd"],  # the kept epoch's: what the fit selected on
    )
