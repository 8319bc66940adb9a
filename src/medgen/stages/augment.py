"""Stage `augment`: does synthetic data help the classifier? Four arms, same seeds, paired statistics.

Arms (augment.arms): `baseline` (real data, no augmentation), `classic` (classic augmentation),
`synthetic` (real + generator samples rebalancing the classes), `classic+synthetic` (both). Every arm
retrains one model per seed with the recipe, lr and weight decay classify chose by cross-validation
(read from its checkpoint; classic augmentation on or off by arm, early-stopped on validation), over the
same seeds, so arms are compared seed by seed. Synthetic images only ever enter
the training split; validation and test stay real. The best arm is chosen on validation AUC; test
metrics are reported for every arm, never used to choose.

Inputs : data/prepared/<flag>.npz, classify.checkpoint (chosen recipe),
         <generate.samples_dir>/<flag>/samples.npz (synthetic arms only).
Outputs: augment.metrics (per arm: mean, std and 95% interval of each test metric; per arm vs baseline:
         paired difference, interval, p-value and `significant` by medgen.stats' rule), augment.details
         (per seed), augment.plots_dir/arms.png + arms.csv + test_probs.csv (per-image test probabilities
         of every arm and seed: what scripts/power.py reads), augment.checkpoint (the best synthetic arm's
         model by validation AUC, for export). Timings go to MLflow and the log, not to the metrics files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from medgen import arms, data, metrics, plots, tracking
from medgen.classification import evaluate, fit_classifier, input_spec, predict_proba, recipe_of, subsample
from medgen.config import ClassifyConfig, Config
from medgen.io import write_json, write_text
from medgen.outputs import Output, output_file, output_folder
from medgen.progress import Progress
from medgen.training import load_checkpoint, pick_device, save_model, set_seed

log = logging.getLogger(__name__)


def chosen_recipe(cfg: Config) -> tuple[ClassifyConfig, dict[str, float]]:
    """The recipe (classify section with its settings) and lr / weight decay classify chose by cross-validation,
    as its checkpoint records them."""
    return recipe_of(cfg.classify, load_checkpoint(cfg.classify.checkpoint))


def fit_arm(
    cfg: Config,
    arm: str,
    seed: int,
    dataset: data.Dataset,
    train: data.Split,
    chosen: tuple[ClassifyConfig, dict],
    device: torch.device,
    parent_run_id: str,
) -> dict[str, Any]:
    """One arm, one seed, as a child MLflow run: fit, then validation and test metrics (test once)."""
    started = time.perf_counter()
    epochs = cfg.augment.epochs or None
    with tracking.child_run(parent_run_id, f"{arm}-seed-{seed}", {"arm": arm, "seed": seed, "n_train": len(train)}):
        model, history = fit_classifier(
            chosen[0],
            train,
            dataset.val,
            dataset.n_classes,
            seed,
            device,
            chosen[1],
            classic_augmentation="classic" in arm,
            epochs=epochs,
        )
        val = evaluate(model, dataset.val, device)
        probs = predict_proba(model, dataset.test, device)
        test = metrics.classification_metrics(dataset.test.labels, probs)
        seconds = time.perf_counter() - started
        mlflow.log_metrics(
            {f"val_{k}": v for k, v in val.items()} | {f"test_{k}": v for k, v in test.items()} | {"seconds": seconds}
        )
    log.info("augment %s seed %d: val_auc %.3f test_auc %.3f (%.0f s)", arm, seed, val["auc"], test["auc"], seconds)
    return {
        "arm": arm,
        "seed": seed,
        "n_train": len(train),
        "class_counts": data.class_counts(train.labels, dataset.n_classes),
        "val": val,
        "test": test,
        "probs": probs,
        "model": model.cpu(),
        "init_kwargs": history["init_kwargs"],
        "best_epoch": history["best_epoch"],
    }


def save_best_synthetic(cfg: Config, dataset: data.Dataset, results: list[dict], hparams: dict) -> Path | None:
    """The synthetic-arm model with the best validation AUC, in the classify checkpoint format."""
    candidates = [r for r in results if "synthetic" in r["arm"]]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: r["val"]["auc"])
    config = {
        **input_spec(dataset),
        "flag": cfg.data.flag,
        "arm": best["arm"],
        "seed": best["seed"],
        "hparams": hparams,
        "ratio": cfg.augment.ratio,
        "profile": cfg.profile,
    }
    scores = {f"test_{k}": v for k, v in best["test"].items()} | {f"val_{k}": v for k, v in best["val"].items()}
    return save_model(cfg.augment.checkpoint, best["model"], best["init_kwargs"], config=config, metrics=scores)


def write_outputs(cfg: Config, results: list[dict], summary: dict, labels: np.ndarray) -> list[Path]:
    """arms.csv, test_probs.csv, arms.png and the metrics and details files; returns the paths written."""
    out = Path(cfg.augment.plots_dir)
    shown = arms.VERDICT
    per_arm = {
        arm: {key: [r["test"][key] for r in results if r["arm"] == arm] for key in shown} for arm in cfg.augment.arms
    }
    intervals = {arm: {key: summary["arms"][arm][f"test_{key}_ci95"] for key in shown} for arm in cfg.augment.arms}
    rows = [",".join(["arm", "seed", "n_train", *[f"test_{k}" for k in shown], "val_auc"])]
    rows += [
        ",".join(
            [
                r["arm"],
                str(r["seed"]),
                str(r["n_train"]),
                *[f"{r['test'][k]:.6f}" for k in shown],
                f"{r['val']['auc']:.6f}",
            ]
        )
        for r in results
    ]
    write_text(out / "arms.csv", "\n".join(rows) + "\n")
    details = [{k: v for k, v in r.items() if k not in ("model", "init_kwargs", "probs")} for r in results]
    write_json(cfg.augment.metrics, summary)
    write_json(cfg.augment.details, {"per_seed": details})
    return [
        out / "arms.csv",
        arms.write_probabilities(results, labels, out / "test_probs.csv"),
        plots.save_figure(plots.arms_figure(per_arm, intervals), out / "arms.png"),
        Path(cfg.augment.metrics),
        Path(cfg.augment.details),
    ]


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs, metrics and plots of `augment`)."""
    a = cfg.augment
    return [output_file(a.checkpoint), output_file(a.metrics), output_file(a.details), output_folder(a.plots_dir)]


def run(cfg: Config) -> dict[str, Any]:
    """The stage: every arm over the same seeds, paired statistics, the best synthetic arm's checkpoint."""
    set_seed(cfg.seed)
    if cfg.classify.threads:
        torch.set_num_threads(cfg.classify.threads)
    with tracking.stage_run(cfg, "augment", params_sections=("augment", "classify")) as stage:
        device = pick_device(cfg.classify.device)
        dataset = data.load_prepared(cfg.data)
        chosen = chosen_recipe(cfg)
        needs_synthetic = any("synthetic" in arm for arm in cfg.augment.arms)
        synthetic = arms.load_synthetic(cfg, dataset) if needs_synthetic else None
        train = subsample(dataset.train, cfg.classify.train_fraction, cfg.seed)
        seeds = range(cfg.seed, cfg.seed + cfg.augment.seeds)
        results = []
        with Progress(len(cfg.augment.arms) * len(seeds), "augment arms x seeds", unit="fits") as progress:
            for arm in cfg.augment.arms:
                for seed in seeds:
                    split = arms.arm_split(arm, train, synthetic, cfg.augment.ratio, seed)
                    results.append(fit_arm(cfg, arm, seed, dataset, split, chosen, device, stage.info.run_id))
                    progress.update(len(results), arm=arm, seed=seed, test_auc=results[-1]["test"]["auc"])
        summary = arms.summarize(results, cfg.augment.arms, dataset.test.labels)
        save_best_synthetic(cfg, dataset, results, chosen[1])
        files = write_outputs(cfg, results, summary, dataset.test.labels)
        mlflow.log_metrics(tracking.numeric_metrics(summary))
        mlflow.set_tag("medgen.best_arm", summary["best_arm"])
        tracking.log_files(files, "augment")
    log.info(
        "augment: best arm %s; synthetic beats baseline: %s", summary["best_arm"], summary["synthetic_beats_baseline"]
    )
    return summary
