"""Stage `classify`: ResNet-18 on the prepared split, classic augmentation, Optuna search, seeds, test once.

Inputs : data/prepared/<flag>.npz; classify.encoder_checkpoint when classify.pretrained=encoder.
Outputs: classify.checkpoint (the final seed with the best validation AUC, written with
         medgen.training.save_model; config holds n_classes, class_names, input_shape [C, S, S] and
         the stem used), classify.metrics
         (per test metric: mean and std over seeds and the 95% interval of that mean, medgen.stats; plus
         the seed-averaged ensemble with its interval), classify.details (per seed, chosen
         hyper-parameters, search summary), classify.plots_dir (history.csv, confusion.csv, roc.csv, PNGs).
         Wall-clock timings go to MLflow and the log only: a metrics file is a function of its inputs.
         MLflow experiment medgen/<flag>/classify: one child run per Optuna trial and per final seed.
The model, its fit and its scoring live in medgen.classification (augment trains through it too).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import torch

from medgen import classification, data, metrics, plots, search, tracking
from medgen.classification import build_model, fit_classifier, predict_proba, subsample
from medgen.config import Config
from medgen.io import write_csv, write_json
from medgen.models.classifier import resolve_stem
from medgen.outputs import Output, output_file, output_folder
from medgen.progress import Progress
from medgen.training import pick_device, set_seed

log = logging.getLogger(__name__)


def study_spec(cfg: Config) -> dict[str, Any]:
    """What defines the search: every classify setting except final seeds and paths (an ablation never
    resumes another's trials)."""
    return search.definition(cfg, "classify")


def search_hparams(cfg: Config, dataset: data.Dataset, train: data.Split, device, parent_run_id: str) -> dict[str, Any]:
    """Optuna over lr, weight_decay (and aug_strength when augmenting); best trial by validation AUC."""
    c = cfg.classify
    base = {"lr": c.lr, "weight_decay": c.weight_decay, "aug_strength": c.aug_strength}
    if c.n_trials == 0:
        return {"hparams": base, "trials": 0, "complete": 0, "pruned": 0, "best_val_auc": None}

    def objective(trial) -> float:
        hp = {
            "lr": trial.suggest_float("lr", *c.lr_range, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *c.weight_decay_range, log=True),
        }
        if c.augment:
            hp["aug_strength"] = trial.suggest_float("aug_strength", *c.strength_range)
        _, history = fit_classifier(
            c, train, dataset.val, dataset.n_classes, cfg.seed, device, hp, epochs=c.search_epochs, trial=trial
        )
        return history["best_val_auc"]

    study = search.open_study(cfg, "classify", study_spec(cfg), "maximize")
    search.optimize(study, objective, c.n_trials, parent_run_id=parent_run_id)
    return {
        "hparams": {**base, **search.best_params(study)},
        **search.counts(study),
        "best_val_auc": search.best_value(study),
        "study": study.study_name,
    }


def train_seeds(
    cfg: Config, dataset: data.Dataset, train: data.Split, hparams: dict, device, parent_run_id: str
) -> list[dict]:
    """Final training, one child run per seed; test metrics computed once per seed."""
    results = []
    with Progress(cfg.classify.seeds, "classify seeds", unit="seeds") as progress:
        for seed in range(cfg.seed, cfg.seed + cfg.classify.seeds):
            started = time.perf_counter()
            with tracking.child_run(parent_run_id, f"seed-{seed}", {"seed": seed, **hparams}):
                model, history = fit_classifier(
                    cfg.classify, train, dataset.val, dataset.n_classes, seed, device, hparams
                )
                probs = predict_proba(model, dataset.test, device)
                test = metrics.classification_metrics(dataset.test.labels, probs)
                seconds = time.perf_counter() - started
                mlflow.log_metrics(
                    {f"test_{k}": v for k, v in test.items()}
                    | {"best_val_auc": history["best_val_auc"], "seconds": seconds}
                )
            results.append({"seed": seed, "model": model.cpu(), "history": history, "test": test, "probs": probs})
            log.info("seed %d: test %s (best epoch %d, %.0f s)", seed, test, history["best_epoch"], seconds)
            progress.update(len(results), seed=seed, val_auc=history["best_val_auc"])
    return results


def write_plots(cfg: Config, dataset: data.Dataset, results: list[dict], best: dict) -> list[Path]:
    """DVC plot data for the checkpointed seed (history.csv, confusion.json, roc.csv) and PNGs over all seeds."""
    out = Path(cfg.classify.plots_dir)
    labels, probs = dataset.test.labels, best["probs"]
    rows = best["history"]["rows"]
    names = dataset.class_names  # may contain commas ("normal, benign"): JSON, not CSV
    pairs = [{"actual": names[a], "predicted": names[p]} for a, p in zip(labels.tolist(), probs.argmax(1).tolist())]
    files = [
        write_csv(out / "history.csv", list(rows[0]), [[r[k] for k in rows[0]] for r in rows]),
        write_json(out / "confusion.json", pairs),
    ]
    if dataset.n_classes == 2:
        curve = metrics.roc(labels, probs)
        files.append(write_csv(out / "roc.csv", ["fpr", "tpr", "threshold"], list(zip(*curve.values()))))
        curves = {f"seed {r['seed']} (AUC {r['test']['auc']:.3f})": metrics.roc(labels, r["probs"]) for r in results}
        files.append(plots.save_figure(plots.roc_figure(curves), out / "roc.png"))
    files.append(
        plots.save_figure(plots.training_curves({r["seed"]: r["history"]["rows"] for r in results}), out / "curves.png")
    )
    matrix = metrics.confusion(labels, probs.argmax(1), dataset.n_classes)
    files.append(
        plots.save_figure(plots.confusion_figure(matrix, names, f"test, seed {best['seed']}"), out / "confusion.png")
    )
    return files


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `classify`)."""
    c = cfg.classify
    return [output_file(c.checkpoint), output_file(c.metrics), output_file(c.details), output_folder(c.plots_dir)]


def _inputs(cfg: Config) -> tuple[data.Dataset, data.Split]:
    """The prepared data and the (sub-sampled) training split; a missing/mismatched encoder file fails first."""
    dataset = data.load_prepared(cfg.data)
    if cfg.classify.pretrained != "none":
        build_model(cfg.classify, dataset.n_classes, dataset.image_shape)
    return dataset, subsample(dataset.train, cfg.classify.train_fraction, cfg.seed)


def search_only(cfg: Config) -> dict[str, Any]:
    """One fan-out worker: add trials to the study until it holds classify.n_trials (shared with the
    other workers), nested under tracking.parent_run_id; no final training, no files. `run` then
    finishes the stage from the study. Returns the study's counts and best setting so far."""
    set_seed(cfg.seed)
    if cfg.classify.threads:
        torch.set_num_threads(cfg.classify.threads)
    with search.trial_parent(cfg, "classify") as parent_id:
        dataset, train = _inputs(cfg)
        return search_hparams(cfg, dataset, train, pick_device(cfg.classify.device), parent_id)


def run(cfg: Config) -> dict[str, Any]:
    """The stage: search, final seeds, the checkpointed seed chosen on validation, metrics and plots."""
    set_seed(cfg.seed)
    if cfg.classify.threads:
        torch.set_num_threads(cfg.classify.threads)  # OpenMP threads spin against other jobs on a shared CPU
    with tracking.stage_run(cfg, "classify", params_sections=("classify",)) as stage:
        device = pick_device(cfg.classify.device)
        dataset, train = _inputs(cfg)
        found = search_hparams(cfg, dataset, train, device, stage.info.run_id)
        mlflow.log_params({f"chosen.{k}": v for k, v in found["hparams"].items()})
        size = dataset.image_shape[1]
        stem = "encoder" if cfg.classify.pretrained == "encoder" else resolve_stem(cfg.classify.stem, size)
        mlflow.log_params({"image_shape": list(dataset.image_shape), "stem_used": stem})
        results = train_seeds(cfg, dataset, train, found["hparams"], device, stage.info.run_id)
        best = max(results, key=lambda r: r["history"]["best_val_auc"])  # chosen on validation, never test
        classification.save_best(cfg, dataset, best, found["hparams"])
        summary = classification.summarize(results, dataset.test.labels)
        write_json(cfg.classify.metrics, summary)
        write_json(cfg.classify.details, classification.details(dataset, results, best, found, train))
        files = write_plots(cfg, dataset, results, best)
        mlflow.log_metrics(tracking.numeric_metrics(summary))
        tracking.log_files(files, "plots")
        tracking.log_files([Path(cfg.classify.metrics), Path(cfg.classify.details)], "metrics")
        mlflow.log_text(
            metrics.report_text(dataset.test.labels, best["probs"], dataset.class_names), "classification_report.txt"
        )
    log.info("classify: %s", summary)
    return summary
