"""Classifiers for images (N, C, S, S) in [-1, 1], C = 1 or 3: torchvision ResNet-18 and an encoder + head.

Both map (N, C, S, S) -> logits (N, n_classes) and expose `backbone` (the feature extractor, which the
transfer recipe freezes and unfreezes) and `head` (dropout + linear). The global average pool before the
head makes any S work; the stem decides how much resolution layer1 keeps.

ResNet-18 stems (what happens before layer1; spatial size of layer1's input for an S x S image):
  * "standard": ImageNet's 7x7 stride-2 conv + 3x3 stride-2 max-pool -> S/4 (cheapest; 28 px: layer4 sees 1x1).
  * "pool":     3x3 stride-1 conv + the max-pool -> S/2 (about 4x the conv work of "standard").
  * "cifar":    3x3 stride-1 conv, no max-pool -> S (the CIFAR/MedMNIST variant; ~16x the work).
  * "auto":     a rule on the size (`resolve_stem`): "cifar" up to 32 px, "standard" from 64 px, so layer1
                sees 28-32 px at 28/32 and 16-56 px from 64 to 224 px (MedMNIST+'s ResNet-18 setting).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

ENCODER_PREFIXES = ("medgen.",)  # an encoder class named in a checkpoint must be ours
STEMS = ("standard", "pool", "cifar")  # what a built network can have (config adds "auto": resolve_stem)
INITS = ("default", "xavier")
SMALL_IMAGE_MAX = 32
# test-time views: the image, its mirror, and one-pixel shifts (edge pixels repeated)
TTA_VIEWS = ("identity", "hflip", "left", "right", "up", "down")
_SHIFT_PAD = {
    "left": (0, 1, 0, 0),
    "right": (1, 0, 0, 0),
    "up": (0, 0, 0, 1),
    "down": (0, 0, 1, 0),
}  # "auto": sides up to this keep full resolution into layer1 (cifar stem)


def resolve_stem(stem: str, size: int) -> str:
    """The concrete stem for images of side `size`: "auto" follows the rule above, others pass through."""
    if stem != "auto":
        return stem
    return "cifar" if size <= SMALL_IMAGE_MAX else "standard"


class ResNetClassifier(nn.Module):
    """torchvision ResNet-18 for (N, C, S, S) -> logits (N, n_classes), dropout before the linear head."""

    def __init__(
        self, n_classes: int, stem: str = "standard", dropout: float = 0.0, init: str = "default", in_channels: int = 1
    ):
        super().__init__()
        if stem not in STEMS or init not in INITS:
            raise ValueError(f"stem must be one of {STEMS} and init one of {INITS}, got {stem!r}, {init!r}")
        net = resnet18(weights=None, num_classes=n_classes)
        if stem == "standard":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)  # (N,64,S/2,S/2)
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)  # (N,64,S,S)
        if stem == "cifar":
            net.maxpool = nn.Identity()
        self.out_features = net.fc.in_features  # 512
        net.fc = nn.Identity()
        self.backbone = net  # (N,C,S,S) -> (N,512) after global average pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.out_features, n_classes))
        if init == "xavier":
            xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (N, n_classes)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each residual stage's output averaged over space [(N, 64), (N, 128), (N, 256), (N, 512)] and the
        logits (N, n_classes): what the input guard (medgen.guard) measures distances on."""
        net = self.backbone
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        pooled = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = stage(h)
            pooled.append(h.mean(dim=(2, 3)))
        return pooled, self.head(pooled[-1])


class EncoderClassifier(nn.Module):
    """A feature encoder (N, C, S, S) -> (N, F) followed by dropout and a linear head -> (N, n_classes).

    The encoder is rebuilt from its class path and constructor kwargs (the `model` spec that
    medgen.training.save_model records), so this module itself stays loadable with load_model.
    """

    def __init__(
        self, encoder_class: str, encoder_kwargs: dict, n_classes: int, dropout: float = 0.0, init: str = "default"
    ):
        super().__init__()
        if not encoder_class.startswith(ENCODER_PREFIXES):
            raise ValueError(f"refusing to import encoder class {encoder_class!r} (must be under {ENCODER_PREFIXES})")
        module_name, _, class_name = encoder_class.rpartition(".")
        self.backbone = getattr(importlib.import_module(module_name), class_name)(**encoder_kwargs)
        self.out_features = int(self.backbone.out_features)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.out_features, n_classes))
        if init == "xavier":
            xavier_init(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The encoder's output [(N, F)] and the logits (N, n_classes) (see ResNetClassifier.features)."""
        encoded = self.backbone(x)
        return [encoded], self.head(encoded)


class TinyEncoder(nn.Module):
    """A small conv encoder with the represent stage's contract: (N, C, S, S) in [-1, 1] -> (N, out_features).

    An example and test double for the transfer option; the represent stage ships its own encoders.
    """

    def __init__(self, out_features: int = 32, width: int = 16, channels: int = 1):
        super().__init__()
        self.out_features = out_features
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.ReLU(),  # (N, w, S/2, S/2)
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),  # (N, 2w, S/4, S/4)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 2w)
            nn.Linear(2 * width, out_features),  # (N, F)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def xavier_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv and linear layer (reference report 003)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def tta_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One test-time view of images (N, C, S, S), same shape: identity, horizontal mirror, or the content moved
    one pixel left/right/up/down with the edge row or column repeated."""
    if view == "identity":
        return x
    if view == "hflip":
        return torch.flip(x, dims=(3,))
    if view not in _SHIFT_PAD:
        raise ValueError(f"unknown test-time view {view!r} (known: {', '.join(TTA_VIEWS)})")
    padded = F.pad(x, _SHIFT_PAD[view], mode="replicate")  # (N, C, S, S+1) or (N, C, S+1, S)
    return {
        "left": padded[..., :, 1:],
        "right": padded[..., :, :-1],
        "up": padded[..., 1:, :],
        "down": padded[..., :-1, :],
    }[view]


MEMBER_CLASSES = {"ResNetClassifier": ResNetClassifier, "EncoderClassifier": EncoderClassifier}


CALIBRATIONS = ("none", "temperature", "bias")
GUARD_SCORES = ("mahalanobis", "energy", "msp")


class EnsembleClassifier(nn.Module):
    """K classifiers of one architecture averaged over test-time views: (N, C, S, S) -> (N, n_classes).

    The output is log(mean softmax) over members and views, so softmax(output) is exactly the averaged
    probability and every consumer of "logits" (predict_proba, the ONNX service) reads it unchanged.
    With `calibration` "temperature" or "bias" the output is log_softmax(log(mean) / T + b) (buffers
    `cal_temperature`, `cal_bias`; b = 0 for "temperature", which keeps every ranking and argmax).
    With a `guard` ({"score", "level", "dim"}: medgen.guard), `guarded(x)` also returns an out-of-distribution
    score (N,), higher = less like the training images: "mahalanobis" = the smallest class-conditional
    Mahalanobis distance of the view-averaged features of residual stage `level` (buffers `guard_means`
    (K members, classes, dim), `guard_precision` (K members, dim, dim)), averaged over members; "energy" =
    -logsumexp(member logits) averaged over members and views; "msp" = 1 - the largest served probability.
    """

    def __init__(
        self,
        member_class: str,
        member_kwargs: dict,
        n_members: int,
        views: tuple[str, ...] = ("identity",),
        calibration: str = "none",
        guard: dict | None = None,
    ):
        super().__init__()
        if member_class not in MEMBER_CLASSES:
            raise ValueError(f"member_class must be one of {tuple(MEMBER_CLASSES)}, got {member_class!r}")
        unknown = [v for v in views if v not in TTA_VIEWS]
        if n_members < 1 or not views or unknown:
            raise ValueError(f"need >= 1 member and known views ({', '.join(TTA_VIEWS)}), got {n_members}, {views}")
        if calibration not in CALIBRATIONS or (guard is not None and guard.get("score") not in GUARD_SCORES):
            raise ValueError(f"calibration must be one of {CALIBRATIONS} and guard score one of {GUARD_SCORES}")
        self.members = nn.ModuleList(MEMBER_CLASSES[member_class](**member_kwargs) for _ in range(n_members))
        self.views = tuple(views)
        self.calibration, self.guard = calibration, dict(guard) if guard else None
        n_classes = int(member_kwargs["n_classes"])
        if calibration != "none":
            self.register_buffer("cal_temperature", torch.ones(1))
            self.register_buffer("cal_bias", torch.zeros(n_classes))
        if self.guard and self.guard["score"] == "mahalanobis":
            dim = int(self.guard["dim"])
            self.register_buffer("guard_means", torch.zeros(n_members, n_classes, dim))
            self.register_buffer("guard_precision", torch.zeros(n_members, dim, dim))

    def _split_mean(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """(V*N, ...) stacked views -> their mean (N, ...), sliced so the trailing axes stay static in ONNX."""
        return sum(values[i * n : (i + 1) * n] for i in range(len(self.views))) / len(self.views)

    def _run(self, x: torch.Tensor, scored: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = x.shape[0]
        views = torch.cat([tta_view(x, v) for v in self.views]) if len(self.views) > 1 else x  # (V*N, C, S, S)
        score_kind = self.guard["score"] if scored and self.guard else None
        total, score = None, None
        for m, member in enumerate(self.members):
            if score_kind in ("mahalanobis", "energy"):
                pooled, logits = member.features(views)
            else:
                logits = member(views)
            mean = self._split_mean(F.softmax(logits, dim=1), n)  # (N, K)
            total = mean if total is None else total + mean
            if score_kind == "mahalanobis":
                feats = self._split_mean(pooled[int(self.guard["level"])], n)  # (N, D)
                diff = feats[:, None, :] - self.guard_means[m][None]  # (N, K, D)
                member_score = ((diff @ self.guard_precision[m]) * diff).sum(-1).amin(dim=1)  # (N,)
            elif score_kind == "energy":
                member_score = self._split_mean(-torch.logsumexp(logits, dim=1), n)  # (N,)
            if score_kind in ("mahalanobis", "energy"):
                score = member_score if score is None else score + member_score
        log_mean = torch.log((total / len(self.members)).clamp_min(1e-12))
        if self.calibration != "none":
            log_mean = F.log_softmax(log_mean / self.cal_temperature + self.cal_bias, dim=1)
        if score_kind == "msp":
            score = 1.0 - log_mean.exp().amax(dim=1)
        elif score is not None:
            score = score / len(self.members)
        return log_mean, score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, scored=False)[0]

    def guarded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(served log-probabilities (N, n_classes), out-of-distribution score (N,)); needs a guard."""
        if not self.guard:
            raise ValueError("this ensemble has no input guard")
        return self._run(x, scored=True)


class GuardedOutputs(nn.Module):
    """An ensemble with a guard as a module of two outputs (logits, ood_score): what export traces."""

    def __init__(self, ensemble: EnsembleClassifier):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ensemble.guarded(x)
