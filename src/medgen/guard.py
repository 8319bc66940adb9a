"""The served classifier's calibration and input guard, fitted without test (issue #18).

Everything here is fitted on held-out material: each cross-validation fold model (an ensemble member) predicts
the train+val rows it never trained on. From those out-of-fold predictions:
  * the calibrator (medgen.calibration.choose);
  * the guard method: candidates are the Mahalanobis distance (Lee et al. 2018: class means and one shared
    Ledoit-Wolf covariance of the member's own training rows) on the spatially pooled features of each
    residual stage, the energy score (Liu et al. 2020) and 1 - the top probability (MSP). The one with the
    highest AUROC between a member's held-out rows and the *selection* half of the OOD sets (medgen.ood_sets),
    averaged over members and sets, is chosen (ties: the earlier candidate);
  * its threshold: the `classify.ood_keep` quantile of the held-out rows' scores (each scored by the member
    that never saw it), so that share of unseen in-distribution images passes.
The ensemble is then rebuilt with the calibrator and the guard's statistics as buffers, so the exported ONNX
graph returns calibrated log-probabilities and the score (medgen.models.classifier.EnsembleClassifier).
Test and the *report* half of the OOD sets are scored once, after all of this (`evaluate`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medgen import calibration, data, ood_sets
from medgen.models.classifier import EnsembleClassifier, tta_view

log = logging.getLogger(__name__)


@torch.no_grad()
def member_outputs(model: EnsembleClassifier, member: int, images: np.ndarray, device, batch: int = 256) -> dict:
    """One member on uint8 images, averaged over the ensemble's views: `features` [(N, D) per stage],
    `log_probs` (N, K) (log of the view-averaged softmax) and `energy` (N,)."""
    net = model.members[member].to(device).eval()
    x, _ = data.to_tensors(data.Split(images, np.zeros(len(images), dtype=np.int64)), str(device))
    feats: list[list[torch.Tensor]] = []
    probs, energy = [], []
    for i in range(0, len(x), batch):
        per_view = [net.features(tta_view(x[i : i + batch], v)) for v in model.views]
        feats.append([sum(p[0][s] for p in per_view) / len(per_view) for s in range(len(per_view[0][0]))])
        probs.append(sum(F.softmax(p[1], dim=1) for p in per_view) / len(per_view))
        energy.append(sum(-torch.logsumexp(p[1], dim=1) for p in per_view) / len(per_view))
    stages = [torch.cat([f[s] for f in feats]).double().cpu().numpy() for s in range(len(feats[0]))]
    return {
        "features": stages,
        "log_probs": torch.log(torch.cat(probs).clamp_min(1e-12)).double().cpu().numpy(),
        "energy": torch.cat(energy).double().cpu().numpy(),
    }


def gaussian(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and the shared Ledoit-Wolf precision (D, D) of features (N, D)."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([features[labels == c].mean(axis=0) for c in range(n_classes)])
    return means, LedoitWolf().fit(features - means[labels]).precision_


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Smallest squared Mahalanobis distance to a class mean: (N,)."""
    diff = features[:, None, :] - means[None]  # (N, K, D)
    return np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1)


def candidate_names(n_stages: int) -> list[str]:
    """The guard's candidates in tie-break order: each feature stage's Mahalanobis distance, energy, MSP."""
    return [f"mahalanobis_stage{s + 1}" for s in range(n_stages)] + ["energy", "msp"]


def _scores(out: dict, stats: list, calibrator: dict) -> dict[str, np.ndarray]:
    """Every candidate's score (N,) for one member's outputs."""
    scored = {f"mahalanobis_stage{s + 1}": mahalanobis(f, *stats[s]) for s, f in enumerate(out["features"])}
    scored["energy"] = out["energy"]
    scored["msp"] = 1.0 - calibration.apply(out["log_probs"], calibrator).max(axis=1)
    return scored


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def fit(cfg, model: EnsembleClassifier, kwargs: dict, pool: data.Split, folds: list, n_classes: int, device) -> tuple:
    """The calibrated, guarded ensemble (eval mode), its constructor kwargs, and what was fitted:
    {"calibrator": ..., "guard": {"method", "threshold", "keep", "selection": {candidate: mean AUROC}}}."""
    shape, limit = data.image_shape(pool.images), cfg.guard.ood_max
    far = ood_sets.capped(ood_sets.far(shape, "selection"), limit)
    near = ood_sets.corruptions(pool.images)
    outs, oof_logp, oof_labels = [], [], []
    for m, fold in enumerate(folds):
        held = fold.held_out
        outs.append({"pool": member_outputs(model, m, pool.images, device)})
        outs[m].update({name: member_outputs(model, m, imgs, device) for name, imgs in far.items()})
        outs[m].update(
            {name: member_outputs(model, m, ood_sets.spaced(imgs[held], limit), device) for name, imgs in near.items()}
        )
        oof_logp.append(outs[m]["pool"]["log_probs"][held])
        oof_labels.append(pool.labels[held])
    kinds = calibration.KINDS if cfg.classify.calibration == "auto" else (cfg.classify.calibration,)
    calibrator = calibration.choose(np.concatenate(oof_logp), np.concatenate(oof_labels), kinds)
    names = candidate_names(len(outs[0]["pool"]["features"]))
    aurocs = {name: [] for name in names}
    held_scores = {name: [] for name in names}
    stats = []
    for m, fold in enumerate(folds):
        feats = outs[m]["pool"]["features"]
        stats.append([gaussian(f[fold.train], pool.labels[fold.train], n_classes) for f in feats])
        inside = {k: v[fold.held_out] for k, v in _scores(outs[m]["pool"], stats[m], calibrator).items()}
        for name in names:
            held_scores[name].append(inside[name])
        for set_name in (*far, *near):
            outside = _scores(outs[m][set_name], stats[m], calibrator)
            for name in names:
                aurocs[name].append(_auroc(inside[name], outside[name]))
    selection = {name: float(np.mean(v)) for name, v in aurocs.items()}
    method = max(names, key=lambda name: (round(selection[name], 6), -names.index(name)))
    threshold = float(np.quantile(np.concatenate(held_scores[method]), cfg.classify.ood_keep))
    guard_spec = {"score": method.split("_")[0]}
    if method.startswith("mahalanobis"):
        level = int(method.removeprefix("mahalanobis_stage")) - 1
        guard_spec |= {"level": level, "dim": int(stats[0][level][0].shape[1])}
    built = {**kwargs, "calibration": calibrator["kind"], "guard": guard_spec}
    guarded = EnsembleClassifier(**built)
    guarded.members.load_state_dict(model.members.state_dict())
    if calibrator["kind"] != "none":
        guarded.cal_temperature.fill_(calibrator["temperature"])
        guarded.cal_bias.copy_(torch.tensor(calibrator["bias"]))
    if guard_spec["score"] == "mahalanobis":
        guarded.guard_means.copy_(torch.from_numpy(np.stack([s[level][0] for s in stats])).float())
        guarded.guard_precision.copy_(torch.from_numpy(np.stack([s[level][1] for s in stats])).float())
    fitted = {
        "calibrator": calibrator,
        "guard": {"method": method, "threshold": threshold, "keep": cfg.classify.ood_keep, "selection": selection},
    }
    log.info("classify: calibrator %s, guard %s (selection AUROC %s)", calibrator, method, selection)
    return guarded.eval(), built, fitted


@torch.no_grad()
def predict(model: EnsembleClassifier, images: np.ndarray, device, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Served probabilities (N, K) and OOD scores (N,) of the guarded ensemble on uint8 images."""
    model = model.to(device).eval()
    x, _ = data.to_tensors(data.Split(images, np.zeros(len(images), dtype=np.int64)), str(device))
    outs = [model.guarded(x[i : i + batch]) for i in range(0, len(x), batch)]
    probs = torch.cat([o[0] for o in outs]).exp().double().cpu().numpy()
    return probs, torch.cat([o[1] for o in outs]).double().cpu().numpy()


def evaluate(model: EnsembleClassifier, test: data.Split, threshold: float, device, limit: int = 0) -> dict[str, Any]:
    """The guard on test (share flagged) and on the report half of every OOD set: AUROC against test, share
    flagged, size. Far sets (digits, patches, constant, noise) and corruptions of the test images, each cut to
    `limit` images when limit > 0 (ood_sets.capped)."""
    test_scores = predict(model, test.images, device)[1]
    shape = data.image_shape(test.images)
    sets = ood_sets.capped({**ood_sets.far(shape, "report"), **ood_sets.corruptions(test.images)}, limit)
    report = {}
    for name, images in sets.items():
        scores = predict(model, images, device)[1]
        report[name] = {
            "auroc": _auroc(test_scores, scores),
            "flagged": float(np.mean(scores > threshold)),
            "n": len(images),
            "kind": "far" if name in ood_sets.FAR else "corruption",
        }
    return {"test_flagged": float(np.mean(test_scores > threshold)), "sets": report}


def report(
    model: EnsembleClassifier,
    test: data.Split,
    raw: np.ndarray,
    served: np.ndarray,
    fitted: dict,
    device,
    limit: int = 0,
) -> dict:
    """The `served` block's calibration and guard entries (test scored once): ece/brier/nll with intervals,
    calibrated and not; the ECE perfectly calibrated probabilities would show here and the observed one's p-value;
    acc/auc/balanced acc before calibration; the calibrator; the guard on test and OOD."""
    from medgen import stats

    weights = stats.draw(test.labels)
    before = stats.ensemble(test.labels, [raw], ("acc", "auc", "balanced_acc"), weights)
    scored = calibration.scores(test.labels, served, weights=weights)
    return {
        **scored,
        **calibration.consistency(served, scored["ece"]),
        **calibration.scores(test.labels, raw, "_uncalibrated", weights),
        **{f"test_{k.replace('_ci95', '')}_uncalibrated{'_ci95' * k.endswith('_ci95')}": v for k, v in before.items()},
        "calibrator": fitted["calibrator"],
        "ood": {**fitted["guard"], **evaluate(model, test, fitted["guard"]["threshold"], device, limit)},
    }
