"""The classifier below the stages: building it (ResNet-18, ImageNet or represent-encoder weights), its data
helpers, fitting it with medgen's training loop, and scoring it. classify and augment both train through
`fit_classifier`; power analysis and the size study call it too."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medgen import data, metrics, stats
from medgen.config import ClassifyConfig, Config
from medgen.errors import MedgenError
from medgen.models.classifier import EncoderClassifier, ResNetClassifier, resolve_stem
from medgen.training import Loop, Steps, fit, load_model, save_model, set_seed
from medgen.transforms import ClassicAugmentation

IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"  # torchvision IMAGENET1K_V1


# ---------------------------------------------------------------- model construction
def build_model(
    cfg: ClassifyConfig, n_classes: int, image_shape: tuple[int, int, int]
) -> tuple[nn.Module, dict[str, Any]]:
    """The configured classifier for images (C, S, S) and its constructor kwargs (for save_model).

    The kwargs record the concrete stem (`classify.stem: auto` resolved for S) and the input channels.
    """
    if cfg.pretrained == "encoder":
        return _encoder_model(cfg, n_classes, image_shape)
    channels, size, _ = image_shape
    kwargs = {
        "n_classes": n_classes,
        "stem": resolve_stem(cfg.stem, size),
        "dropout": cfg.dropout,
        "init": cfg.init,
        "in_channels": channels,
    }
    model = ResNetClassifier(**kwargs)
    if cfg.pretrained == "imagenet":
        _load_imagenet(model)
    return model, kwargs


def _encoder_model(
    cfg: ClassifyConfig, n_classes: int, image_shape: tuple[int, int, int]
) -> tuple[nn.Module, dict[str, Any]]:
    """Encoder weights from the represent stage's checkpoint, plus a fresh dropout + linear head."""
    path = Path(cfg.encoder_checkpoint)
    if not path.exists():
        raise MedgenError(
            f"{path}: encoder checkpoint not found (run the represent stage, or set classify.pretrained=none)"
        )
    encoder, checkpoint = load_model(path)
    features = getattr(encoder, "out_features", None)
    recorded = (checkpoint.get("config") or {}).get("out_features", features)
    if not isinstance(features, int) or features != recorded:
        raise MedgenError(
            f"{path}: encoder must expose int out_features matching its config (got {features!r}, {recorded!r})"
        )
    spec = checkpoint["model"]
    # encoders take `channels` (default 1); size-bound ones (dense layers) also record `image_size`
    built_for = (int(spec["kwargs"].get("channels", 1)), int(spec["kwargs"].get("image_size", image_shape[1])))
    if built_for != tuple(image_shape[:2]):
        size = f" {spec['kwargs']['image_size']} px" if "image_size" in spec["kwargs"] else ""
        raise MedgenError(
            f"{path}: encoder was trained on {built_for[0]}-channel{size} images, the data is "
            f"{image_shape[0]}-channel {image_shape[1]} px: rerun the represent stage"
        )
    kwargs = {
        "encoder_class": spec["class"],
        "encoder_kwargs": spec["kwargs"],
        "n_classes": n_classes,
        "dropout": cfg.dropout,
        "init": cfg.init,
    }
    model = EncoderClassifier(**kwargs)
    model.backbone.load_state_dict(encoder.state_dict())
    return model, kwargs


def _load_imagenet(model: ResNetClassifier) -> None:
    """torchvision's ImageNet ResNet-18 weights (cache, else download); RGB conv1 summed for grey input."""
    try:
        state = torch.hub.load_state_dict_from_url(IMAGENET_URL, progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # offline: URLError, socket errors, hash mismatch
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_URL).name
        raise MedgenError(
            f"ImageNet ResNet-18 weights unavailable ({type(exc).__name__}: {exc}); put {Path(IMAGENET_URL).name} "
            f"at {cache} or set classify.pretrained=none"
        ) from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    conv1 = state["conv1.weight"]  # (64, 3, 7, 7): RGB filters
    if model.backbone.conv1.weight.shape[1] == 1:
        conv1 = conv1.sum(dim=1, keepdim=True)  # (64,1,7,7): the same response to a grey image
    if model.backbone.conv1.weight.shape == conv1.shape:
        state["conv1.weight"] = conv1
    else:  # the 3x3 stems cannot use the 7x7 filters
        del state["conv1.weight"]
    model.backbone.load_state_dict(state, strict=False)


# ---------------------------------------------------------------- data helpers
def augmentation(cfg: ClassifyConfig, strength: float) -> ClassicAugmentation:
    """The configured classic augmentation with every magnitude scaled by `strength`."""
    base = ClassicAugmentation(
        cfg.aug_flip,
        cfg.aug_rotation,
        cfg.aug_translate,
        cfg.aug_shear,
        cfg.aug_zoom,
        cfg.aug_brightness,
        cfg.aug_contrast,
    )
    return base.scaled(strength)


def subsample(split: data.Split, fraction: float, seed: int) -> data.Split:
    """Stratified `fraction` of a split (at least one image per class); 1.0 returns it unchanged."""
    if fraction >= 1.0:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(split.labels):
        index = np.flatnonzero(split.labels == label)
        keep.append(rng.choice(index, size=max(1, round(fraction * len(index))), replace=False))
    chosen = np.sort(np.concatenate(keep))
    return data.Split(split.images[chosen], split.labels[chosen])


def class_weight_tensor(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (k * count_c), so a balanced split gets all ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return torch.tensor(len(labels) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)


# ---------------------------------------------------------------- fit / predict
def _optimizer(model: nn.Module, cfg: ClassifyConfig, lr: float, weight_decay: float, epochs: int):
    backbone_lr = lr * (cfg.unfreeze_lr_scale if cfg.pretrained != "none" else 1.0)
    optimizer = torch.optim.AdamW(
        [{"params": model.backbone.parameters(), "lr": backbone_lr}, {"params": model.head.parameters(), "lr": lr}],
        weight_decay=weight_decay,
        # one fused kernel per step instead of a dozen small ones per tensor: 18% faster per step in a single
        # process at 28 px; inside the classify stage (2 jobs) the gain measured small (rounds 128-157 s vs ~140)
        fused=next(model.parameters()).device.type in ("cpu", "cuda"),
    )
    # cosine decay over the epoch budget; early stopping may end sooner
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


def _set_frozen(model: nn.Module, frozen: bool) -> None:
    """Transfer recipe (reports 003/004): train only the head first, then fine-tune everything."""
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)


class ClassifierSteps(Steps):
    """The classifier's part of the training loop: a (weighted) cross-entropy step on an augmented batch.

    images (N, C, S, S) and labels (N,) on the model's device; `augment` draws from `generator` after the
    loop's shuffle, so one generator fixes both. During the first `freeze` epochs only the head trains.
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        optimizer,
        scheduler,
        loss_fn: nn.Module,
        augment: ClassicAugmentation | None,
        generator: torch.Generator | None,
        freeze: int = 0,
        mixup: float = 0.0,
        cutout: float = 0.0,
        ema: nn.Module | None = None,
    ) -> None:
        self.model, self.images, self.labels, self.optimizer, self.scheduler = (
            model,
            images,
            labels,
            optimizer,
            scheduler,
        )
        self.loss_fn, self.augment, self.generator, self.freeze = loss_fn, augment, generator, freeze
        self.mixup, self.cutout, self.ema = mixup, cutout, ema

    def start_epoch(self, epoch: int) -> None:
        frozen = epoch < self.freeze
        _set_frozen(self.model, frozen)
        self.model.train()
        if frozen:
            self.model.backbone.eval()  # frozen means frozen BatchNorm statistics too

    def step(self, index: torch.Tensor, i: int) -> dict[str, float]:
        x, y = self.images[index], self.labels[index]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        if self.cutout > 0:
            x = cutout(x, self.cutout, self.generator)
        if self.mixup > 0:  # convex pairs of images, the loss mixed with the same weight
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
            lam = float(np.random.default_rng(seed).beta(self.mixup, self.mixup))
            pair = torch.randperm(len(y), generator=self.generator).to(y.device)
            logits = self.model(lam * x + (1 - lam) * x[pair])
            loss = lam * self.loss_fn(logits, y) + (1 - lam) * self.loss_fn(logits, y[pair])
        else:
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {"loss": float(loss.detach()), "n": len(index), "correct": int((logits.argmax(1) == y).sum())}

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, float]:
        if self.scheduler is not None:
            self.scheduler.step()
        total_loss, correct = 0.0, 0
        for s in steps:  # summed in batch order: the same floats as a running sum in the batch loop
            total_loss += s["loss"] * s["n"]
            correct += s["correct"]
        return {"train_loss": total_loss / len(self.labels), "train_acc": correct / len(self.labels)}


def cutout(x: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """Each image (N, C, S, S) with one square of side round(fraction * S) set to 0 (mid-grey in [-1, 1]), its
    centre uniform over the image (the square is cut at the border, as in DeVries & Taylor 2017)."""
    n, _, height, width = x.shape
    half = max(1, round(fraction * width)) / 2
    centre = torch.rand(n, 2, generator=generator).to(x.device) * torch.tensor([height, width], device=x.device)
    rows = torch.arange(height, device=x.device).view(1, height, 1) + 0.5
    cols = torch.arange(width, device=x.device).view(1, 1, width) + 0.5
    inside = ((rows - centre[:, 0].view(n, 1, 1)).abs() < half) & ((cols - centre[:, 1].view(n, 1, 1)).abs() < half)
    return x * (~inside).unsqueeze(1).to(x.dtype)


@torch.no_grad()
def _probs(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([F.softmax(model(images[i : i + batch_size]), dim=1) for i in range(0, len(images), batch_size)])


def predict_proba(model: nn.Module, split: data.Split, device: torch.device | str = "cpu") -> np.ndarray:
    """Class probabilities (N, n_classes) for a uint8 split."""
    images, _ = data.to_tensors(split, str(device))
    return _probs(model.to(device), images).cpu().numpy()


def evaluate(model: nn.Module, split: data.Split, device: torch.device | str = "cpu") -> dict[str, float]:
    """acc, balanced_acc, precision, recall, f1, auc of `model` on a uint8 split."""
    return metrics.classification_metrics(split.labels, predict_proba(model, split, device))


def _validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Unweighted validation loss (comparable across class-weight ablations), accuracy and AUC."""
    probs = _probs(model, images)
    scores = metrics.classification_metrics(labels.cpu().numpy(), probs.cpu().numpy())
    loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels))
    return {"val_loss": loss, "val_acc": scores["acc"], "val_auc": scores["auc"]}


def fit_classifier(
    cfg: ClassifyConfig,
    train: data.Split,
    val: data.Split | None,
    n_classes: int,
    seed: int,
    device: torch.device | str,
    hparams: dict[str, float] | None = None,
    classic_augmentation: bool | None = None,
    epochs: int | None = None,
    trial: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh classifier on `train` (uint8 images, so real and synthetic Splits concatenate), early-stopped
    on validation AUC; returns the model with its best-epoch weights (eval mode) and history = {"rows": [{"epoch",
    "train_loss", "train_acc", "val_loss", "val_acc", "val_auc"}, ...], "best_epoch", "best_val_auc",
    "init_kwargs"}. With `val` None the schedule is fixed: every epoch runs, the last weights are kept (cross-
    validation folds), best_val_auc is None. With cfg.ema > 0 the returned (and validated) weights are the
    exponential moving average of the trained ones, buffers included. `hparams` may set lr / weight_decay /
    aug_strength (else cfg's); `classic_augmentation` overrides cfg.augment; `epochs` overrides cfg.epochs;
    `trial` (an optuna.Trial) gets per-epoch reports."""
    hp = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "aug_strength": cfg.aug_strength, **(hparams or {})}
    epochs = epochs or cfg.epochs
    set_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # shuffling and augmentation draws
    model, init_kwargs = build_model(cfg, n_classes, data.image_shape(train.images))
    model.to(device)
    x_train, y_train = data.to_tensors(train, str(device))
    x_val, y_val = data.to_tensors(val, str(device)) if val is not None else (None, None)
    use_aug = cfg.augment if classic_augmentation is None else classic_augmentation
    augment = augmentation(cfg, hp["aug_strength"]) if use_aug else None
    weight = class_weight_tensor(train.labels, n_classes).to(device) if cfg.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    optimizer, scheduler = _optimizer(model, cfg, hp["lr"], hp["weight_decay"], epochs)
    freeze = cfg.freeze_epochs if cfg.pretrained != "none" else 0
    ema = None
    if cfg.ema > 0:
        multi_avg = torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=multi_avg, use_buffers=True)
    evaluated = ema.module if ema is not None else model
    steps = ClassifierSteps(
        model, x_train, y_train, optimizer, scheduler, loss_fn, augment, generator, freeze, cfg.mixup, cfg.cutout, ema
    )
    # one-class validation: AUC undefined, scored -1 so any defined AUC later counts as better
    loop = Loop(
        epochs,
        cfg.batch_size,
        f"fit seed {seed}",
        generator=generator,
        monitor="val_auc" if val is not None else None,
        worst=-1.0,
        patience=cfg.patience if val is not None else 0,
        min_epochs=freeze,
        trial=trial,
        show=("val_auc",) if val is not None else (),
    )
    validate = (lambda epoch: _validate(evaluated, x_val, y_val)) if val is not None else None
    fitted = fit(steps, len(y_train), loop, validate=validate, keep=evaluated if val is not None else None)
    _set_frozen(model, False)
    _set_frozen(evaluated, False)
    history = {
        "rows": fitted.rows,
        "best_epoch": fitted.best_epoch if val is not None else len(fitted.rows) - 1,
        "best_val_auc": float(fitted.best) if val is not None else None,
        "init_kwargs": init_kwargs,
    }
    return evaluated.eval(), history


SUMMARY = ("acc", "auc", "balanced_acc", "f1", "precision", "recall", "minority_recall")
SERVED = ("acc", "auc", "balanced_acc")


def summarize_ensemble(
    cfg: Config, dataset: data.Dataset, served: np.ndarray, member_probs: list[np.ndarray], found: dict[str, Any]
) -> dict[str, Any]:
    """The metrics file. `served`: test figures of exactly the exported ensemble (members averaged over the
    views) with the 2.5-97.5 percentile interval of the stratified image bootstrap; per member (no views)
    `test_<m>_mean`, `_std` and `_ci95` (interval of the member mean, medgen.stats); `cv`: the chosen
    candidate's out-of-fold scores on train+val (what chose it)."""
    labels = dataset.test.labels
    scored = stats.ensemble(labels, [served], SERVED)
    chosen = found["candidates"][found["chosen"]]
    return {
        "served": {
            **{f"test_{k}": v for k, v in scored.items()},
            "members": len(member_probs),
            "views": list(cfg.classify.tta),
        },
        "seeds": cfg.classify.seeds,
        "members": len(member_probs),
        **stats.describe(labels, member_probs, SUMMARY),
        # the chosen candidate on every fold; `screen_*`: what chose it (its first screen_folds folds)
        "cv": {
            "recipe": found["hparams"]["recipe"],
            **found["chosen_cv"],  # set by the stage when it completes the chosen candidate's folds
            "folds": found.get("folds"),
            "screen_folds": found.get("screen_folds"),
            **{f"screen_{k}": v for k, v in chosen.items() if k.startswith("cv_")},
        },
    }


def ensemble_details(
    dataset: data.Dataset, found: dict[str, Any], fits: list[dict], served: np.ndarray, member_probs: list[np.ndarray]
) -> dict[str, Any]:
    """The details file: every candidate's CV scores, the choice, the members with their test figures, the
    served model's confusion matrix and report."""
    labels = dataset.test.labels
    return {
        "search": found,
        "members": [
            {
                "repeat": f["fold"].repeat,
                "fold": f["fold"].fold,
                "seed": f["fold"].seed,
                "n_train": len(f["fold"].train),
                **{f"test_{k}": v for k, v in metrics.classification_metrics(labels, p).items()},
            }
            for f, p in zip(fits, member_probs)
        ],
        "confusion": metrics.confusion(labels, served.argmax(1), dataset.n_classes).tolist(),
        "classification_report": metrics.report(labels, served, dataset.class_names),
    }


def input_spec(dataset: data.Dataset) -> dict[str, Any]:
    """What a classifier checkpoint states about its input (export and the service read it): classes, their
    names, the image side and [C, S, S] shape, and the pixel range after normalisation."""
    channels, size, _ = dataset.image_shape
    return {
        "n_classes": dataset.n_classes,
        "class_names": list(dataset.class_names),
        "input_size": size,
        "input_shape": [channels, size, size],
        "input_range": [-1.0, 1.0],
    }


def save_ensemble(
    cfg: Config,
    dataset: data.Dataset,
    model: nn.Module,
    init_kwargs: dict[str, Any],
    found: dict[str, Any],
    members: list[dict[str, int]],
    summary: dict[str, Any],
) -> Path:
    """The served ensemble as a self-describing checkpoint for export (and the recipe augment retrains)."""
    name = found["hparams"]["recipe"]
    config = {
        **asdict(cfg.classify),
        **input_spec(dataset),
        "stem_used": init_kwargs["member_kwargs"].get("stem"),  # classify.stem resolved for the size
        "flag": cfg.data.flag,
        "seed": cfg.seed,
        "recipe": name,
        "recipe_settings": dict(cfg.classify.recipes.get(name) or {}),
        "hparams": {k: found["hparams"][k] for k in ("lr", "weight_decay")},
        "members": members,
        "tta": list(cfg.classify.tta),
        "profile": cfg.profile,
    }
    served = summary["served"]
    if "ood" in served:  # medgen.guard: what export and the service need to flag an input
        keys = ("method", "threshold", "keep")
        config |= {"calibrator": served["calibrator"], "ood": {k: served["ood"][k] for k in keys}}
    scores = {
        "cv_auc": summary["cv"]["cv_auc"],  # the selection figure: out-of-fold, never test (medgen.registry)
        **{k: v for k, v in summary["served"].items() if k.startswith("test_") and not k.endswith("_ci95")},
    }
    return save_model(cfg.classify.checkpoint, model, init_kwargs, config=config, metrics=scores)


def recipe_of(cfg: ClassifyConfig, checkpoint: dict[str, Any]) -> tuple[ClassifyConfig, dict[str, float]]:
    """The classify section with the recipe a classify checkpoint records, and its lr / weight decay: what
    augment retrains in every arm. Checkpoints from before recipes record hparams only."""
    config = checkpoint.get("config") or {}
    settings = config.get("recipe_settings") or {}
    chosen = replace(cfg, recipes={"chosen": settings}).recipe("chosen") if settings else cfg
    return chosen, dict(config.get("hparams") or {})
