"""The representation study's library: the splits as arrays, search-space checks, k-fold KNN scores of a
latent space, the refit of a chosen method, paired comparisons against PCA, and the 2-D VAE figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen import data, latent, plots, search, stats
from medgen.config import Config, RepresentConfig
from medgen.errors import ConfigError
from medgen.models import autoencoders
from medgen.training import save_model

log = logging.getLogger(__name__)
CLASSIC = ("pca", "isomap")
SCORES = ("acc", "balanced_acc", "auc")


@dataclass(frozen=True)
class Arrays:
    """Splits as the study needs them. x: (N, C, S, S) in [-1, 1]; flat: (N, C*S*S); y: (N,).

    `pool` = train + val, the set the CV selection runs on; `folds` index into it.
    """

    x: dict[str, torch.Tensor]
    flat: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    n_classes: int
    class_names: tuple[str, ...]
    folds: list[tuple[np.ndarray, np.ndarray]]

    @property
    def n_inputs(self) -> int:
        return self.flat["train"].shape[1]


def load_arrays(cfg: Config) -> Arrays:
    """The prepared splits as tensors, flat arrays and labels, with train+val pooled and its CV folds."""
    dataset = data.load_prepared(cfg.data)
    x, flat, y = {}, {}, {}
    for name in data.SPLITS:
        x[name], labels = data.to_tensors(dataset.split(name))
        flat[name], y[name] = x[name].flatten(1).numpy(), labels.numpy()
    x["pool"] = torch.cat([x["train"], x["val"]])
    flat["pool"], y["pool"] = np.concatenate([flat["train"], flat["val"]]), np.concatenate([y["train"], y["val"]])
    folds = latent.folds(y["pool"], cfg.represent.cv_folds, cfg.seed)
    return Arrays(x, flat, y, dataset.n_classes, dataset.class_names, folds)


def validate(rc: RepresentConfig, arrays: Arrays) -> None:
    """Search spaces the data cannot support fail here, before any training."""
    n_in, fit_min = arrays.n_inputs, min(len(a) for a, _ in arrays.folds)
    if rc.latent_dim_max > n_in:
        raise ConfigError(
            f"represent.latent_dim_max: {rc.latent_dim_max} is larger than the input ({n_in} values per image)"
        )
    if rc.k_max > min(fit_min, len(arrays.y["train"])):
        raise ConfigError(
            f"represent.k_max: {rc.k_max} exceeds the {fit_min} images a KNN is fitted on in each CV fold"
        )
    if "pca" in rc.methods and rc.latent_dim_max > fit_min:
        raise ConfigError(f"represent.latent_dim_max: PCA can give at most {fit_min} components on a CV fold")
    if "isomap" in rc.methods:
        subset = min(rc.isomap_subset, fit_min)
        if rc.latent_dim_max >= subset or rc.isomap_neighbors >= subset:
            raise ConfigError(
                f"represent.isomap_subset: {subset} images cannot give latent_dim_max={rc.latent_dim_max} "
                f"Isomap components with {rc.isomap_neighbors} neighbours; raise isomap_subset"
            )


def cv_metrics(neighbours: list[np.ndarray], arrays: Arrays, k: int) -> dict[str, float]:
    """Mean CV scores of a k-NN from per-fold neighbour labels (one neighbour search serves every k)."""
    per_fold = [
        latent.scores(arrays.y["pool"][b], latent.knn_proba(labels, k, arrays.n_classes))
        for labels, (_, b) in zip(neighbours, arrays.folds)
    ]
    return {f"cv_{m}": float(np.nanmean([s[m] for s in per_fold])) for m in SCORES}


def fold_neighbours(z: np.ndarray, arrays: Arrays, k_max: int) -> list[np.ndarray]:
    """Per fold: labels of the k_max nearest fit-part latents of each eval-part latent. z: (N_pool, d)."""
    y = arrays.y["pool"]
    return [latent.neighbour_labels(z[a], y[a], z[b], k_max) for a, b in arrays.folds]


def make_model(
    cfg: Config, method: str, latent_dim: int, arrays: Arrays, device: torch.device
) -> autoencoders.Autoencoder:
    # Seeded here so a refit with the best trial's parameters repeats that trial exactly.
    """A fresh autoencoder of `method` for the data's image shape, seeded with cfg.seed (a refit repeats its trial)."""
    torch.manual_seed(cfg.seed)
    rc = cfg.represent
    image = arrays.x["train"]
    model = autoencoders.build(
        method,
        latent_dim,
        image_size=image.shape[-1],
        channels=image.shape[1],
        dropout=rc.dropout,
        width=rc.width,
        beta=rc.beta,
    )
    return model.to(device)


def final_scores(z: dict[str, np.ndarray], arrays: Arrays, k: int) -> tuple[dict[str, float], np.ndarray]:
    """KNN fitted on train latents, scored once on val and once on test; also its test probabilities (N, C)."""
    out, probs = {}, {}
    for split in ("val", "test"):
        neighbours = latent.neighbour_labels(z["train"], arrays.y["train"], z[split], k)
        probs[split] = latent.knn_proba(neighbours, k, arrays.n_classes)
        out.update({f"{split}_{m}": v for m, v in latent.scores(arrays.y[split], probs[split]).items()})
    return out, probs["test"]


def refit(cfg: Config, method: str, params: dict[str, Any], arrays: Arrays, device: torch.device):
    """The best trial's representation fitted on train; returns (latents per split, model or None)."""
    rc = cfg.represent
    if method in CLASSIC:
        transform = latent.fit_embedding(
            method, arrays.flat["train"], params["latent_dim"], cfg.seed, rc.isomap_subset, rc.isomap_neighbors
        )
        return {s: transform(arrays.flat[s]) for s in data.SPLITS}, None
    model = make_model(cfg, method, params["latent_dim"], arrays, device)
    latent.fit_autoencoder(model, arrays.x["train"], rc.epochs, params["lr"], rc.batch_size, cfg.seed)
    return {s: latent.encode(model, arrays.x[s]) for s in data.SPLITS}, model


COMPARED = ("balanced_acc", "auc")  # every method vs PCA: one Holm family (medgen.stats)


def add_uncertainty(entries: dict[str, dict], test_probs: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Per method `test_<m>_ci95` (stratified bootstrap over test images; one model, so no seed level) and,
    for every method but PCA, `vs_pca`: paired comparison on the same resampled images, decided by the rule."""
    weights = stats.draw(labels)  # the same resampled test images for every method: paired
    for method, probs in test_probs.items():
        found = stats.describe(labels, [probs], SCORES, weights)
        entries[method].update({f"test_{m}_ci95": found[f"test_{m}_ci95"] for m in SCORES})
    if "pca" not in test_probs:
        return
    family = {
        m: {f"test_{key}": stats.compare(labels, [p], [test_probs["pca"]], key, weights) for key in COMPARED}
        for m, p in test_probs.items()
        if m != "pca"
    }
    for method, found in stats.decide(family).items():
        entries[method]["vs_pca"] = found


def explore(
    cfg: Config, arrays: Arrays, device: torch.device, out_dir: Path
) -> tuple[list[Path], autoencoders.Autoencoder]:
    """A VAE with a 2-D latent: decoded grid montage, class scatter of train means, posterior histograms."""
    rc = cfg.represent
    model = make_model(cfg, rc.explore_method, 2, arrays, device)
    latent.fit_autoencoder(model, arrays.x["train"], rc.explore_epochs, rc.explore_lr, rc.batch_size, cfg.seed)
    model.eval()
    with torch.no_grad():
        mu, logvar = (t.cpu().numpy() for t in model.encode_stats(arrays.x["train"].to(device)))
        axis = torch.linspace(-rc.grid_scale, rc.grid_scale, rc.grid_n)
        # row r, column c decodes (z0, z1) = (axis[c], axis[-1 - r]): z1 grows upwards as in a plot
        grid = torch.stack([axis.repeat(rc.grid_n), axis.flip(0).repeat_interleave(rc.grid_n)], dim=1)
        decoded = data.to_uint8(model.decode(grid.to(device)))
    return [
        plots.save_png(plots.montage(decoded, columns=rc.grid_n, scale=2), out_dir / "latent_grid.png"),
        plots.save_figure(
            plots.latent_scatter(mu, arrays.y["train"], arrays.class_names), out_dir / "latent_scatter.png"
        ),
        plots.save_figure(plots.posterior_histograms(mu, logvar), out_dir / "posterior_hist.png"),
    ], model


def reconstructions(cfg: Config, arrays: Arrays, models: dict[str, Any], explore_vae: Any, out_dir: Path) -> Path:
    """Real test images, then their reconstructions by the best AE and the best VAE (conv preferred)."""
    images = arrays.x["test"][: cfg.represent.n_recon]
    ae = next((m for m in ("ae_conv", "ae_dense") if m in models), None)
    vae = next((m for m in ("vae_conv", "vae_dense") if m in models), None)
    chosen = {m: models[m] for m in (ae, vae) if m}
    if vae is None:
        chosen["vae (2-D latent)"] = explore_vae
    rows = {"test images": data.to_uint8(images)}
    with torch.no_grad():
        for name, model in chosen.items():
            model.eval()
            rows[name] = data.to_uint8(model(images.to(next(model.parameters()).device)))
    return plots.save_figure(plots.reconstruction_rows(rows), out_dir / "reconstructions.png")


def save_encoder(cfg: Config, entries: dict[str, dict], models: dict[str, Any]) -> str | None:
    """The encoder of the best convolutional model (by its CV selection score) for issue 4's classifier."""
    conv = [m for m in ("ae_conv", "vae_conv") if m in models]
    if not conv:
        log.warning("no convolutional method in represent.methods: %s not written", cfg.represent.encoder_checkpoint)
        return None
    key = f"cv_{cfg.represent.objective}"
    best = max(conv, key=lambda m: entries[m][key])
    encoder = models[best].encoder.cpu().eval()
    config = {
        **{k: entries[best][k] for k in ("latent_dim", "k", "lr")},
        "method": best,
        "out_features": int(encoder.out_features),
        "input_range": [-1.0, 1.0],
    }
    save_model(cfg.represent.encoder_checkpoint, encoder, encoder.init_kwargs, config=config, metrics=entries[best])
    return best


def summary(entries: dict[str, dict]) -> dict[str, float]:
    """Best learned method's test balanced accuracy minus PCA's (positive: the learned latent wins)."""
    learned = [m for m in entries if m not in CLASSIC]
    if not learned or "pca" not in entries:
        return {}
    best = max(learned, key=lambda m: entries[m]["test_balanced_acc"])
    return {
        "best_learned_test_balanced_acc": entries[best]["test_balanced_acc"],
        "best_learned_minus_pca_test_balanced_acc": entries[best]["test_balanced_acc"]
        - entries["pca"]["test_balanced_acc"],
    }


class FoldEmbeddings:
    """PCA/Isomap fitted once per CV fold at latent_dim_max, embedding the whole pool: (N_pool, latent_dim_max)
    per fold. Both are nested, so any latent_dim's trial truncates these; neighbours are cached per latent_dim."""

    def __init__(self, cfg: Config, method: str, arrays: Arrays) -> None:
        rc, pool = cfg.represent, arrays.flat["pool"]
        self.arrays, self.k_max, self.cache = arrays, rc.k_max, {}
        self.embedded = []
        for a, _ in arrays.folds:
            transform = latent.fit_embedding(
                method, pool[a], rc.latent_dim_max, cfg.seed, rc.isomap_subset, rc.isomap_neighbors
            )
            self.embedded.append(transform(pool))

    def neighbours(self, d: int) -> list[np.ndarray]:
        """Per fold: labels of the k_max nearest fit-part points of each eval-part point in the first d dims."""
        if d not in self.cache:
            y, folds = self.arrays.y["pool"], self.arrays.folds
            self.cache[d] = [
                latent.neighbour_labels(z[a, :d], y[a], z[b, :d], self.k_max) for z, (a, b) in zip(self.embedded, folds)
            ]
        return self.cache[d]


def score_best(cfg: Config, method: str, study: Any, arrays: Arrays, device: torch.device):
    """The study's best trial refitted on train and scored once on val and test: (metrics entry, model or None,
    KNN test probabilities (N, C))."""
    params = search.best_params(study)
    z, model = refit(cfg, method, params, arrays, device)
    found = search.counts(study)
    scores, test_probs = final_scores(z, arrays, params["k"])
    entry = {
        **params,
        f"cv_{cfg.represent.objective}": float(study.best_value),
        **scores,
        "trials": found["trials"],
        "pruned": found["pruned"],
    }
    return entry, model, test_probs
