"""Stage `represent`: how well does each latent space separate the classes? PCA, Isomap and four
autoencoders, each followed by a KNN, each searched by its own Optuna study.

Inputs : data/prepared/<flag>.npz.
Outputs: metrics/represent.json (one entry per method: test scores with 95% intervals; every method but
         PCA also `vs_pca`, a paired comparison decided by medgen.stats' rule), plots/represent/*.png
         (comparison table, 2-D VAE latent grid and scatter, posterior histograms, AE vs VAE
         reconstructions), and the encoder of the best convolutional model at represent.encoder_checkpoint
         (for the classifier's transfer learning).
Search : study `<flag>-represent-<method>` per method over latent_dim, k and (neural) lr. Selection is
         stratified k-fold KNN on train+val latents (val alone is 78 images; see DESIGN.md "Search");
         autoencoders are trained on train images only (no labels) and pruned on the per-epoch CV score.
         The best trial per method is refitted, its KNN fitted on train latents and scored once on val
         and test. MLflow experiment medgen/<flag>/represent, one nested run per trial.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch

from medgen import latent, plots, search, tracking
from medgen.config import Config, RepresentConfig
from medgen.io import write_json
from medgen.outputs import Output, output_file, output_folder
from medgen.progress import Progress
from medgen.representation import (
    CLASSIC,
    Arrays,
    FoldEmbeddings,
    add_uncertainty,
    cv_metrics,
    explore,
    fold_neighbours,
    load_arrays,
    make_model,
    reconstructions,
    save_encoder,
    score_best,
    summary,
    validate,
)
from medgen.training import pick_device, set_seed, torch_threads

log = logging.getLogger(__name__)


def suggest(trial: optuna.Trial, rc: RepresentConfig, neural: bool) -> dict[str, Any]:
    """The one search space: same names in every study so MLflow's compare view lines trials up."""
    params = {
        "latent_dim": trial.suggest_int("latent_dim", rc.latent_dim_min, rc.latent_dim_max),
        "k": trial.suggest_int("k", rc.k_min, rc.k_max),
    }
    if neural:
        params["lr"] = trial.suggest_float("lr", rc.lr_min, rc.lr_max, log=True)
    return params


# Settings of the 2-D exploration VAE and its figures: they never enter a study.
NOT_SEARCH = ("explore_method", "explore_epochs", "explore_lr", "grid_n", "grid_scale", "n_recon", "methods")


def study_spec(cfg: Config, method: str) -> dict[str, Any]:
    """What defines one method's study (the other methods and the exploration figures do not)."""
    return search.definition(cfg, "represent", ignore=NOT_SEARCH, method=method)


def search_classic(cfg: Config, method: str, arrays: Arrays, parent_id: str) -> optuna.Study:
    """PCA/Isomap: one fit per fold at latent_dim_max; every trial truncates it and slices its k."""
    rc = cfg.represent
    folds = FoldEmbeddings(cfg, method, arrays)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, rc, neural=False)
        metrics = cv_metrics(folds.neighbours(params["latent_dim"]), arrays, params["k"])
        mlflow.log_metrics(metrics)
        return metrics[f"cv_{rc.objective}"]

    study = search.open_study(cfg, "represent", study_spec(cfg, method), suffix=method, sampler=rc.sampler)
    return search.optimize(study, objective, rc.trials_classic, parent_run_id=parent_id)


def search_neural(cfg: Config, method: str, arrays: Arrays, parent_id: str, device: torch.device) -> optuna.Study:
    """Train on train images, after each epoch score the CV KNN on train+val latents; prune on it."""
    rc = cfg.represent

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, rc, neural=True)
        model = make_model(cfg, method, params["latent_dim"], arrays, device)
        k, monitor = params["k"], f"cv_{rc.objective}"

        def validate(epoch: int) -> dict[str, float]:
            return cv_metrics(fold_neighbours(latent.encode(model, arrays.x["pool"]), arrays, k), arrays, k)

        fitted = latent.fit_autoencoder(
            model, arrays.x["train"], rc.epochs, params["lr"], rc.batch_size, cfg.seed, validate, monitor, trial
        )
        last = fitted.rows[-1]
        mlflow.log_metrics(
            {f"train_{key}": value for key, value in last.items() if key != "epoch" and key[:3] != "cv_"}
        )
        return last[monitor]

    pruner = optuna.pruners.PercentilePruner(
        rc.prune_percentile, n_startup_trials=rc.prune_startup_trials, n_warmup_steps=rc.prune_warmup_epochs
    )
    study = search.open_study(
        cfg, "represent", study_spec(cfg, method), suffix=method, pruner=pruner, sampler=rc.sampler
    )
    return search.optimize(study, objective, rc.trials_neural, parent_run_id=parent_id)


def search_method(cfg: Config, method: str, arrays: Arrays, parent_id: str, device: torch.device) -> optuna.Study:
    """One method's study, run (or resumed) to its n_trials target."""
    if method in CLASSIC:
        return search_classic(cfg, method, arrays, parent_id)
    return search_neural(cfg, method, arrays, parent_id, device)


def study_method(cfg: Config, method: str, arrays: Arrays, parent_id: str, device: torch.device):
    """Search (resuming the stored study), refit the best trial, score it: (metrics entry, model or None,
    KNN test probabilities (N, C))."""
    study = search_method(cfg, method, arrays, parent_id, device)
    entry, model, test_probs = score_best(cfg, method, study, arrays, device)
    log.info("represent %s: %s", method, entry)
    return entry, model, test_probs


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `represent`)."""
    rc = cfg.represent
    return [output_file(rc.encoder_checkpoint), output_file(rc.metrics), output_folder(rc.plots_dir)]


def run(cfg: Config) -> dict[str, Any]:
    """The stage: every method searched, refitted and scored; the encoder, figures and metrics written."""
    set_seed(cfg.seed)
    with torch_threads(cfg.represent.threads):
        return _run(cfg)


def search_only(cfg: Config) -> dict[str, Any]:
    """One fan-out worker: add trials to every method's study until each holds its target (shared with
    the other workers), nested under tracking.parent_run_id; no refit, no files. `run` then finishes the
    stage from the studies. Returns per method the study's finished-trial counts."""
    set_seed(cfg.seed)
    with torch_threads(cfg.represent.threads), search.trial_parent(cfg, "represent") as parent_id:
        arrays = load_arrays(cfg)
        validate(cfg.represent, arrays)
        device = pick_device(cfg.represent.device)
        found = {}
        for method in cfg.represent.methods:
            study = search_method(cfg, method, arrays, parent_id, device)
            found[method] = {**search.counts(study), "study": study.study_name}
    return found


def _run(cfg: Config) -> dict[str, Any]:
    rc = cfg.represent
    device = pick_device(rc.device)
    out_dir = Path(rc.plots_dir)
    with tracking.stage_run(cfg, "represent", params_sections=("represent",)) as stage:
        arrays = load_arrays(cfg)
        validate(rc, arrays)  # before any training
        entries, models, test_probs = {}, {}, {}
        progress = Progress(len(rc.methods), "represent methods")
        for i, method in enumerate(rc.methods, 1):
            entries[method], model, test_probs[method] = study_method(cfg, method, arrays, stage.info.run_id, device)
            if model is not None:
                models[method] = model
            progress.update(i, method=method, test_balanced_acc=entries[method]["test_balanced_acc"])
        progress.close()
        add_uncertainty(entries, test_probs, arrays.y["test"])
        best_conv = save_encoder(cfg, entries, models)
        figures, explore_vae = explore(cfg, arrays, device, out_dir)
        figures.append(reconstructions(cfg, arrays, models, explore_vae, out_dir))
        figures.append(plots.save_figure(plots.comparison_table(entries, rc.objective), out_dir / "comparison.png"))
        write_json(rc.metrics, entries)
        mlflow.log_metrics({**tracking.numeric_metrics(entries), **summary(entries)})
        mlflow.set_tag("medgen.encoder_method", best_conv or "none")
        tracking.log_files(figures, "figures")
        tracking.log_dict(entries, "represent.json")
        if best_conv:
            tracking.log_files([Path(rc.encoder_checkpoint)], "encoder")
    return entries
