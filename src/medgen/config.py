"""The configuration schema: one frozen dataclass per params.yaml section, its defaults, units and ranges.

Constraints are declared on the fields: `name: int = rule(15, ge=1)` states the default and what a value
must satisfy (bounds, a choice list, non-empty, distinct entries, a plain name); `check_fields` turns a
breach into ConfigError('<section>.<key>: must be ..., got ...') when a section is built. The few rules that
relate two fields or need a pattern live in the section's `check()`. Choice lists come from the code that
implements the choices (GAN variants and DiffAugment policies from medgen.models.gan, classifier stems and
inits from medgen.models.classifier, represent methods from medgen.latent and medgen.models.autoencoders).
Reading params.yaml, profiles and `-S` overrides: medgen.params.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medgen.errors import ConfigError
from medgen.latent import EMBEDDINGS
from medgen.models import autoencoders, classifier, gan

SOURCE_ENV = "MEDGEN_DATA_SOURCE"


def _require(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError('<key>: <message>') unless ok."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Rule:
    """What a field's value must satisfy. Bounds and `choices` apply to a scalar, or to every entry of a tuple;
    `nonempty`, `distinct` and `item` (the noun for an entry, e.g. "method") to tuples; `name` (a plain
    identifier) and `nonempty` to strings. `note` says why, in the message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    nonempty: bool = False
    distinct: bool = False
    name: bool = False
    item: str = "entry"
    note: str = ""

    def bounds(self) -> str:
        """'>= 1', '> 0', 'in 1..400' (integers, both ends inclusive) or 'in [0, 1)'; '' without bounds."""
        low, high = (
            (self.ge, "[") if self.ge is not None else (self.gt, "("),
            (self.le, "]") if self.le is not None else (self.lt, ")"),
        )
        if low[0] is None and high[0] is None:
            return ""
        if high[0] is None:
            return f"{'>=' if low[1] == '[' else '>'} {_number(low[0])}"
        if low[0] is None:
            return f"{'<=' if high[1] == ']' else '<'} {_number(high[0])}"
        if (low[1], high[1]) == ("[", "]") and all(isinstance(v, int) for v in (low[0], high[0])):
            return f"in {low[0]}..{high[0]}"
        return f"in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"

    def in_bounds(self, v: Any) -> bool:
        """Whether v lies within the bounds."""
        return not (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        )

    def problem(self, value: Any) -> str | None:
        """The breach as the message's text after '<key>: ', or None when value satisfies the rule."""
        note = f" ({self.note})" if self.note else ""
        known = ", ".join(map(str, self.choices or ()))
        if isinstance(value, tuple):
            if self.nonempty and not value:
                return f"is empty: choose from {known}" if self.choices else f"must not be empty{note}"
            unknown = [v for v in value if self.choices is not None and v not in self.choices]
            if unknown:
                return f"unknown {self.item} {unknown[0]!r} (known: {known})"
            if self.distinct and len(set(value)) != len(value):
                return f"lists a{'n' if self.item[0] in 'aeiou' else ''} {self.item} twice"
            if not all(self.in_bounds(v) for v in value):
                return f"{self.item}s must be {self.bounds()}{note}, got {list(value)}"
            return None
        if self.choices is not None and value not in self.choices:
            options = " or ".join(known.split(", ")) if len(self.choices) == 2 else f"one of {known}"
            return f"must be {options}, got {value!r}"
        if self.name and not (isinstance(value, str) and value.isidentifier()):
            return f"must be a plain name, got {value!r}"
        if self.nonempty and not value:
            return f"must not be empty{note}"
        if not self.in_bounds(value):
            return f"must be {self.bounds()}{note}, got {value!r}"
        return None


def rule(default: Any, **constraints: Any) -> Any:
    """A dataclass field with `default` and the Rule(**constraints) its value must satisfy."""
    return field(default=default, metadata={"rule": Rule(**constraints)})


def check_fields(section: Any) -> None:
    """Raise ConfigError for the first field of the section dataclass that breaks its declared Rule."""
    for f in dataclasses.fields(section):
        declared = f.metadata.get("rule")
        problem = declared.problem(getattr(section, f.name)) if declared else None
        _require(problem is None, f"{section.section}.{f.name}", problem or "")


class Section:
    """Base of every params.yaml section: declared field rules first, then the section's own `check()`."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules that relate fields or need a pattern (none by default)."""


MIN_SIZE, MAX_SIZE = 28, 224  # image sides medgen's models are built and tested for


@dataclass(frozen=True)
class DataConfig(Section):
    section: ClassVar[str] = "data"
    # a MedMNIST 2D flag, cifar10 / fashionmnist, or any name for a custom npz (then set n_classes)
    flag: str = rule("breastmnist", name=True)
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

    def check(self) -> None:
        """size: a side in MIN_SIZE..MAX_SIZE divisible by 4; n_classes: 0 (auto) or >= 2."""
        _require(
            MIN_SIZE <= self.size <= MAX_SIZE and self.size % 4 == 0,
            "data.size",
            f"must be a side in {MIN_SIZE}..{MAX_SIZE} divisible by 4 (MedMNIST: 28, 64, 128, 224; "
            f"CIFAR-10: 32), got {self.size}",
        )
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
class TrackingConfig(Section):
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
    optuna_heartbeat_s: int = rule(60, ge=1, note="seconds")
    optuna_grace_s: int = 180

    def check(self) -> None:
        """The grace period outlasts a heartbeat."""
        _require(
            self.optuna_grace_s > self.optuna_heartbeat_s,
            "tracking.optuna_grace_s",
            f"must be longer than tracking.optuna_heartbeat_s={self.optuna_heartbeat_s}",
        )


@dataclass(frozen=True)
class PrepareConfig(Section):
    section: ClassVar[str] = "prepare"
    montage_per_class: int = rule(36, ge=1, le=400)  # images per class montage (a square number reads best)
    metrics: str = "metrics/prepare.json"
    plots_dir: str = "plots/prepare"


REPRESENT_METHODS = (*EMBEDDINGS, *autoencoders.METHODS)


@dataclass(frozen=True)
class RepresentConfig(Section):
    section: ClassVar[str] = "represent"
    methods: tuple[str, ...] = rule(
        REPRESENT_METHODS, choices=REPRESENT_METHODS, nonempty=True, distinct=True, item="method"
    )
    # Search space, the same parameter names in every study: latent_dim, k (KNN) and lr (neural only)
    latent_dim_min: int = rule(2, ge=1)
    latent_dim_max: int = 128
    k_min: int = rule(1, ge=1)
    k_max: int = 100
    lr_min: float = rule(1e-4, gt=0, note="lr is searched on a log scale")
    lr_max: float = 1e-2
    # tpe | random (the assignment's random search: every trial a seeded uniform draw)
    sampler: str = rule("tpe", choices=("tpe", "random"))
    # pca / isomap trials (cheap: one fit per fold serves every latent_dim and k)
    trials_classic: int = rule(40, ge=1)
    trials_neural: int = rule(10, ge=1)  # per autoencoder method
    # stratified k-fold on train+val selects every method (val alone is 78 images)
    cv_folds: int = rule(5, ge=2)
    isomap_subset: int = rule(400, ge=2)  # Isomap is fitted on this many training images (O(n^2) memory/time)
    isomap_neighbors: int = rule(10, ge=2)
    epochs: int = rule(15, ge=1)
    batch_size: int = rule(64, ge=2, note="batch norm")
    dropout: float = rule(0.2, ge=0, lt=1)  # dense AE
    width: int = rule(16, ge=1)  # conv models: channels of the first conv layer
    beta: float = rule(1.0, gt=0)  # VAE KL weight
    objective: str = rule("balanced_acc", choices=("balanced_acc", "auc"))  # KNN metric maximised by every study
    prune_percentile: float = rule(50.0, gt=0, lt=100)  # 50 = median pruner
    prune_startup_trials: int = rule(3, ge=0)
    prune_warmup_epochs: int = rule(3, ge=0)
    # Latent exploration: a VAE with a 2-D latent decoded over linspace(-scale, scale, grid_n)^2
    explore_method: str = rule("vae_conv", choices=("vae_dense", "vae_conv"))
    explore_epochs: int = rule(40, ge=1)
    explore_lr: float = rule(1e-3, gt=0)
    grid_n: int = rule(15, ge=2)
    grid_scale: float = rule(2.5, gt=0)
    n_recon: int = rule(10, ge=1, le=64)
    device: str = "auto"
    # torch CPU threads: 1 is fastest for these small models on a shared 2-core machine (measured: 2
    # threads ran 5-10x slower under contention)
    threads: int = rule(1, ge=1)
    metrics: str = "metrics/represent.json"
    plots_dir: str = "plots/represent"
    encoder_checkpoint: str = "models/represent/encoder.pt"

    def check(self) -> None:
        """Every search range is non-empty (min <= max)."""
        for name, low, high in (
            ("latent_dim", self.latent_dim_min, self.latent_dim_max),
            ("k", self.k_min, self.k_max),
            ("lr", self.lr_min, self.lr_max),
        ):
            _require(
                low <= high,
                f"represent.{name}_min",
                f"search space is empty: {name}_min={low} > {name}_max={high}",
            )

    @property
    def neural_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m not in ("pca", "isomap"))


@dataclass(frozen=True)
class ExportConfig(Section):
    section: ClassVar[str] = "export"
    # Inputs: checkpoints written with medgen.training.save_model (the lead points these at the
    # classify / augment / generate outputs). The augmented classifier is exported only when it exists.
    classifier_checkpoint: str = rule("models/classify/best.pt", nonempty=True, note="a path")
    augmented_checkpoint: str = "models/augment/best.pt"
    generator_checkpoint: str = rule("models/generate/generator.pt", nonempty=True, note="a path")
    # <name>.onnx + <name>.json per model; the service reads this folder
    out_dir: str = rule("models/export", nonempty=True, note="a path")
    metrics: str = "metrics/export.json"
    opset: int = rule(17, ge=11, le=21)
    parity_tolerance: float = rule(1e-4, gt=0, le=1e-2)  # max |onnxruntime - torch| allowed; above it the stage fails
    # batch 1 and N: dynamic axes have mismatched silently
    parity_batches: tuple[int, ...] = rule((1, 7, 64), ge=1, le=512, nonempty=True, item="batch size")
    register: bool = True  # register in the MLflow model registry with `alias`
    alias: str = rule("champion", name=True)


@dataclass(frozen=True)
class ServeConfig(Section):
    """Limits of the inference service; `medgen serve` passes them as MEDGEN_* variables (serving/settings.py
    holds the same defaults: the service runs without medgen, e.g. in the container). Keys never live here."""

    section: ClassVar[str] = "serve"
    max_body_bytes: int = rule(4 * 1024 * 1024, ge=1024)  # request body (413 while it streams in)
    max_json_depth: int = rule(8, ge=5)  # JSON nesting, checked before decoding (a valid body needs 5)
    max_json_elements: int = rule(1_200_000, ge=1024)  # JSON values, checked before decoding
    # width x height of an upload, from its header (decompression bombs)
    max_image_pixels: int = rule(4096 * 4096, ge=784)
    max_batch: int = rule(256, ge=1)  # images per /classify request, n per /generate
    # DDIM steps per /generate request of a diffusion generator (n = 256 at 50 steps: ~15 s on one core)
    max_steps: int = rule(50, ge=1, le=1000)
    # requests per second per caller (key, else client address)
    rate_per_s: float = rule(50.0, ge=0, note="0 = no rate limit")
    rate_burst: int = rule(100, ge=1)  # token-bucket size
    max_inflight: int = rule(8, ge=1)  # compute requests in progress per worker; more -> 503 + Retry-After at once
    # expected /classify wait a request may be admitted to while others are in progress; more -> 503 at once
    max_wait_ms: int = rule(0, ge=0, le=600_000, note="0 = 1.5 x the one-image time measured at start")

    def environment(self) -> dict[str, str]:
        """{MEDGEN_<KEY>: value} for every limit, as the service reads them."""
        return {f"MEDGEN_{f.name.upper()}": str(getattr(self, f.name)) for f in dataclasses.fields(self)}


# "auto" = a rule on the image size (medgen.models.classifier.resolve_stem: cifar <= 32 px, else standard)
CLASSIFIER_STEMS = (*classifier.STEMS, "auto")
TTA_VIEWS = classifier.TTA_VIEWS
# what a recipe may change: the model, the fit, the augmentation and the regularisers (not the search or paths)
RECIPE_KEYS = (
    "stem", "dropout", "init", "freeze_epochs", "unfreeze_lr_scale", "search_epochs", "batch_size", "lr",
    "weight_decay", "class_weights", "augment", "aug_strength", "aug_flip", "aug_rotation", "aug_translate",
    "aug_shear", "aug_zoom", "aug_brightness", "aug_contrast", "mixup", "cutout", "label_smoothing", "ema",
)  # fmt: skip
CLASSIFIER_INITS = classifier.INITS
# sections' search ranges: [low, high] with 0 <= low <= high
RANGE = {"ge": 0.0, "item": "bound"}


@dataclass(frozen=True)
class ClassifyConfig(Section):
    """ResNet-18 classifier: model, fit, classic augmentation, Optuna search, final seeds, paths."""

    section: ClassVar[str] = "classify"
    # model (medgen.models.classifier)
    # standard | pool | cifar | auto: see models/classifier.py for cost vs resolution
    stem: str = rule("pool", choices=CLASSIFIER_STEMS)
    dropout: float = rule(0.3, ge=0, lt=1)  # before the linear head
    init: str = rule("default", choices=CLASSIFIER_INITS)  # default (torchvision's He init) | xavier (Glorot uniform)
    # none | imagenet (needs the torchvision weights file) | encoder (represent's)
    pretrained: str = rule("none", choices=("none", "imagenet", "encoder"))
    encoder_checkpoint: str = "models/represent/encoder.pt"  # read only when pretrained=encoder
    freeze_epochs: int = rule(5, ge=0)  # with pretrained weights: epochs training the head only, then unfreeze
    unfreeze_lr_scale: float = rule(0.1, gt=0, le=1)  # backbone lr = lr * this once unfrozen
    # fit
    epochs: int = rule(30, ge=1)
    patience: int = rule(8, ge=1)  # early stopping on validation AUC
    batch_size: int = rule(32, ge=2)
    lr: float = rule(1e-3, gt=0)  # used as is when n_trials = 0, else searched
    weight_decay: float = rule(1e-4, ge=0)  # idem
    class_weights: bool = False  # inverse-frequency weights in the cross-entropy loss
    train_fraction: float = rule(1.0, gt=0, le=1)  # stratified subsample of the training split (ablation)
    # classic augmentation: `augment` switches the group, each magnitude (0 = off) one transform
    augment: bool = True
    aug_strength: float = rule(1.0, ge=0)  # multiplies every magnitude; searched when n_trials > 0
    aug_flip: bool = True
    aug_rotation: float = rule(15.0, ge=0, note="0 switches it off")  # degrees
    aug_translate: float = rule(0.1, ge=0, note="0 switches it off")  # fraction of the side
    aug_shear: float = rule(0.0, ge=0, note="0 switches it off")  # degrees
    aug_zoom: float = rule(0.2, ge=0, lt=1, note="0 switches it off")
    aug_brightness: float = rule(0.1, ge=0, note="0 switches it off")
    aug_contrast: float = rule(0.1, ge=0, lt=1, note="0 switches it off")
    # regularisers a recipe may switch on (0 = off)
    mixup: float = rule(0.0, ge=0, note="0 switches it off")  # Beta(alpha, alpha) mixing weight
    cutout: float = rule(0.0, ge=0, lt=1, note="0 switches it off")  # side of the zeroed square, fraction of S
    label_smoothing: float = rule(0.0, ge=0, lt=1)
    ema: float = rule(0.0, ge=0, lt=1, note="0 switches it off")  # decay of the weight average that is kept
    # recipe choice: stratified K-fold cross-validation on train+val, fixed schedule of search_epochs;
    # candidates = the named recipes (fixed trials, in order), then Optuna draws recipe, lr, weight_decay
    recipes: dict = field(default_factory=dict)  # name -> {classify key: value}; none: this section is the one recipe
    cv_folds: int = rule(5, ge=2)
    # the first cv_screen folds score every candidate; the best one alone fits the other folds (0 = all folds)
    cv_screen: int = rule(0, ge=0, note="0 = every fold")
    n_trials: int = rule(4, ge=1, note="the named recipes first, then Optuna's draws")
    search_epochs: int = rule(20, ge=1)  # each fold's fit (no early stopping: the held-out fold stays unseen)
    lr_range: tuple[float, ...] = rule((1e-4, 3e-3), **RANGE)
    weight_decay_range: tuple[float, ...] = rule((1e-6, 1e-2), **RANGE)
    # the product: the chosen candidate's cv_folds x seeds fold models (repeated CV, seed seed, seed+1, ...),
    # averaged over the test-time views in one ONNX graph
    seeds: int = rule(1, ge=1)
    tta: tuple[str, ...] = rule(("identity", "hflip"), choices=TTA_VIEWS, nonempty=True, distinct=True, item="view")
    jobs: int = rule(2, ge=1)  # fold fits in parallel processes (threads each)
    # fitted on out-of-fold predictions (medgen.guard): the calibrator, and the input guard's pass share
    calibration: str = rule("auto", choices=("auto", "none", "temperature", "bias"))
    ood_keep: float = rule(0.95, gt=0.5, lt=1.0)
    device: str = "auto"
    # torch CPU threads; 0 = torch's default (1 is far faster on a shared CPU)
    threads: int = rule(1, ge=0, note="0 = torch's default")
    checkpoint: str = "models/classify/best.pt"
    metrics: str = "metrics/classify.json"
    details: str = "metrics/classify_details.json"
    plots_dir: str = "plots/classify"

    def check(self) -> None:
        """freeze_epochs < epochs; each search range is [low, high] with low <= high, low > 0 on a log scale."""
        _require(self.freeze_epochs < self.epochs, "classify.freeze_epochs", "must be in 0..epochs-1")
        for key in ("lr_range", "weight_decay_range"):
            low_high = getattr(self, key)
            _require(
                len(low_high) == 2 and low_high[0] <= low_high[1],
                f"classify.{key}",
                f"must be [low, high] with 0 <= low <= high, got {list(low_high)}",
            )
        for key in ("lr_range", "weight_decay_range"):
            _require(getattr(self, key)[0] > 0, f"classify.{key}", "log-scale ranges need low > 0")
        _require(isinstance(self.recipes, dict), "classify.recipes", "must be a mapping of name -> settings")
        for name in self.recipes:
            self.recipe(name)  # each recipe must make a valid section

    def recipe(self, name: str) -> ClassifyConfig:
        """This section with recipe `name`'s settings applied (validated like the section itself)."""
        key = f"classify.recipes.{name}"
        _require(
            name in self.recipes, "classify.recipes", f"unknown recipe {name!r} (known: {', '.join(self.recipes)})"
        )
        settings = self.recipes[name]
        _require(isinstance(settings, dict), key, f"must be a mapping of classify key -> value, got {settings!r}")
        for k in settings:
            _require(k in RECIPE_KEYS, f"{key}.{k}", f"not a recipe setting (known: {', '.join(RECIPE_KEYS)})")
        types = {f.name: type(f.default) for f in dataclasses.fields(self) if f.name in RECIPE_KEYS}
        values = {}
        for k, v in settings.items():
            if types[k] is float and isinstance(v, (int, str)) and not isinstance(v, bool):
                try:
                    v = float(v)  # YAML 1.1 reads 1e-4 as a string
                except ValueError:
                    pass
            _require(isinstance(v, types[k]) and (types[k] is bool or not isinstance(v, bool)), f"{key}.{k}",
                     f"expected a {types[k].__name__}, got {v!r}")  # fmt: skip
            values[k] = v
        try:
            return dataclasses.replace(self, recipes={}, **values)
        except ConfigError as exc:
            raise ConfigError(f"{key}." + str(exc).removeprefix("classify.")) from None


GAN_VARIANTS = gan.VARIANTS
DDPM_SEARCH = ("lr", "width", "guidance", "steps")


DIFFAUG_POLICIES = gan.AUGMENT_POLICIES
POSITIVE = {"ge": 1}
OPEN_UNIT = {"gt": 0, "lt": 1}  # learning rates
BETA = {"ge": 0, "lt": 1}  # Adam beta1


@dataclass(frozen=True)
class GenerateConfig(Section):
    section: ClassVar[str] = "generate"
    variant: str = rule("cdcgan", choices=GAN_VARIANTS)  # used as-is when n_trials = 0; else the first (enqueued) trial
    variants: tuple[str, ...] = rule(GAN_VARIANTS, choices=GAN_VARIANTS, nonempty=True, item="variant")  # search space
    latent_dim: int = rule(100, **POSITIVE)
    g_channels: int = rule(32, **POSITIVE)  # G widths 4c/2c/c (DCGAN: 256/128/64 at c=64; 32 fits the CPU budget)
    d_channels: int = rule(32, **POSITIVE)  # D widths c/2c/4c
    embed_dim: int = rule(16, **POSITIVE)  # label embedding concatenated to z in G
    batch_size: int = rule(32, **POSITIVE)  # 546 images: 18 G steps per epoch
    lr_g: float = rule(2e-4, **OPEN_UNIT)  # DCGAN paper defaults; the search draws around them
    lr_d: float = rule(2e-4, **OPEN_UNIT)
    beta1: float = rule(0.5, **BETA)
    lr_min: float = rule(5e-5, **OPEN_UNIT)  # search range (log-uniform) for lr_g and lr_d
    lr_max: float = rule(1e-3, **OPEN_UNIT)
    beta1_min: float = rule(0.0, **BETA)  # search range for Adam beta1
    beta1_max: float = rule(0.9, **BETA)
    n_trials: int = rule(5, ge=0, note="0 = no search, use lr_g/lr_d/beta1/variant")
    search_epochs: int = rule(20, **POSITIVE)
    epochs: int = rule(300, **POSITIVE)
    # epochs between quality checks (pruning during search; best-checkpoint in the final fit)
    eval_every: int = rule(5, **POSITIVE)
    checkpoint_every: int = rule(50, **POSITIVE)  # epochs between per-class sample grids of the final fit
    # one-sided: D's real target is 1 - this (Salimans et al., 2016)
    label_smoothing: float = rule(0.1, ge=0, lt=0.5)
    # probability of swapping real/fake targets per sample in D's loss (report 002)
    label_flip: float = rule(0.0, ge=0, lt=0.5)
    # DiffAugment policy, e.g. ("translation", "cutout"); empty = off
    diffaug: tuple[str, ...] = rule(("translation",), choices=DIFFAUG_POLICIES, item="policy")
    spectral_norm: bool = False  # spectral norm on D's conv layers
    ema_decay: float = rule(0.995, ge=0, lt=1, note="0 = no EMA")  # EMA copy of G used for sampling
    gp_weight: float = rule(10.0, ge=0)  # wgan-gp gradient penalty weight
    n_critic: int = rule(2, **POSITIVE)  # wgan-gp critic steps per G step
    samples_per_class: int = rule(1000, ge=1, note="samples per class")
    labels: tuple[int, ...] = rule((), ge=0, item="class label")  # classes to sample; empty = all
    # synthetic samples per quality check in the search; 0 = size of the val split
    eval_samples: int = rule(0, ge=0, note="0 = size of the val split")
    # held-out-sized synthetic sets the report's FD(train, synthetic) is averaged over (overall and per class):
    # the report's own and class-stratified subsets of every synthetic image the judge drew (generation.average_fd)
    fd_draws: int = rule(10, **POSITIVE)
    feature_epochs: int = rule(10, **POSITIVE)  # fit of the metric feature net on real train images
    feature_dim: int = rule(64, **POSITIVE)
    device: str = "auto"
    # torch CPU threads. Fixed, because a different thread count changes the order of float reductions and
    # so the GAN's weights; 1 is also the fastest on a shared 2-core machine (as for classify and represent)
    threads: int = rule(1, **POSITIVE)
    # processes: 2 trains the diffusion model in a worker while this process trains the GAN, and shares the
    # judge's diffusion sampling; every fit and draw is seeded on its own, so the outputs equal a 1-process run's
    jobs: int = rule(2, ge=1, le=2)
    # --- the diffusion model (variant `ddpm`: medgen.models.diffusion, medgen.ddpm_training) ---
    ddpm: bool = True  # also train it; it competes with the GAN for the chosen generator
    # chosen generator: auto = lowest validation FD among candidates with memorisation <= max_memorization
    select: str = rule("auto", choices=("auto", "gan", "ddpm"))
    max_memorization: float = rule(0.10, ge=0, le=1)  # share of samples nearer a training image than val images are
    ddpm_width: int = rule(16, **POSITIVE)  # U-Net base width (levels width x channel_mult (1, 2, 2))
    ddpm_widths: tuple[int, ...] = rule((16, 32), ge=8, nonempty=True, item="width")  # search space of width
    ddpm_lr: float = rule(1e-3, **OPEN_UNIT)  # AdamW; cosine decay to ddpm_lr_final over the fit
    ddpm_lr_final: float = rule(1e-4, **OPEN_UNIT)
    ddpm_lr_min: float = rule(2e-4, **OPEN_UNIT)  # search range (log-uniform) of ddpm_lr
    ddpm_lr_max: float = rule(2e-3, **OPEN_UNIT)
    ddpm_epochs: int = rule(150, **POSITIVE)
    ddpm_eval_every: int = rule(10, **POSITIVE)  # epochs between val-FD checks (the fit keeps the best EMA)
    ddpm_ema: float = rule(0.995, ge=0, lt=1)
    ddpm_label_dropout: float = rule(0.1, ge=0, lt=1)  # null-label share (classifier-free guidance)
    ddpm_sample_size: int = rule(0, ge=0, note="0 = the next power of two >= the image size")  # network canvas
    ddpm_steps: int = rule(20, ge=1, le=1000)  # DDIM steps: the first (enqueued) trial, or as-is with 0 trials
    ddpm_step_choices: tuple[int, ...] = rule((10, 20, 40), ge=1, le=1000, nonempty=True, item="steps")
    ddpm_guidance: float = rule(1.0, ge=0)  # classifier-free guidance scale (1 = conditional model alone)
    ddpm_guidance_min: float = rule(1.0, ge=0)
    ddpm_guidance_max: float = rule(3.0, ge=0)
    ddpm_trials: int = rule(6, ge=0, note="0 = no search, use ddpm_steps/ddpm_guidance")
    ddpm_eval_samples: int = rule(256, ge=0, note="0 = size of the val split")  # samples per sampler-study trial
    # what the diffusion study searches: steps and guidance reuse one trained model; lr or width train per trial
    ddpm_search: tuple[str, ...] = rule(("guidance", "steps"), choices=DDPM_SEARCH, distinct=True, item="parameter")
    ddpm_search_epochs: int = rule(30, **POSITIVE)  # per trial, only when lr or width are searched
    checkpoint: str = "models/generate/generator.pt"
    feature_checkpoint: str = "models/generate/features.pt"
    samples_dir: str = "data/synthetic"  # samples land in <samples_dir>/<flag>/samples.npz
    metrics: str = "metrics/generate.json"
    plots_dir: str = "plots/generate"

    def check(self) -> None:
        """The search ranges are ordered; device is auto, cpu or cuda[:i]."""
        _require(self.lr_min < self.lr_max, "generate.lr_min", "must be below generate.lr_max")
        _require(self.beta1_min <= self.beta1_max, "generate.beta1_min", "must not exceed generate.beta1_max")
        _require(self.ddpm_lr_min < self.ddpm_lr_max, "generate.ddpm_lr_min", "must be below generate.ddpm_lr_max")
        _require(
            self.ddpm_guidance_min <= self.ddpm_guidance_max,
            "generate.ddpm_guidance_min",
            "must not exceed generate.ddpm_guidance_max",
        )
        _require(
            all(w % 8 == 0 for w in (self.ddpm_width, *self.ddpm_widths)),
            "generate.ddpm_width",
            "and every generate.ddpm_widths entry must be a multiple of 8 (GroupNorm groups)",
        )
        _require(self.ddpm or self.select != "ddpm", "generate.select", "is ddpm but generate.ddpm is false")
        _require(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            "generate.device",
            f"must be auto, cpu or cuda[:i], got {self.device!r}",
        )


AUGMENT_ARMS = ("baseline", "classic", "synthetic", "classic+synthetic")


@dataclass(frozen=True)
class AugmentConfig(Section):
    """Synthetic-augmentation study: arms retrained with classify's chosen hyper-parameters over seeds."""

    section: ClassVar[str] = "augment"
    # `baseline` first; every other arm is compared with it seed by seed
    arms: tuple[str, ...] = rule(AUGMENT_ARMS, choices=AUGMENT_ARMS, distinct=True, item="arm")
    # seeds seed, seed+1, ... (the same for every arm: paired comparison); docs/statistics.md
    seeds: int = rule(4, ge=2, note="the comparison is paired over seeds")
    ratio: float = rule(1.0, gt=0, le=1)  # share of each class's gap to the largest class filled with synthetic images
    epochs: int = rule(0, ge=0, note="0 = classify.epochs")
    checkpoint: str = "models/augment/best.pt"
    metrics: str = "metrics/augment.json"
    details: str = "metrics/augment_details.json"
    plots_dir: str = "plots/augment"

    def check(self) -> None:
        """baseline first and at least one synthetic arm."""
        _require(
            len(self.arms) >= 2 and self.arms[0] == "baseline",
            "augment.arms",
            "must start with baseline and name one more arm",
        )
        _require(any("synthetic" in a for a in self.arms), "augment.arms", "name at least one synthetic arm")


@dataclass(frozen=True)
class GuardConfig(Section):
    """The out-of-distribution material classify chooses and reports the input guard on (medgen.ood_sets)."""

    section: ClassVar[str] = "guard"
    # images per OOD set (far sets, each fold's and test's corruptions), evenly spaced; 0 = every image
    ood_max: int = rule(0, ge=0, note="0 = every image")


@dataclass(frozen=True)
class Config:
    profile: str = "full"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    represent: RepresentConfig = field(default_factory=RepresentConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Every section as plain nested dicts (what MLflow params and study definitions are made of)."""
        return dataclasses.asdict(self)
