"""Latent-space tools for the representation study: KNN scored on embeddings, PCA/Isomap embeddings with
one fit serving every latent_dim, stratified folds, and the autoencoders' part of the training loop.

Arrays: images flattened to float (N, D) in [-1, 1] for PCA/Isomap; tensors (N, C, S, S) for the models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors

from medgen.training import Fitted, Loop, Steps, fit


def neighbour_labels(z_fit: np.ndarray, y_fit: np.ndarray, z_eval: np.ndarray, k_max: int) -> np.ndarray:
    """Labels of the k_max nearest fitted points of each eval point, nearest first: (N_eval, k_max).

    One neighbour search serves every k <= k_max (a KNN with k neighbours votes with the first k columns).
    """
    index = NearestNeighbors(n_neighbors=k_max).fit(z_fit)
    _, idx = index.kneighbors(z_eval)
    return y_fit[idx]


def knn_proba(labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Uniform-vote class probabilities of a k-NN from neighbour labels (N, >=k): (N, n_classes)."""
    counts = np.stack([(labels[:, :k] == c).sum(1) for c in range(n_classes)], axis=1)
    return counts / float(k)


def scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """acc, balanced_acc and auc (one-vs-rest for more than two classes; nan if a class is absent)."""
    pred = proba.argmax(1)  # ties -> the smaller label, as scikit-learn's KNeighborsClassifier does
    n_classes = proba.shape[1]
    if len(np.unique(y_true)) < n_classes:
        auc = float("nan")
    elif n_classes == 2:
        auc = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        auc = float(roc_auc_score(y_true, proba, multi_class="ovr"))
    return {
        "acc": float((pred == y_true).mean()),
        "balanced_acc": float(balanced_accuracy_score(y_true, pred)),
        "auc": auc,
    }


def knn_scores(z_fit, y_fit, z_eval, y_eval, k: int, n_classes: int) -> dict[str, float]:
    """acc, balanced_acc and auc of a uniform k-NN fitted on (z_fit, y_fit), scored on (z_eval, y_eval)."""
    return scores(y_eval, knn_proba(neighbour_labels(z_fit, y_fit, z_eval, k), k, n_classes))


def folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (fit indices, eval indices), shuffled with `seed` so every method sees the same folds."""
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def cv_score(z: np.ndarray, y: np.ndarray, fold_list, k: int, n_classes: int, metric: str) -> float:
    """Mean over folds of the KNN metric, KNN fitted on each fold's fit part of z (N, d)."""
    values = [knn_scores(z[a], y[a], z[b], y[b], k, n_classes)[metric] for a, b in fold_list]
    return float(np.mean(values))


EMBEDDINGS = ("pca", "isomap")  # what fit_embedding fits (the represent methods that are not autoencoders)
TRANSFORM_CHUNK = 4096  # rows per transform call: Isomap holds a (rows, n_fitted) geodesic matrix per call


def fit_embedding(
    method: str, x_fit: np.ndarray, n_components: int, seed: int, isomap_subset: int = 0, isomap_neighbors: int = 10
) -> Callable[[np.ndarray], np.ndarray]:
    """Fit PCA or Isomap with n_components on x_fit (N, D); return transform: (M, D) -> (M, n_components).

    Both embeddings are nested: the first d components of an n_components fit equal a d-component fit
    (PCA: leading principal axes; Isomap: leading eigenvectors of the geodesic kernel, dense solver), so
    one fit at the largest latent_dim serves every trial by truncation.
    Isomap is fitted on a stratification-free random subset of `isomap_subset` rows (O(n^2) geodesics).
    The transform runs in chunks of TRANSFORM_CHUNK rows (each row is embedded independently), so
    embedding CIFAR-10's 50,000 images against a 5,000-image Isomap needs 160 MB of geodesics, not 2 GB.
    """
    if method == "pca":
        from sklearn.decomposition import PCA

        model = PCA(n_components=n_components, svd_solver="full", random_state=seed).fit(x_fit)
        return _chunked(model.transform)
    if method == "isomap":
        from sklearn.manifold import Isomap

        rows = np.random.default_rng(seed).permutation(len(x_fit))[: isomap_subset or len(x_fit)]
        model = Isomap(n_neighbors=isomap_neighbors, n_components=n_components, eigen_solver="dense")
        model.fit(x_fit[rows])
        return _chunked(model.transform)
    raise ValueError(f"unknown embedding {method!r} (known: {', '.join(EMBEDDINGS)})")


def _chunked(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(x: np.ndarray) -> np.ndarray:
        if len(x) <= TRANSFORM_CHUNK:  # one call, as before chunking existed (BreastMNIST: bit-identical)
            return transform(x)
        return np.concatenate([transform(x[i : i + TRANSFORM_CHUNK]) for i in range(0, len(x), TRANSFORM_CHUNK)])

    return apply


@torch.no_grad()
def encode(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Latents (N, latent_dim) of images x (N, C, S, S) in eval mode (VAE: posterior means)."""
    model.eval()
    device = next(model.parameters()).device
    parts = [model.encode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy()


class AutoencoderSteps(Steps):
    """The autoencoders' part of the training loop: Adam on model.loss of a batch; per-epoch mean loss parts."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, lr: float) -> None:
        self.model, self.x = model, x
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def step(self, index: torch.Tensor, i: int) -> dict[str, float]:
        loss, parts = self.model.loss(self.x[index].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return parts

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, float]:
        sums: dict[str, float] = {}
        for parts in steps:  # a running sum of value / n_batches, in batch order
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value / len(steps)
        return sums


def fit_autoencoder(
    model: torch.nn.Module,
    x: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    validate: Callable[[int], dict[str, float]] | None = None,
    monitor: str | None = None,
    trial: Any = None,
) -> Fitted:
    """Adam on model.loss over shuffled mini-batches of x (N, C, S, S) for `epochs` epochs (medgen.training.fit).

    Rows hold the epoch's mean loss parts and, with `validate(epoch)`, its figures; `monitor` is reported to
    Optuna's `trial` (which may prune) and logged to MLflow with the rest. The shuffle is seeded by `seed`,
    so a refit with the same parameters repeats the trial.
    """
    loop = Loop(
        epochs,
        batch_size,
        f"fit {type(model).__name__}",
        generator=torch.Generator().manual_seed(seed),
        monitor=monitor,
        trial=trial,
        log_mlflow=validate is not None,
    )
    return fit(AutoencoderSteps(model, x, lr), len(x), loop, validate=validate)
