"""The augment study's library: the synthetic set checked against the real data, each arm's training split,
and the arms' paired statistics (per arm: mean, std and interval; per arm vs baseline: a Holm family)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medgen import data, metrics, stats
from medgen.config import Config
from medgen.errors import DataError
from medgen.io import write_text
from medgen.synthetic import load_samples, rebalance, samples_path

REPORTED = ("auc", "balanced_acc", "acc", "f1", "minority_recall")  # per arm: mean, std, ci95
COMPARED = ("auc", "balanced_acc", "minority_recall")  # paired against baseline: one Holm family
VERDICT = ("auc", "balanced_acc")  # synthetic_beats_baseline: a significant gain on one of these


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


def summarize(results: list[dict], arms: tuple[str, ...], labels: np.ndarray) -> dict[str, Any]:
    """Per arm mean, std and 95% interval of the test metrics; every arm vs baseline as a paired comparison
    decided by medgen.stats' rule (Holm over all arms x COMPARED); best arm by validation AUC."""
    by_arm = {arm: sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms}
    seeds = [r["seed"] for r in by_arm[arms[0]]]
    if any([r["seed"] for r in rows] != seeds for rows in by_arm.values()):
        found = {a: [r["seed"] for r in rs] for a, rs in by_arm.items()}
        raise ValueError(f"arms were not trained on the same seeds: {found}")
    probs = {arm: [r["probs"] for r in rows] for arm, rows in by_arm.items()}
    weights = stats.draw(labels)  # the same resampled test images for every arm and seed: paired
    summary: dict[str, Any] = {"seeds": len(seeds), "arms": {}}
    for arm, rows in by_arm.items():
        summary["arms"][arm] = {
            "n_train": rows[0]["n_train"],
            "val_auc_mean": metrics.mean_std([r["val"]["auc"] for r in rows])[0],
            **stats.describe(labels, probs[arm], REPORTED, weights),
        }
    family = {
        arm: {f"test_{key}": stats.compare(labels, probs[arm], probs["baseline"], key, weights) for key in COMPARED}
        for arm in arms[1:]
    }
    summary["vs_baseline"] = stats.decide(family)
    summary["rule"] = stats.rule(sum(len(v) for v in family.values()))
    summary["best_arm"] = max(arms, key=lambda a: summary["arms"][a]["val_auc_mean"])  # validation, not test
    summary["synthetic_beats_baseline"] = any(
        found["significant"] and found["diff"] > 0
        for arm, by_key in summary["vs_baseline"].items()
        if "synthetic" in arm
        for key, found in by_key.items()
        if key.removeprefix("test_") in VERDICT
    )
    return summary


def write_probabilities(results: list[dict], labels: np.ndarray, path: Path) -> Path:
    """arm, seed, image (test index), label, p_0..p_{C-1}: every arm's test predictions (6 decimals)."""
    n_classes = results[0]["probs"].shape[1]
    rows = [",".join(["arm", "seed", "image", "label", *[f"p_{c}" for c in range(n_classes)]])]
    for r in results:
        rows += [
            ",".join([r["arm"], str(r["seed"]), str(i), str(int(y)), *[f"{p:.6f}" for p in row]])
            for i, (y, row) in enumerate(zip(labels, r["probs"]))
        ]
    return write_text(path, "\n".join(rows) + "\n")
