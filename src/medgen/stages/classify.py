"""Stage `classify`: a recipe chosen by cross-validation on train+val, its fold models as the served ensemble.

Inputs : data/prepared/<flag>.npz; classify.encoder_checkpoint when classify.pretrained=encoder.
Outputs: classify.checkpoint (an EnsembleClassifier: the chosen candidate's cv_folds x seeds fold models averaged
         over the classify.tta views, calibrated, with an input guard (medgen.guard), written with
         medgen.training.save_model; config: n_classes, class_names, input_shape [C, S, S], stem, recipe, members,
         calibrator, the guard's method and threshold), classify.metrics (`served`: test metrics of exactly that
         model with 95% intervals, its calibration before/after, the guard on test and OOD sets; per member mean,
         std and interval of the mean, medgen.stats; `cv`: the chosen candidate's CV scores), classify.details
         (every candidate's CV scores, the members, per-member test figures), classify.plots_dir (history.csv,
         confusion.json, roc.csv, PNGs). Test is scored once, after the choice. Wall-clock timings go to MLflow and
         the log only. MLflow experiment medgen/<flag>/classify: one child run per candidate.
Candidates: classify.recipes in order (fixed Optuna trials: resumable, deterministic), then Optuna draws of (recipe,
lr, weight_decay) up to classify.n_trials, each scored on the first classify.cv_screen folds; the best fits the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import optuna
import torch

from medgen import calibration, classification, data, ensemble, guard, metrics, plots, search, tracking
from medgen.classification import build_model, predict_proba, subsample
from medgen.config import Config
from medgen.io import write_csv, write_json
from medgen.outputs import Output, output_file, output_folder
from medgen.training import pick_device, set_seed

log = logging.getLogger(__name__)


def study_spec(cfg: Config) -> dict[str, Any]:
    """Every classify setting that changes a CV score (repeats too): an ablation never resumes another's trials."""
    ignored = ("tta", "jobs", "calibration", "ood_keep")  # fitted after the choice, from its out-of-fold predictions
    return search.definition(cfg, "classify", ignore=ignored, repeats=cfg.classify.seeds, scheme="cv")


def open_search(cfg: Config) -> optuna.Study:
    """The candidates' study, created or resumed, with the named recipes queued as its first trials."""
    spec, fixed = study_spec(cfg), ensemble.candidates(cfg.classify)[1]
    return search.open_study(cfg, "classify", spec, "maximize", pruner=optuna.pruners.NopPruner(), fixed=fixed)


def search_recipes(cfg: Config, dataset: data.Dataset, device, parent_run_id: str) -> tuple:
    """Every candidate's repeated K-fold CV on train+val; the best by out-of-fold AUC. Returns the search
    summary, the chosen candidate's fits when this process made them (else None), the pool, the folds."""
    c = cfg.classify
    pool = subsample(ensemble.pool_split(dataset), c.train_fraction, cfg.seed)
    folds = ensemble.make_folds(pool.labels, c.cv_folds, c.seeds, cfg.seed)
    names, screen = ensemble.candidates(cfg.classify)[0], ensemble.screened(folds, c.cv_screen)
    kept: dict[int, list[dict]] = {}

    def objective(trial) -> float:
        name = trial.suggest_categorical("recipe", names)
        hp = {
            "lr": trial.suggest_float("lr", *c.lr_range, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *c.weight_decay_range, log=True),
        }
        chosen = ensemble.recipe(cfg.classify, name)
        mlflow.log_params({f"recipe.{k}": v for k, v in (c.recipes.get(name) or {}).items()})
        fits = ensemble.fit_folds(chosen, pool, dataset.n_classes, screen, hp, device, f"cv {name} #{trial.number}")
        scores = ensemble.cv_scores(pool.labels, ensemble.out_of_fold(pool, fits, dataset.n_classes))
        mlflow.log_metrics(scores)
        for key, value in scores.items():
            trial.set_user_attr(key, value)
        if not kept or scores["cv_auc"] > max(t["cv_auc"] for t in kept.values()):
            kept.clear()
            kept[trial.number] = {"cv_auc": scores["cv_auc"], "fits": fits}
        return scores["cv_auc"]

    study = open_search(cfg)
    search.optimize(study, objective, max(c.n_trials, 1), parent_run_id=parent_run_id)
    done = search.completed(study)  # in trial order; numbers themselves depend on kills and retries: not reported
    if not done:
        search.best_params(study)  # the "no completed trial" error
    table = [{**t.params, **{k: v for k, v in t.user_attrs.items() if k.startswith("cv_")}} for t in done]
    best = max(range(len(done)), key=lambda i: (table[i]["cv_auc"], -i))  # first of equals, in candidate order
    found = {
        "hparams": dict(done[best].params),
        **search.counts(study),
        "best_cv_auc": table[best]["cv_auc"],
        "chosen": best,
        "study": study.study_name,
        "candidates": table,
        "pool": len(pool),
        "screen_folds": len(screen),  # the candidates' cv_* are out-of-fold scores on these first folds
        "folds": len(folds),
    }
    return found, kept.get(done[best].number, {}).get("fits"), pool, folds


def members_for(cfg, dataset, found, fits, pool, folds, device) -> list[dict]:
    """The chosen candidate's fit of every fold: its screening fits made here, then the other folds' (all refitted
    when none were made here: the same seeds give the same weights, so a resumed or fanned-out study ends with the
    model an uninterrupted run makes). Sets found["chosen_cv"]: its out-of-fold scores on every fold."""
    have, hp = list(fits or []), {k: found["hparams"][k] for k in ("lr", "weight_decay")}
    if rest := folds[len(have) :]:
        chosen = ensemble.recipe(cfg.classify, found["hparams"]["recipe"])
        label = f"chosen: the other {len(rest)} folds" if have else "refit chosen"
        have += ensemble.fit_folds(chosen, pool, dataset.n_classes, rest, hp, device, label)
    found["chosen_cv"] = ensemble.cv_scores(pool.labels, ensemble.out_of_fold(pool, have, dataset.n_classes))
    return have


def write_plots(cfg: Config, dataset: data.Dataset, fits: list[dict], member_probs: list, served, raw) -> list[Path]:
    """DVC plot data for the served ensemble (confusion.json, roc.csv, reliability.json), member 0's history.csv,
    and PNGs (reliability.png: before and after calibration)."""
    out = Path(cfg.classify.plots_dir)
    labels = dataset.test.labels
    diagrams = {"uncalibrated": calibration.reliability(labels, raw), "served": calibration.reliability(labels, served)}
    rows = fits[0]["rows"]
    names = dataset.class_names  # may contain commas ("normal, benign"): JSON, not CSV
    pairs = [{"actual": names[a], "predicted": names[p]} for a, p in zip(labels.tolist(), served.argmax(1).tolist())]
    files = [
        write_csv(out / "history.csv", list(rows[0]), [[r[k] for k in rows[0]] for r in rows]),
        write_json(out / "confusion.json", pairs),
        write_json(out / "reliability.json", diagrams),
        plots.save_figure(plots.reliability_figure(diagrams), out / "reliability.png"),
    ]
    if dataset.n_classes == 2:
        curve = metrics.roc(labels, served)
        files.append(write_csv(out / "roc.csv", ["fpr", "tpr", "threshold"], list(zip(*curve.values()))))
        curves = {
            f"member {i} (AUC {metrics.auc(labels, p):.3f})": metrics.roc(labels, p) for i, p in enumerate(member_probs)
        }
        curves[f"served ensemble (AUC {metrics.auc(labels, served):.3f})"] = curve
        files.append(plots.save_figure(plots.roc_figure(curves), out / "roc.png"))
    matrix = metrics.confusion(labels, served.argmax(1), dataset.n_classes)
    return [
        *files,
        plots.save_figure(plots.training_curves({i: f["rows"] for i, f in enumerate(fits)}), out / "curves.png"),
        plots.save_figure(plots.confusion_figure(matrix, names, "test, served ensemble"), out / "confusion.png"),
    ]


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `classify`)."""
    c = cfg.classify
    return [output_file(c.checkpoint), output_file(c.metrics), output_file(c.details), output_folder(c.plots_dir)]


def _inputs(cfg: Config) -> data.Dataset:
    """The prepared data; a missing/mismatched encoder file fails first."""
    dataset = data.load_prepared(cfg.data)
    if cfg.classify.pretrained != "none":
        build_model(cfg.classify, dataset.n_classes, dataset.image_shape)
    return dataset


def search_only(cfg: Config) -> dict[str, Any]:
    """One fan-out worker: add candidates to the study until it holds classify.n_trials (shared with the
    other workers), nested under tracking.parent_run_id; no final model, no files. `run` then finishes the
    stage from the study. Returns the study's counts and best candidate so far."""
    set_seed(cfg.seed)
    if cfg.classify.threads:
        torch.set_num_threads(cfg.classify.threads)
    with search.trial_parent(cfg, "classify") as parent_id:
        found = search_recipes(cfg, _inputs(cfg), pick_device(cfg.classify.device), parent_id)[0]
        return {k: found[k] for k in ("hparams", "trials", "complete", "pruned", "best_cv_auc", "study")}


def run(cfg: Config) -> dict[str, Any]:
    """The stage: candidates by CV, the chosen one's fold models as the ensemble, test scored once."""
    set_seed(cfg.seed)
    if cfg.classify.threads:
        torch.set_num_threads(cfg.classify.threads)  # OpenMP threads spin against other jobs on a shared CPU
    with tracking.stage_run(cfg, "classify", params_sections=("classify",)) as stage:
        device = pick_device(cfg.classify.device)
        dataset = _inputs(cfg)
        found, kept, pool, folds = search_recipes(cfg, dataset, device, stage.info.run_id)
        mlflow.log_params({f"chosen.{k}": v for k, v in found["hparams"].items()})
        fits = members_for(cfg, dataset, found, kept, pool, folds, device)
        mlflow.log_metrics({f"chosen_{k}": v for k, v in found["chosen_cv"].items()})
        raw_model, kwargs = ensemble.assemble(fits, cfg.classify.tta)
        model, kwargs, fitted = guard.fit(cfg, raw_model, kwargs, pool, folds, dataset.n_classes, device)
        mlflow.log_params(
            {"image_shape": list(dataset.image_shape), "stem_used": kwargs["member_kwargs"].get("stem", "encoder")}
        )
        # the one look at test: the served model, and its members alone (no views) for the spread
        served, raw = predict_proba(model, dataset.test, device), predict_proba(raw_model, dataset.test, device)
        member_probs = [predict_proba(m, dataset.test, device) for m in model.members]
        summary = classification.summarize_ensemble(cfg, dataset, served, member_probs, found)
        summary["served"] |= guard.report(model, dataset.test, raw, served, fitted, device, cfg.guard.ood_max)
        classification.save_ensemble(cfg, dataset, model, kwargs, found, ensemble.members(fits), summary)
        write_json(cfg.classify.metrics, summary)
        write_json(cfg.classify.details, classification.ensemble_details(dataset, found, fits, served, member_probs))
        files = write_plots(cfg, dataset, fits, member_probs, served, raw)
        mlflow.log_metrics(tracking.numeric_metrics(summary))
        tracking.log_files(files, "plots")
        tracking.log_files([Path(cfg.classify.metrics), Path(cfg.classify.details)], "metrics")
        mlflow.log_text(
            metrics.report_text(dataset.test.labels, served, dataset.class_names), "classification_report.txt"
        )
    log.info("classify: served %s", summary["served"])
    return summary
