"""Stage `generate`: search, train and checkpoint a conditional GAN; sample the synthetic set; judge it.

Inputs : data/prepared/<flag>.npz.
Outputs: generate.feature_checkpoint (metric feature net, a small CNN trained on the real train split),
         generate.checkpoint (the EMA generator, rebuilt by medgen.training.load_model),
         <generate.samples_dir>/<flag>/samples.npz (samples_per_class per class), generate.metrics,
         generate.plots_dir (loss curves, per-class sample grids per checkpoint, history.json).
Search : Optuna over variant, lr_g, lr_d, beta1; objective = Fréchet distance (feature net space) between
         the real train set and val-sized synthetic samples (val's class counts), pruned on its value
         every eval_every epochs. The final fit keeps the EMA generator with the best such value.
Metrics: FD/KID of synthetic vs train-real beside held-out real (val + test) vs train-real, per class and
         overall, and C2ST accuracy. Test images only enter this report, never the selection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch

from medgen import data, generation, search, synthetic, tracking
from medgen.config import Config, GenerateConfig
from medgen.gan_training import GanHyper, GanTrainer, generator_kwargs
from medgen.io import output_files, write_json
from medgen.outputs import Output, output_file, output_folder
from medgen.training import fit, pick_device, save_model, set_seed, torch_threads

log = logging.getLogger(__name__)


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


# The final fit, sampling and figures: they never enter a study.
NOT_SEARCH = ("epochs", "checkpoint_every", "samples_per_class", "labels")


def study_spec(cfg: Config) -> dict[str, Any]:
    """What defines the GAN search: the generate section except the final fit's and sampling's settings."""
    return search.definition(cfg, "generate", ignore=NOT_SEARCH)


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


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `generate`)."""
    g = cfg.generate
    return [
        output_file(g.checkpoint),
        output_file(g.feature_checkpoint),
        output_file(synthetic.samples_path(cfg)),
        output_file(g.metrics),
        output_folder(g.plots_dir),
    ]


def run(cfg: Config) -> dict[str, Any]:
    """The stage: feature net, GAN search and final fit, samples, quality report, checkpoints and figures."""
    with torch_threads(cfg.generate.threads):
        return _run(cfg)


def _run(cfg: Config) -> dict[str, Any]:
    set_seed(cfg.seed)
    gcfg = cfg.generate
    device = pick_device(gcfg.device)
    with tracking.stage_run(cfg, "generate", params_sections=("generate",)) as stage:
        dataset = data.load_prepared(cfg.data)
        generation.requested_labels(gcfg, dataset.n_classes)  # a bad label fails before any training
        started = time.perf_counter()
        real = generation.prepare_real(cfg, dataset, device)
        hyper, summary = choose_hyper(cfg, real, device, stage.info.run_id)
        searched = time.perf_counter()
        generator, history, best_epoch = generation.fit_final(cfg, hyper, real, device)
        trained = time.perf_counter()
        report = generation.evaluate(cfg, generator, real)
        # no timings in the metrics file (same inputs, same file): they go to MLflow and the log
        result = {
            "variant": hyper.variant,
            **report,
            "hyper": asdict(hyper),
            "search": summary,
            "best_epoch": best_epoch,
        }
        extra = {
            "latent_dim": gcfg.latent_dim,
            "n_classes": dataset.n_classes,
            "class_names": list(dataset.class_names),
            "variant": hyper.variant,
            "lr_g": hyper.lr_g,
            "lr_d": hyper.lr_d,
            "beta1": hyper.beta1,
            "image_shape": list(dataset.image_shape),
            "flag": cfg.data.flag,
            "profile": cfg.profile,
        }
        # val_fd of the kept epoch: what the fit selected on, and what export's champion rule compares
        selected = {"val_fd": history[best_epoch - 1]["val_fd"]}
        save_model(
            gcfg.checkpoint,
            generator,
            generator_kwargs(gcfg, dataset.n_classes, dataset.image_shape),
            config=asdict(gcfg) | extra,
            metrics=tracking.numeric_metrics(report) | selected,
        )
        figures = generation.write_outputs(cfg, generator, history)
        seconds = {"search": searched - started, "train": trained - searched, "total": time.perf_counter() - started}
        write_json(gcfg.metrics, result)
        mlflow.log_params({f"chosen.{k}": v for k, v in asdict(hyper).items()})
        mlflow.log_metrics(tracking.numeric_metrics(report) | {f"seconds_{k}": v for k, v in seconds.items()})
        tracking.log_files([*figures, *output_files(gcfg.plots_dir, "grid_epoch_*.png")], "plots")
        tracking.log_files([Path(gcfg.checkpoint)], "model")
        tracking.log_dict(result, "generate.json")
    log.info(
        "generate: %s fd %.3g (real %.3g) c2st %.3f; %.0f s search, %.0f s final fit",
        hyper.variant,
        report["fd_real_vs_synth"],
        report["fd_real_vs_real"],
        report["c2st_acc"],
        seconds["search"],
        seconds["train"],
    )
    return result
