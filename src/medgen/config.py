"""params.yaml -> frozen, validated dataclasses.

Layout of params.yaml: top-level ``profile`` and ``seed``, one mapping per section (one section per
dataclass below), and ``profiles.<name>``: flat ``section.key: value`` overrides applied on top of the
defaults when that profile is active. Command-line overrides use the same ``section.key=value`` syntax
as ``dvc exp run -S`` and are applied last. Unknown keys and out-of-range values raise ConfigError
naming the key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from medgen.errors import ConfigError

PROFILE_ENV = "MEDGEN_PROFILE"
SOURCE_ENV = "MEDGEN_DATA_SOURCE"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


MIN_SIZE, MAX_SIZE = 28, 224  # image sides medgen's models are built and tested for


@dataclass(frozen=True)
class DataConfig:
    section: ClassVar[str] = "data"
    # a MedMNIST 2D flag, cifar10 / fashionmnist, or any name for a custom npz (then set n_classes)
    flag: str = "breastmnist"
    # square side of the images: MedMNIST+ ships 28/64/128/224, CIFAR-10 is 32, Fashion-MNIST 28; a custom
    # npz may use any side in 28..224 divisible by 4 (the conv autoencoders halve it twice)
    size: int = 28
    n_classes: int = 0  # 0 = take it from the flag (medmnist's INFO, medgen.native)
    # local npz, or a folder holding MedMNIST's file for the size (<flag>_<size>.npz) or a flag's native
    # files (cifar-10-batches-py/, Fashion-MNIST's idx .gz); empty -> $MEDGEN_DATA_SOURCE -> download
    source: str = ""
    download: bool = True
    check_counts: bool = True  # split sizes must be the flag's published ones; false for subsets and stand-ins
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"

    def __post_init__(self) -> None:
        _require(bool(self.flag) and self.flag.isidentifier(), "data.flag", f"must be a plain name, got {self.flag!r}")
        _require(MIN_SIZE <= self.size <= MAX_SIZE and self.size % 4 == 0, "data.size",
                 f"must be a side in {MIN_SIZE}..{MAX_SIZE} divisible by 4 (MedMNIST: 28, 64, 128, 224; "
                 f"CIFAR-10: 32), got {self.size}")
        _require(self.n_classes == 0 or self.n_classes >= 2, "data.n_classes", "must be 0 (auto) or >= 2")

    @property
    def raw_path(self) -> Path:
        return Path(self.raw_dir) / f"{self.flag}.npz"

    @property
    def prepared_path(self) -> Path:
        return Path(self.prepared_dir) / f"{self.flag}.npz"

    def source_path(self) -> str:
        """The local source npz: the param, else the environment variable, else '' (download)."""
        return self.source or os.environ.get(SOURCE_ENV, "")


@dataclass(frozen=True)
class TrackingConfig:
    section: ClassVar[str] = "tracking"
    # Empty -> $MLFLOW_TRACKING_URI -> sqlite:///<store_dir>/mlflow.db (artifacts under <store_dir>/artifacts)
    mlflow_uri: str = ""
    store_dir: str = "mlruns"
    # Empty -> $MEDGEN_OPTUNA_STORAGE -> sqlite:///<store_dir>/optuna.db
    optuna_storage: str = ""
    # MLflow run that stage runs nest under when no run is active in this thread (Prefect passes it as
    # an override; threads lose MLflow's thread-local active run). Empty -> $MEDGEN_PARENT_RUN_ID.
    parent_run_id: str = ""
    # Run state of this checkout (never committed): stage locks, output journals (medgen.outputs).
    state_dir: str = ".medgen"
    # Optuna RDB heartbeat (several workers): a running trial records a heartbeat every optuna_heartbeat_s;
    # one silent for optuna_grace_s is failed and retried once, with its parameters, by another worker.
    optuna_heartbeat_s: int = 60
    optuna_grace_s: int = 180

    def __post_init__(self) -> None:
        _require(self.optuna_heartbeat_s >= 1, "tracking.optuna_heartbeat_s", "must be >= 1 (seconds)")
        _require(self.optuna_grace_s > self.optuna_heartbeat_s, "tracking.optuna_grace_s",
                 f"must be longer than tracking.optuna_heartbeat_s={self.optuna_heartbeat_s}")


@dataclass(frozen=True)
class PrepareConfig:
    section: ClassVar[str] = "prepare"
    montage_per_class: int = 36  # images per class montage (a square number reads best)
    metrics: str = "metrics/prepare.json"
    plots_dir: str = "plots/prepare"

    def __post_init__(self) -> None:
        _require(1 <= self.montage_per_class <= 400, "prepare.montage_per_class", "must be in 1..400")


REPRESENT_METHODS = ("pca", "isomap", "ae_dense", "ae_conv", "vae_dense", "vae_conv")


@dataclass(frozen=True)
class RepresentConfig:
    section: ClassVar[str] = "represent"
    methods: tuple[str, ...] = REPRESENT_METHODS
    # Search space, the same parameter names in every study: latent_dim, k (KNN) and lr (neural only)
    latent_dim_min: int = 2
    latent_dim_max: int = 128
    k_min: int = 1
    k_max: int = 100
    lr_min: float = 1e-4
    lr_max: float = 1e-2
    sampler: str = "tpe"  # tpe | random (the assignment's random search: every trial a seeded uniform draw)
    trials_classic: int = 40  # pca / isomap trials (cheap: one fit per fold serves every latent_dim and k)
    trials_neural: int = 10  # per autoencoder method
    cv_folds: int = 5  # stratified k-fold on train+val selects every method (val alone is 78 images)
    isomap_subset: int = 400  # Isomap is fitted on this many training images (it is O(n^2) memory/time)
    isomap_neighbors: int = 10
    epochs: int = 15
    batch_size: int = 64
    dropout: float = 0.2  # dense AE
    width: int = 16  # conv models: channels of the first conv layer
    beta: float = 1.0  # VAE KL weight
    objective: str = "balanced_acc"  # or "auc": KNN metric maximised by every study
    prune_percentile: float = 50.0  # 50 = median pruner
    prune_startup_trials: int = 3
    prune_warmup_epochs: int = 3
    # Latent exploration: a VAE with a 2-D latent decoded over linspace(-scale, scale, grid_n)^2
    explore_method: str = "vae_conv"
    explore_epochs: int = 40
    explore_lr: float = 1e-3
    grid_n: int = 15
    grid_scale: float = 2.5
    n_recon: int = 10
    device: str = "auto"
    # torch CPU threads: 1 is fastest for these small models on a shared 2-core machine (measured: 2
    # threads ran 5-10x slower under contention)
    threads: int = 1
    metrics: str = "metrics/represent.json"
    plots_dir: str = "plots/represent"
    encoder_checkpoint: str = "models/represent/encoder.pt"

    def __post_init__(self) -> None:
        s = "represent"
        _require(len(self.methods) > 0, f"{s}.methods", f"is empty: choose from {', '.join(REPRESENT_METHODS)}")
        for m in self.methods:
            _require(m in REPRESENT_METHODS, f"{s}.methods", f"unknown method {m!r} (known: {', '.join(REPRESENT_METHODS)})")
        _require(len(set(self.methods)) == len(self.methods), f"{s}.methods", "lists a method twice")
        _require(self.latent_dim_min >= 1, f"{s}.latent_dim_min", "must be >= 1")
        _require(self.k_min >= 1, f"{s}.k_min", "must be >= 1")
        _require(self.lr_min > 0, f"{s}.lr_min", "must be > 0 (lr is searched on a log scale)")
        for name, low, high in (("latent_dim", self.latent_dim_min, self.latent_dim_max),
                                ("k", self.k_min, self.k_max), ("lr", self.lr_min, self.lr_max)):
            _require(low <= high, f"{s}.{name}_min", f"search space is empty: {name}_min={low} > {name}_max={high}")
        _require(self.sampler in ("tpe", "random"), f"{s}.sampler", f"must be tpe or random, got {self.sampler!r}")
        _require(self.trials_classic >= 1 and self.trials_neural >= 1, f"{s}.trials_*", "must be >= 1")
        _require(self.cv_folds >= 2, f"{s}.cv_folds", "must be >= 2")
        _require(self.isomap_neighbors >= 2, f"{s}.isomap_neighbors", "must be >= 2")
        _require(self.epochs >= 1 and self.explore_epochs >= 1, f"{s}.epochs", "must be >= 1")
        _require(self.batch_size >= 2, f"{s}.batch_size", "must be >= 2 (batch norm)")
        _require(0 <= self.dropout < 1, f"{s}.dropout", "must be in [0, 1)")
        _require(self.beta > 0, f"{s}.beta", "must be > 0")
        _require(self.objective in ("balanced_acc", "auc"), f"{s}.objective", "must be balanced_acc or auc")
        _require(0 < self.prune_percentile < 100, f"{s}.prune_percentile", "must be in (0, 100)")
        _require(self.explore_method in ("vae_dense", "vae_conv"), f"{s}.explore_method", "must be vae_dense or vae_conv")
        _require(self.grid_n >= 2 and self.grid_scale > 0, f"{s}.grid_n", "grid_n must be >= 2 and grid_scale > 0")
        _require(self.threads >= 1, f"{s}.threads", "must be >= 1")
        _require(1 <= self.n_recon <= 64, f"{s}.n_recon", "must be in 1..64")

    @property
    def neural_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m not in ("pca", "isomap"))


@dataclass(frozen=True)
class ExportConfig:
    section: ClassVar[str] = "export"
    # Inputs: checkpoints written with medgen.training.save_model (the lead points these at the
    # classify / augment / generate outputs). The augmented classifier is exported only when it exists.
    classifier_checkpoint: str = "models/classify/best.pt"
    augmented_checkpoint: str = "models/augment/best.pt"
    generator_checkpoint: str = "models/generate/generator.pt"
    out_dir: str = "models/export"  # <name>.onnx + <name>.json per model; the service reads this folder
    metrics: str = "metrics/export.json"
    opset: int = 17
    parity_tolerance: float = 1e-4  # max |onnxruntime - torch| allowed; above it the stage fails
    parity_batches: tuple[int, ...] = (1, 7, 64)  # batch 1 and N: dynamic axes have mismatched silently
    register: bool = True  # register in the MLflow model registry with `alias`
    alias: str = "champion"

    def __post_init__(self) -> None:
        _require(bool(self.classifier_checkpoint), "export.classifier_checkpoint", "must be a path")
        _require(bool(self.generator_checkpoint), "export.generator_checkpoint", "must be a path")
        _require(bool(self.out_dir), "export.out_dir", "must be a path")
        _require(11 <= self.opset <= 21, "export.opset", f"must be in 11..21, got {self.opset}")
        _require(0 < self.parity_tolerance <= 1e-2, "export.parity_tolerance", "must be in (0, 1e-2]")
        _require(len(self.parity_batches) > 0 and all(1 <= b <= 512 for b in self.parity_batches),
                 "export.parity_batches", "must be a non-empty list of sizes in 1..512")
        _require(self.alias.isidentifier(), "export.alias", f"must be a plain name, got {self.alias!r}")
@dataclass(frozen=True)
class ServeConfig:
    """Limits of the inference service; `medgen serve` passes them as MEDGEN_* variables (serving/settings.py
    holds the same defaults: the service runs without medgen, e.g. in the container). Keys never live here."""

    section: ClassVar[str] = "serve"
    max_body_bytes: int = 4 * 1024 * 1024  # request body (413 while it streams in)
    max_json_depth: int = 8  # JSON nesting, checked before decoding (a valid body needs 5)
    max_json_elements: int = 1_200_000  # JSON values, checked before decoding
    max_image_pixels: int = 4096 * 4096  # width x height of an upload, from its header (decompression bombs)
    max_batch: int = 256  # images per /classify request, n per /generate
    rate_per_s: float = 50.0  # requests per second per caller (key, else client address); 0 = off
    rate_burst: int = 100  # token-bucket size
    max_inflight: int = 8  # compute requests in progress per worker; more -> 503 + Retry-After at once

    def __post_init__(self) -> None:
        for key, low in (("max_body_bytes", 1024), ("max_json_depth", 5), ("max_json_elements", 1024),
                         ("max_image_pixels", 784), ("max_batch", 1), ("rate_burst", 1), ("max_inflight", 1)):
            _require(getattr(self, key) >= low, f"serve.{key}", f"must be >= {low}, got {getattr(self, key)}")
        _require(self.rate_per_s >= 0, "serve.rate_per_s", "must be >= 0 (0 = no rate limit)")

    def environment(self) -> dict[str, str]:
        """{MEDGEN_<KEY>: value} for every limit, as the service reads them."""
        return {f"MEDGEN_{f.name.upper()}": str(getattr(self, f.name)) for f in dataclasses.fields(self)}


# medgen.models.classifier checks the same names; "auto" = a rule on the image size (cifar <= 32 px, else standard)
CLASSIFIER_STEMS = ("standard", "pool", "cifar", "auto")
CLASSIFIER_INITS = ("default", "xavier")


@dataclass(frozen=True)
class ClassifyConfig:
    """ResNet-18 classifier: model, fit, classic augmentation, Optuna search, final seeds, paths."""

    section: ClassVar[str] = "classify"
    # model (medgen.models.classifier)
    stem: str = "pool"  # standard | pool | cifar | auto: see models/classifier.py for cost vs resolution
    dropout: float = 0.3  # before the linear head
    init: str = "default"  # default (torchvision's He init) | xavier (Glorot uniform)
    pretrained: str = "none"  # none | imagenet (needs the torchvision weights file) | encoder (represent's)
    encoder_checkpoint: str = "models/represent/encoder.pt"  # read only when pretrained=encoder
    freeze_epochs: int = 5  # with pretrained weights: epochs training the head only, then unfreeze
    unfreeze_lr_scale: float = 0.1  # backbone lr = lr * this once unfrozen
    # fit
    epochs: int = 30
    patience: int = 8  # early stopping on validation AUC
    batch_size: int = 32
    lr: float = 1e-3  # used as is when n_trials = 0, else searched
    weight_decay: float = 1e-4  # idem
    class_weights: bool = False  # inverse-frequency weights in the cross-entropy loss
    train_fraction: float = 1.0  # stratified subsample of the training split (ablation)
    # classic augmentation: `augment` switches the group, each magnitude (0 = off) one transform
    augment: bool = True
    aug_strength: float = 1.0  # multiplies every magnitude; searched when n_trials > 0
    aug_flip: bool = True
    aug_rotation: float = 15.0  # degrees
    aug_translate: float = 0.1  # fraction of the side
    aug_shear: float = 0.0  # degrees
    aug_zoom: float = 0.2
    aug_brightness: float = 0.1
    aug_contrast: float = 0.1
    # search (Optuna, pruned on per-epoch validation AUC, chosen on validation AUC)
    n_trials: int = 8
    search_epochs: int = 12
    lr_range: tuple[float, ...] = (1e-4, 3e-3)
    weight_decay_range: tuple[float, ...] = (1e-6, 1e-2)
    strength_range: tuple[float, ...] = (0.0, 1.5)
    # final training: seeds seed, seed+1, ...; test metrics once per seed
    seeds: int = 3
    device: str = "auto"
    threads: int = 1  # torch CPU threads; 0 = torch's default (see README: 1 is far faster on a shared CPU)
    checkpoint: str = "models/classify/best.pt"
    metrics: str = "metrics/classify.json"
    details: str = "metrics/classify_details.json"
    plots_dir: str = "plots/classify"

    def __post_init__(self) -> None:
        _require(self.stem in CLASSIFIER_STEMS, "classify.stem", f"must be one of {', '.join(CLASSIFIER_STEMS)}, got {self.stem!r}")
        _require(self.init in CLASSIFIER_INITS, "classify.init", f"must be one of {', '.join(CLASSIFIER_INITS)}, got {self.init!r}")
        _require(self.pretrained in ("none", "imagenet", "encoder"), "classify.pretrained", "must be none, imagenet or encoder")
        _require(0.0 <= self.dropout < 1.0, "classify.dropout", "must be in [0, 1)")
        _require(self.epochs >= 1 and self.search_epochs >= 1, "classify.epochs", "epochs and search_epochs must be >= 1")
        _require(self.patience >= 1, "classify.patience", "must be >= 1")
        _require(0 <= self.freeze_epochs < self.epochs, "classify.freeze_epochs", "must be in 0..epochs-1")
        _require(0.0 < self.unfreeze_lr_scale <= 1.0, "classify.unfreeze_lr_scale", "must be in (0, 1]")
        _require(self.batch_size >= 2, "classify.batch_size", "must be >= 2")
        _require(self.lr > 0 and self.weight_decay >= 0, "classify.lr", "lr must be > 0 and weight_decay >= 0")
        _require(0.0 < self.train_fraction <= 1.0, "classify.train_fraction", "must be in (0, 1]")
        _require(self.aug_strength >= 0, "classify.aug_strength", "must be >= 0")
        for key in ("aug_rotation", "aug_translate", "aug_shear", "aug_zoom", "aug_brightness", "aug_contrast"):
            _require(getattr(self, key) >= 0, f"classify.{key}", "must be >= 0 (0 switches it off)")
        _require(self.aug_zoom < 1 and self.aug_contrast < 1, "classify.aug_zoom", "aug_zoom and aug_contrast must be < 1")
        for key in ("lr_range", "weight_decay_range", "strength_range"):
            low_high = getattr(self, key)
            _require(len(low_high) == 2 and 0 <= low_high[0] <= low_high[1], f"classify.{key}", "must be [low, high] with 0 <= low <= high")
        _require(self.lr_range[0] > 0 and self.weight_decay_range[0] > 0, "classify.lr_range", "log-scale ranges need low > 0")
        _require(self.n_trials >= 0, "classify.n_trials", "must be >= 0 (0 = no search, use lr/weight_decay/aug_strength)")
        _require(self.seeds >= 1, "classify.seeds", "must be >= 1")
        _require(self.threads >= 0, "classify.threads", "must be >= 0 (0 = torch's default)")


GAN_VARIANTS = ("cdcgan", "acgan", "wgan-gp")  # mirrors medgen.models.gan.VARIANTS (models import nothing of ours)


DIFFAUG_POLICIES = ("brightness", "contrast", "translation", "cutout")


@dataclass(frozen=True)
class GenerateConfig:
    section: ClassVar[str] = "generate"
    variant: str = "cdcgan"  # used as-is when n_trials = 0; otherwise the first (enqueued) trial
    variants: tuple[str, ...] = GAN_VARIANTS  # search space for the variant
    latent_dim: int = 100
    g_channels: int = 32  # G widths 4c/2c/c (DCGAN: 256/128/64 at c=64; 32 fits the CPU budget)
    d_channels: int = 32  # D widths c/2c/4c
    embed_dim: int = 16  # label embedding concatenated to z in G
    batch_size: int = 32  # 546 images: 18 G steps per epoch
    lr_g: float = 2e-4  # DCGAN paper defaults; the search draws around them
    lr_d: float = 2e-4
    beta1: float = 0.5
    lr_min: float = 5e-5  # search range (log-uniform) for lr_g and lr_d
    lr_max: float = 1e-3
    beta1_min: float = 0.0  # search range for Adam beta1
    beta1_max: float = 0.9
    n_trials: int = 5
    search_epochs: int = 20
    epochs: int = 300
    eval_every: int = 5  # epochs between quality checks (pruning during search; best-checkpoint in the final fit)
    checkpoint_every: int = 50  # epochs between per-class sample grids of the final fit
    label_smoothing: float = 0.1  # one-sided: D's real target is 1 - this (Salimans et al., 2016)
    label_flip: float = 0.0  # probability of swapping real/fake targets per sample in D's loss (report 002)
    diffaug: tuple[str, ...] = ("translation",)  # DiffAugment policy, e.g. ("translation", "cutout"); empty = off
    spectral_norm: bool = False  # spectral norm on D's conv layers
    ema_decay: float = 0.995  # EMA copy of G used for sampling; 0 = sample the raw G
    gp_weight: float = 10.0  # wgan-gp gradient penalty weight
    n_critic: int = 2  # wgan-gp critic steps per G step
    samples_per_class: int = 2000
    labels: tuple[int, ...] = ()  # classes to sample; empty = all
    eval_samples: int = 0  # synthetic samples per quality check in the search; 0 = size of the val split
    feature_epochs: int = 10  # fit of the metric feature net on real train images
    feature_dim: int = 64
    device: str = "auto"
    # torch CPU threads. Fixed, because a different thread count changes the order of float reductions and
    # so the GAN's weights; 1 is also the fastest on a shared 2-core machine (as for classify and represent)
    threads: int = 1
    checkpoint: str = "models/generate/generator.pt"
    feature_checkpoint: str = "models/generate/features.pt"
    samples_dir: str = "data/synthetic"  # samples land in <samples_dir>/<flag>/samples.npz
    metrics: str = "metrics/generate.json"
    plots_dir: str = "plots/generate"

    def __post_init__(self) -> None:
        k = "generate."
        _require(self.variant in GAN_VARIANTS, k + "variant", f"must be one of {', '.join(GAN_VARIANTS)}, got {self.variant!r}")
        bad = [v for v in self.variants if v not in GAN_VARIANTS]
        _require(bool(self.variants) and not bad, k + "variants", f"must be a non-empty subset of {', '.join(GAN_VARIANTS)}, got {list(self.variants)}")
        for name in ("latent_dim", "g_channels", "d_channels", "embed_dim", "batch_size", "epochs", "search_epochs",
                     "eval_every", "checkpoint_every", "n_critic", "feature_epochs", "feature_dim"):
            _require(getattr(self, name) >= 1, k + name, f"must be >= 1, got {getattr(self, name)}")
        _require(self.threads >= 1, k + "threads", f"must be >= 1, got {self.threads}")
        _require(self.samples_per_class >= 1, k + "samples_per_class", f"must be >= 1 (samples per class), got {self.samples_per_class}")
        _require(self.n_trials >= 0, k + "n_trials", "must be >= 0 (0 = no search, use lr_g/lr_d/beta1/variant)")
        _require(self.eval_samples >= 0, k + "eval_samples", "must be >= 0 (0 = size of the val split)")
        for name in ("lr_g", "lr_d", "lr_min", "lr_max"):
            _require(0 < getattr(self, name) < 1, k + name, f"must be in (0, 1), got {getattr(self, name)}")
        _require(self.lr_min < self.lr_max, k + "lr_min", "must be below generate.lr_max")
        for name in ("beta1", "beta1_min", "beta1_max"):
            _require(0 <= getattr(self, name) < 1, k + name, f"must be in [0, 1), got {getattr(self, name)}")
        _require(self.beta1_min <= self.beta1_max, k + "beta1_min", "must not exceed generate.beta1_max")
        _require(0 <= self.label_smoothing < 0.5, k + "label_smoothing", "must be in [0, 0.5)")
        _require(0 <= self.label_flip < 0.5, k + "label_flip", "must be in [0, 0.5)")
        _require(0 <= self.ema_decay < 1, k + "ema_decay", "must be in [0, 1) (0 = no EMA)")
        _require(self.gp_weight >= 0, k + "gp_weight", "must be >= 0")
        unknown = [p for p in self.diffaug if p not in DIFFAUG_POLICIES]
        _require(not unknown, k + "diffaug", f"unknown policy {unknown} (known: {', '.join(DIFFAUG_POLICIES)})")
        negative = [c for c in self.labels if c < 0]
        _require(not negative, k + "labels", f"class labels must be >= 0, got {list(self.labels)}")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), k + "device",
                 f"must be auto, cpu or cuda[:i], got {self.device!r}")


AUGMENT_ARMS = ("baseline", "classic", "synthetic", "classic+synthetic")


@dataclass(frozen=True)
class AugmentConfig:
    """Synthetic-augmentation study: arms retrained with classify's chosen hyper-parameters over seeds."""

    section: ClassVar[str] = "augment"
    arms: tuple[str, ...] = AUGMENT_ARMS  # `baseline` first; every other arm is compared with it seed by seed
    seeds: int = 4  # seeds seed, seed+1, ... (the same for every arm: paired comparison); docs/statistics.md
    ratio: float = 1.0  # share of each class's gap to the largest class filled with synthetic images
    epochs: int = 0  # 0 = classify.epochs
    checkpoint: str = "models/augment/best.pt"
    metrics: str = "metrics/augment.json"
    details: str = "metrics/augment_details.json"
    plots_dir: str = "plots/augment"

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in AUGMENT_ARMS]
        _require(not unknown, "augment.arms", f"unknown arm(s) {unknown} (known: {', '.join(AUGMENT_ARMS)})")
        _require(len(self.arms) >= 2 and self.arms[0] == "baseline", "augment.arms", "must start with baseline and name one more arm")
        _require(len(set(self.arms)) == len(self.arms), "augment.arms", "arms must be distinct")
        _require(any("synthetic" in a for a in self.arms), "augment.arms", "name at least one synthetic arm")
        _require(self.seeds >= 2, "augment.seeds", "must be >= 2 (the comparison is paired over seeds)")
        _require(0.0 < self.ratio <= 1.0, "augment.ratio", "must be in (0, 1]")
        _require(self.epochs >= 0, "augment.epochs", "must be >= 0 (0 = classify.epochs)")


@dataclass(frozen=True)
class Config:
    profile: str = "full"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    represent: RepresentConfig = field(default_factory=RepresentConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TOP_LEVEL = ("profile", "seed")


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name not in _TOP_LEVEL}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against the dataclass annotation; lists become tuples (configs are frozen)."""
    origin = typing.get_origin(hint)
    if hint is bool:
        _require(isinstance(value, bool), key, f"expected true/false, got {value!r}")
    elif hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, f"expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        _require(isinstance(value, str), key, f"expected a string, got {value!r}")
    elif origin is tuple:
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        value = tuple(_coerce(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value))
    return value


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    _require(isinstance(values, dict), name, f"must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        _require(key in known, f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """'section.key=value' -> ('section.key', value); the value is parsed as YAML, as dvc -S does."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    _require(bool(key), text, "override has an empty key")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None


def _apply(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    _require(len(parts) in (1, 2), dotted, "expected 'key' or 'section.key'")
    if len(parts) == 1:
        _require(parts[0] in _TOP_LEVEL, dotted, f"unknown top-level key (known: {', '.join(_TOP_LEVEL)})")
        tree[parts[0]] = value
        return
    section, key = parts
    _require(section in _section_types(), dotted, f"unknown section {section!r}")
    tree.setdefault(section, {})
    _require(isinstance(tree[section], dict), section, "must be a mapping")
    tree[section][key] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a mapping naming one key twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"duplicate key {key!r} (line {line}); each key may appear once per section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML -> Python with duplicate keys rejected (ConfigError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # nosec B506 - a SafeLoader subclass


def read_params(path: str | Path) -> dict[str, Any]:
    """The params file as a mapping; missing, unreadable, non-UTF-8, empty, invalid, duplicate-key or
    non-mapping files are a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        tree = parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    _require(tree is not None, str(path), "is empty; expected a mapping of sections (see the repository's params.yaml)")
    _require(isinstance(tree, dict), str(path), f"top level must be a mapping, got {type(tree).__name__}")
    return tree


def build_config(
    tree: dict[str, Any], profile: str | None = None, overrides: typing.Sequence[str] = ()
) -> Config:
    """Defaults <- params tree <- profile overrides <- command-line overrides, then validate."""
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    profiles = tree.pop("profiles", {}) or {}
    _require(isinstance(profiles, dict), "profiles", "must be a mapping of profile name -> overrides")
    active = profile or os.environ.get(PROFILE_ENV) or tree.get("profile", "full")
    _require(isinstance(active, str), "profile", f"expected a name, got {active!r}")
    _require(active == "full" or active in profiles, "profile", f"unknown profile {active!r} (known: full, {', '.join(profiles)})")
    for dotted, value in (profiles.get(active) or {}).items():
        _apply(tree, dotted, value)
    for text in overrides:
        _apply(tree, *parse_override(text))
    tree["profile"] = active
    sections = _section_types()
    for key in tree:
        _require(key in sections or key in _TOP_LEVEL, key, f"unknown key (known: {', '.join([*_TOP_LEVEL, *sections])})")
    seed = _coerce("seed", tree.get("seed", Config.seed), int)
    _require(seed >= 0, "seed", "must be >= 0")
    built = {name: _build_section(name, cls, tree.get(name) or {}) for name, cls in sections.items()}
    return Config(profile=active, seed=seed, **built)


def load_config(
    path: str | Path = "params.yaml", profile: str | None = None, overrides: typing.Sequence[str] = ()
) -> Config:
    """Load params.yaml (default: the one in the working directory) into a validated Config."""
    return build_config(read_params(path), profile=profile, overrides=overrides)
