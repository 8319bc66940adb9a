"""Stage `augment`: does synthetic data help the classifier? Four arms, same seeds, paired statistics.

Arms (augment.arms): `baseline` (real data, no augmentation), `classic` (classic augmentation),
`synthetic` (real + generator samples rebalancing the classes), `classic+synthetic` (both). Every arm
retrains the classify stage's model with the hyper-parameters classify chose (read from its
checkpoint), over the same seeds, so arms are compared seed by seed. Synthetic images only ever enter
the training split; validation and test stay real. The best arm is chosen on validation AUC; test
metrics are reported for every arm, never used to choose.

Inputs : data/prepared/<flag>.npz, classify.checkpoint (chosen hyper-parameters),
         <generate.samples_dir>/<flag>/samples.npz (synthetic arms only).
Outputs: augment.metrics, augment.details (per seed), augment.plots_dir/arms.png + arms.csv,
         augment.checkpoint (the best synthetic arm's model by validation AUC, for export).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from medgen import data, plots, tracking
from medgen.config import Config
from medgen.errors import DataError
from medgen.io import write_json
from medgen.stages import classify
from medgen.stages.generate import samples_path
from medgen.stats import mean_std, paired_comparison
from medgen.synthetic import load_samples, rebalance
from medgen.training import load_checkpoint, pick_device, save_model, set_seed

log = logging.getLogger(__name__)
COMPARED = ("auc", "balanced_acc")  # the paired comparisons against baseline


def chosen_hparams(cfg: Config) -> dict[str, float]:
    """The hyper-parameters the classify stage selected on validation (stored in its checkpoint)."""
    return dict(load_checkpoint(cfg.classify.checkpoint)["config"]["hparams"])


def load_synthetic(cfg: Config, dataset: data.Dataset) -> data.Split:
    """The generate stage's samples, checked against the real data before any training."""
    synthetic = load_samples(samples_path(cfg))
    real_shape = dataset.train.images.shape[1:]
    if synthetic.images.shape[1:] != real_shape:
        raise DataError(f"synthetic images are {synthetic.images.shape[1:]}, real ones {real_shape}: regenerate")
    if synthetic.labels.min() < 0 or synthetic.labels.max() >= dataset.n_classes:
        raise DataError(f"synthetic labels outside 0..{dataset.n_classes - 1}: regenerate")
    return synthetic


def arm_split(arm: str, train: data.Split, synthetic: data.Split | None, ratio: float, seed: int) -> data.Split:
    """The training split of one arm; synthetic draws depend on the seed (part of the seed-to-seed spread)."""
    return rebalance(train, synthetic, ratio, seed) if "synthetic" in arm else train


def fit_arm(cfg: Config, arm: str, seed: int, dataset: data.Dataset, train: data.Split, hparams: dict,
            device: torch.device, parent_run_id: str) -> dict[str, Any]:
    """One arm, one seed, as a child MLflow run: fit, then validation and test metrics (test once)."""
    started = time.perf_counter()
    epochs = cfg.augment.epochs or None
    with tracking.child_run(parent_run_id, f"{arm}-seed-{seed}", {"arm": arm, "seed": seed, "n_train": len(train)}):
        model, history = classify.fit_classifier(cfg.classify, train, dataset.val, dataset.n_classes, seed, device,
                                                 hparams, classic_augmentation="classic" in arm, epochs=epochs)
        val = classify.evaluate(model, dataset.val, device)
        test = classify.evaluate(model, dataset.test, device)
        mlflow.log_metrics({f"val_{k}": v for k, v in val.items()} | {f"test_{k}": v for k, v in test.items()})
    log.info("augment %s seed %d: val_auc %.3f test_auc %.3f", arm, seed, val["auc"], test["auc"])
    return {"arm": arm, "seed": seed, "n_train": len(train), "class_counts": data.class_counts(train.labels, dataset.n_classes),
            "val": val, "test": test, "model": model.cpu(), "init_kwargs": history["init_kwargs"],
            "best_epoch": history["best_epoch"], "seconds": time.perf_counter() - started}


def summarize(results: list[dict], arms: tuple[str, ...]) -> dict[str, Any]:
    """Mean ± std per arm, paired deltas against baseline, best arm by validation AUC."""
    by_arm = {arm: sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms}
    summary: dict[str, Any] = {"seeds": len(by_arm[arms[0]]), "arms": {}, "delta_vs_baseline": {}}
    for arm, rows in by_arm.items():
        entry = {"n_train": rows[0]["n_train"], "val_auc_mean": mean_std([r["val"]["auc"] for r in rows])[0]}
        for key in ("auc", "balanced_acc", "acc", "f1"):
            entry[f"test_{key}_mean"], entry[f"test_{key}_std"] = mean_std([r["test"][key] for r in rows])
        summary["arms"][arm] = entry
    for arm in arms[1:]:
        summary["delta_vs_baseline"][arm] = {
            f"test_{key}": paired_comparison([r["test"][key] for r in by_arm[arm]], [r["test"][key] for r in by_arm["baseline"]])
            for key in COMPARED
        }
    summary["best_arm"] = max(arms, key=lambda a: summary["arms"][a]["val_auc_mean"])  # validation, not test
    synthetic_arms = [a for a in arms[1:] if "synthetic" in a]
    summary["synthetic_beats_baseline"] = any(
        summary["delta_vs_baseline"][a][f"test_{key}"]["beats"] for a in synthetic_arms for key in COMPARED
    )
    return summary


def save_best_synthetic(cfg: Config, dataset: data.Dataset, results: list[dict], hparams: dict) -> Path | None:
    """The synthetic-arm model with the best validation AUC, in the classify checkpoint format."""
    candidates = [r for r in results if "synthetic" in r["arm"]]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: r["val"]["auc"])
    config = {"n_classes": dataset.n_classes, "class_names": list(dataset.class_names), "input_size": cfg.data.size,
              "input_shape": [1, cfg.data.size, cfg.data.size], "input_range": [-1.0, 1.0], "flag": cfg.data.flag,
              "arm": best["arm"], "seed": best["seed"], "hparams": hparams, "ratio": cfg.augment.ratio,
              "profile": cfg.profile}
    scores = {f"test_{k}": v for k, v in best["test"].items()} | {f"val_{k}": v for k, v in best["val"].items()}
    return save_model(cfg.augment.checkpoint, best["model"], best["init_kwargs"], config=config, metrics=scores)


def write_outputs(cfg: Config, results: list[dict], summary: dict) -> list[Path]:
    out = Path(cfg.augment.plots_dir)
    per_arm = {arm: {key: [r["test"][key] for r in results if r["arm"] == arm] for key in COMPARED} for arm in cfg.augment.arms}
    rows = [",".join(["arm", "seed", "n_train", *[f"test_{k}" for k in COMPARED], "val_auc"])]
    rows += [",".join([r["arm"], str(r["seed"]), str(r["n_train"]), *[f"{r['test'][k]:.6f}" for k in COMPARED],
                       f"{r['val']['auc']:.6f}"]) for r in results]
    out.mkdir(parents=True, exist_ok=True)
    (out / "arms.csv").write_text("\n".join(rows) + "\n")
    details = [{k: v for k, v in r.items() if k not in ("model", "init_kwargs")} for r in results]
    write_json(cfg.augment.metrics, summary)
    write_json(cfg.augment.details, {"per_seed": details})
    return [out / "arms.csv", plots.save_figure(plots.arms_figure(per_arm), out / "arms.png"),
            Path(cfg.augment.metrics), Path(cfg.augment.details)]


def run(cfg: Config) -> dict[str, Any]:
    set_seed(cfg.seed)
    if cfg.classify.threads:
        torch.set_num_threads(cfg.classify.threads)
    with tracking.stage_run(cfg, "augment", params_sections=("augment", "classify")) as stage:
        device = pick_device(cfg.classify.device)
        dataset = data.load_prepared(cfg.data)
        hparams = chosen_hparams(cfg)
        needs_synthetic = any("synthetic" in arm for arm in cfg.augment.arms)
        synthetic = load_synthetic(cfg, dataset) if needs_synthetic else None
        train = classify.subsample(dataset.train, cfg.classify.train_fraction, cfg.seed)
        seeds = range(cfg.seed, cfg.seed + cfg.augment.seeds)
        results = [
            fit_arm(cfg, arm, seed, dataset, arm_split(arm, train, synthetic, cfg.augment.ratio, seed), hparams, device,
                    stage.info.run_id)
            for arm in cfg.augment.arms for seed in seeds
        ]
        summary = summarize(results, cfg.augment.arms)
        save_best_synthetic(cfg, dataset, results, hparams)
        files = write_outputs(cfg, results, summary)
        mlflow.log_metrics(tracking.numeric_metrics(summary))
        mlflow.set_tag("medgen.best_arm", summary["best_arm"])
        tracking.log_files(files, "augment")
    log.info("augment: best arm %s; synthetic beats baseline: %s", summary["best_arm"], summary["synthetic_beats_baseline"])
    return summary
