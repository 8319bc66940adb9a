#!/usr/bin/env python
"""How small a difference can the augment comparison detect with 3, 5 or 10 seeds? A measured power estimate.

Model (docs/statistics.md). The reported difference between two arms is the mean over S seeds of per-seed
paired differences d_s on one test set. Its variance has two parts:
  * seed to seed:  s2_seed / S, where s2_seed is the variance of d_s across seeds on the fixed test set;
  * test sampling: c, the covariance between two seeds' differences under resampling of the test images
    (the part of the test-set luck every seed shares; more seeds do not reduce it).
  SE(S) = sqrt(s2_seed / S + c);  smallest detectable difference = (t_{1-alpha/2,df} + t_{power,df}) * SE(S)
  with df = (s2/S + c)^2 / ((s2/S)^2 / (S - 1)) (Welch-Satterthwaite): the rule medgen.stats applies.
Both parts are measured from per-image test probabilities of two arms over several seeds: the augment
stage writes them (plots/augment/test_probs.csv), or `measure` trains arms for it. s2_seed can be pooled
with the per-seed test metrics of another run (--details metrics/augment_details.json).

    python scripts/power.py measure --seeds 5 --out reports/power_probs.csv    # train baseline + classic
    python scripts/power.py estimate reports/power_probs.csv --details metrics/augment_details.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from medgen import stats
from medgen.metrics import classification_metrics

METRICS = ("auc", "balanced_acc")
SEEDS = (3, 5, 10)


def read_probabilities(path: Path) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """test_probs.csv -> (labels (N,), {arm: {seed: probs (N, C)}})."""
    rows = list(csv.DictReader(path.open()))
    columns = sorted((c for c in rows[0] if c.startswith("p_")), key=lambda c: int(c[2:]))
    arms: dict[str, dict[int, list]] = {}
    labels: dict[int, int] = {}
    for row in rows:
        arms.setdefault(row["arm"], {}).setdefault(int(row["seed"]), []).append([float(row[c]) for c in columns])
        labels[int(row["image"])] = int(row["label"])
    by_arm = {a: {s: np.array(p) for s, p in d.items()} for a, d in arms.items()}
    return np.array([labels[i] for i in sorted(labels)]), by_arm


def components(
    labels: np.ndarray, arm: dict[int, np.ndarray], base: dict[int, np.ndarray], metric: str, n_boot: int
) -> dict[str, float]:
    """s2_seed, the shared test-sampling covariance c and the per-seed test-sampling variance v of d_s."""
    seeds = sorted(set(arm) & set(base))
    weights = stats.draw(labels, n_boot)  # the same resampled images for every seed
    full = np.ones((1, len(labels)))

    def diff(seed: int, w: np.ndarray) -> np.ndarray:
        scored = (stats.weighted_scores(labels, probs[seed], w)[metric] for probs in (arm, base))
        return next(scored) - next(scored)

    d = [float(diff(s, full)[0]) for s in seeds]
    boot = np.stack([diff(s, weights) for s in seeds], axis=1)  # (B, S)
    cov = np.cov(boot, rowvar=False)
    off = cov[~np.eye(len(seeds), dtype=bool)]
    return {
        "seeds": len(seeds),
        "diff": float(np.mean(d)),
        "s2_seed": float(np.var(d, ddof=1)),
        "c_test": float(off.mean()),
        "v_test": float(np.diag(cov).mean()),
    }


def details_s2(
    path: Path, metric: str, baseline: str = "baseline", skip: frozenset[str] = frozenset()
) -> list[tuple[int, float]]:
    """(degrees of freedom, s2_seed) of every arm vs baseline from per-seed test metrics (augment_details.json),
    except the arms in `skip` (already measured from probabilities: the same seeds would count twice)."""
    rows = json.loads(path.read_text())["per_seed"]
    by_arm: dict[str, dict[int, float]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r["test"][metric]
    out = []
    for arm, values in by_arm.items():
        if arm == baseline or arm in skip:
            continue
        d = [values[s] - by_arm[baseline][s] for s in sorted(values)]
        out.append((len(d) - 1, float(np.var(d, ddof=1))))
    return out


def detectable(s2_seed: float, c_test: float, n_seeds: int, alpha: float, power: float) -> float:
    """Smallest true difference the rule's two-sided t test finds with probability `power` at level alpha:
    (t_{1-alpha/2, df} + t_{power, df}) * SE(S), SE and df (Welch-Satterthwaite) as in medgen.stats."""
    from scipy.stats import t

    across, shared = s2_seed / n_seeds, max(c_test, 0.0)
    df = float("inf") if across == 0 else (across + shared) ** 2 / (across**2 / (n_seeds - 1))
    return float((t.ppf(1 - alpha / 2, df) + t.ppf(power, df)) * np.sqrt(across + shared))


def estimate(args: argparse.Namespace) -> dict:
    if not Path(args.probs).is_file():
        sys.exit(
            f"power: error: {args.probs} not found: run the augment stage (`dvc repro augment`) or "
            "`scripts/power.py measure` first"
        )
    labels, arms = read_probabilities(Path(args.probs))
    if args.baseline not in arms or len(arms) < 2 or min(len(seeds) for seeds in arms.values()) < 2:
        sys.exit(f"power: error: {args.probs} needs arm {args.baseline!r} and another arm, each with >= 2 seeds")
    base = arms.pop(args.baseline)
    report: dict = {
        "probs": args.probs,
        "test_images": len(labels),
        "alpha": args.alpha,
        "power": args.power,
        "family": args.family,
        "metrics": {},
    }
    for metric in METRICS:
        found = {arm: components(labels, probs, base, metric, args.n_boot) for arm, probs in arms.items()}
        pooled_df = [(f["seeds"] - 1, f["s2_seed"]) for f in found.values()]
        if args.details:
            pooled_df += details_s2(Path(args.details), metric, args.baseline, frozenset(arms))
        df = sum(k for k, _ in pooled_df)
        s2 = sum(k * v for k, v in pooled_df) / df
        c = float(np.mean([f["c_test"] for f in found.values()]))
        table = {
            str(s): {
                "holm_worst": detectable(s2, c, s, args.alpha / args.family, args.power),
                "unadjusted": detectable(s2, c, s, args.alpha, args.power),
            }
            for s in args.seeds
        }
        report["metrics"][metric] = {
            "by_arm": found,
            "s2_seed_pooled": s2,
            "s2_seed_df": df,
            "c_test": c,
            "sd_seed": float(np.sqrt(s2)),
            "sd_test_floor": float(np.sqrt(max(c, 0.0))),
            "detectable": table,
        }
    return report


def print_table(report: dict) -> None:
    print(
        f"test images {report['test_images']}, alpha {report['alpha']}, power {report['power']}, "
        f"Holm family {report['family']} (worst case alpha/{report['family']})"
    )
    print(
        "| metric | seed sd of a paired diff | test-sampling floor (sd) | "
        + " | ".join(f"{s} seeds" for s in report["metrics"][METRICS[0]]["detectable"])
        + " |"
    )
    print("|---|---|---|" + "---|" * len(report["metrics"][METRICS[0]]["detectable"]))
    for metric, m in report["metrics"].items():
        cells = [f"{v['unadjusted']:.3f} ({v['holm_worst']:.3f})" for v in m["detectable"].values()]
        print(
            f"| {metric} | {m['sd_seed']:.4f} (df {m['s2_seed_df']}) | {m['sd_test_floor']:.4f} | "
            + " | ".join(cells)
            + " |"
        )
    print("cells: smallest difference detected with the stated power at alpha (and at the Holm worst case)")


def measure(args: argparse.Namespace) -> None:
    """Train `arms` over `seeds` seeds with the hyper-parameters classify chose; write test probabilities."""
    import torch

    from medgen import arms, classification, data
    from medgen.params import load_config
    from medgen.training import pick_device

    cfg = load_config(args.params, profile=args.profile, overrides=args.set)
    torch.set_num_threads(cfg.classify.threads or torch.get_num_threads())
    hparams = json.loads(Path(args.hparams_from).read_text())["search"]["hparams"]
    dataset, device = data.load_prepared(cfg.data), pick_device(cfg.classify.device)
    train = classification.subsample(dataset.train, cfg.classify.train_fraction, cfg.seed)
    synthetic = arms.load_synthetic(cfg, dataset) if any("synthetic" in a for a in args.arms) else None
    rows = [["arm", "seed", "image", "label", *[f"p_{c}" for c in range(dataset.n_classes)]]]
    for arm in args.arms:
        for seed in range(cfg.seed, cfg.seed + args.seeds):
            started = time.perf_counter()
            split = arms.arm_split(arm, train, synthetic, cfg.augment.ratio, seed)
            model, _ = classification.fit_classifier(
                cfg.classify,
                split,
                dataset.val,
                dataset.n_classes,
                seed,
                device,
                hparams,
                classic_augmentation="classic" in arm,
                epochs=cfg.augment.epochs or None,
            )
            probs = classification.predict_proba(model, dataset.test, device)
            test = classification_metrics(dataset.test.labels, probs)
            print(
                f"{arm} seed {seed}: auc {test['auc']:.4f} balanced_acc {test['balanced_acc']:.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            rows += [
                [arm, seed, i, int(y), *[f"{p:.6f}" for p in row]]
                for i, (y, row) in enumerate(zip(dataset.test.labels, probs))
            ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="smallest detectable differences from per-image test probabilities")
    est.add_argument("probs", help="CSV arm,seed,image,label,p_0.. (plots/augment/test_probs.csv or `measure`'s)")
    est.add_argument("--details", default=None, help="augment_details.json of another run: pools its seed spread")
    est.add_argument("--baseline", default="baseline")
    est.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    est.add_argument("--alpha", type=float, default=stats.ALPHA)
    est.add_argument("--power", type=float, default=0.8)
    est.add_argument("--family", type=int, default=9, help="comparisons in the Holm family (augment: 3 arms x 3)")
    est.add_argument("--n-boot", type=int, default=stats.N_BOOT)
    est.add_argument("--json", default=None, help="also write the report here")
    mea = sub.add_parser("measure", help="train arms over seeds and write their test probabilities")
    mea.add_argument("--params", default="params.yaml")
    mea.add_argument("--profile", default=None)
    mea.add_argument("-S", "--set", action="append", default=[], help="section.key=value override")
    mea.add_argument(
        "--hparams-from",
        default="metrics/classify_details.json",
        help="classify's chosen hyper-parameters (its details file)",
    )
    mea.add_argument("--arms", nargs="+", default=["baseline", "classic"])
    mea.add_argument("--seeds", type=int, default=5)
    mea.add_argument("--out", default="reports/power_probs.csv")
    args = parser.parse_args(argv)
    if args.command == "measure":
        measure(args)
        return 0
    report = estimate(args)
    print_table(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
