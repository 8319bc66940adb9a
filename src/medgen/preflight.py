"""Is a stage's configuration feasible on this data and this machine? Checked before any training.

The config parser (medgen.config) checks each value in isolation; this module checks what only the
data or the machine can say: fold counts against class sizes, devices that exist, and the memory the
largest model, batch and sample set will need (models are built on PyTorch's `meta` device: shapes,
no storage). A value that cannot work fails here in a second with one line naming the key, not after
minutes of work or an attempt to allocate tens of GB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from medgen import data
from medgen.config import Config
from medgen.errors import ConfigError

log = logging.getLogger(__name__)
MEMORY_SHARE = 0.8  # of the memory available now: the rest is for Python, libraries and other jobs
BYTES_PER_PARAM = 16  # weight + gradient + two Adam moments, float32
BYTES_PER_ACTIVATION = 8  # float32 output kept for backward + its gradient


def check(stage: str, cfg: Config) -> None:
    """Raise ConfigError (one line naming the key) when `stage` cannot run with `cfg` here."""
    checks: dict[str, Callable[[Config], None]] = {
        "represent": _represent,
        "classify": _classify,
        "generate": _generate,
        "augment": _augment,
        "export": _export,
    }
    if stage in checks:
        checks[stage](cfg)


def available_bytes() -> int:
    """Memory available to new allocations now (psutil), in bytes."""
    import psutil

    return int(psutil.virtual_memory().available)


def need(key: str, nbytes: float, what: str) -> None:
    """ConfigError when `nbytes` exceeds MEMORY_SHARE of the memory available now."""
    budget = MEMORY_SHARE * available_bytes()
    if nbytes > budget:
        raise ConfigError(f"{key}: {what} needs ~{_gb(nbytes)} of memory, {_gb(budget)} usable here; lower it")


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**27 else f"{n / 2**20:.0f} MB"


def model_bytes(build: Callable[[], object], example: Callable[[int], tuple], batch: int) -> float:
    """Training memory of a model: parameters (with gradients and Adam state) plus the activations of
    one batch, counted by a forward pass on the meta device (no memory is allocated)."""
    import torch

    with torch.device("meta"):
        model = build()
        params = sum(p.numel() for p in model.parameters())
        total = [0]

        def count(_module, _inputs, output) -> None:
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            total[0] += sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        try:
            model.train()(*example(1))
        except Exception as exc:  # an op without a meta kernel: parameters alone still bound the need
            log.debug("meta forward failed (%s); counting parameters only", exc)
            total[0] = 0
        finally:
            for hook in hooks:
                hook.remove()
    return params * BYTES_PER_PARAM + total[0] * batch * BYTES_PER_ACTIVATION


def _device(key: str, value: str) -> None:
    from medgen.training import pick_device

    try:
        pick_device(value)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    except RuntimeError as exc:  # e.g. "cuda:7" on a one-GPU machine, a misspelt device
        raise ConfigError(f"{key}: {value!r} is not a usable device ({str(exc).splitlines()[0]})") from None


def _images(cfg: Config, dataset: data.Dataset) -> tuple[int, int]:
    """(channels, side) of the prepared images."""
    shape = dataset.train.images.shape
    return (shape[3] if len(shape) == 4 else 1), shape[1]


def _represent(cfg: Config) -> None:
    import torch

    from medgen.models import autoencoders

    rc = cfg.represent
    _device("represent.device", rc.device)
    dataset = data.load_prepared(cfg.data)
    pool = np.concatenate([dataset.train.labels, dataset.val.labels])
    smallest = int(np.bincount(pool, minlength=dataset.n_classes).min())
    if rc.cv_folds > smallest:
        raise ConfigError(
            f"represent.cv_folds: {rc.cv_folds} stratified folds need {rc.cv_folds} images of every "
            f"class in train+val; the smallest class has {smallest}"
        )
    channels, side = _images(cfg, dataset)
    need("represent.grid_n", 3 * rc.grid_n**2 * channels * side**2 * 4, f"a {rc.grid_n}x{rc.grid_n} latent grid")
    for method in rc.neural_methods:

        def build(method=method):
            return autoencoders.build(
                method,
                rc.latent_dim_max,
                image_size=side,
                channels=channels,
                dropout=rc.dropout,
                width=rc.width,
                beta=rc.beta,
            )

        nbytes = model_bytes(build, lambda n: (torch.zeros(n, channels, side, side),), min(rc.batch_size, len(pool)))
        need(
            "represent.width/latent_dim_max",
            nbytes,
            f"{method} at latent_dim_max={rc.latent_dim_max}, width={rc.width}",
        )


def _classify(cfg: Config) -> None:
    _device("classify.device", cfg.classify.device)
    _classifier_memory(cfg, "classify")


def _classifier_memory(cfg: Config, stage: str) -> None:
    import torch

    from medgen.models.classifier import ResNetClassifier, resolve_stem
    from medgen.training import load_checkpoint

    c = cfg.classify
    dataset = data.load_prepared(cfg.data)
    if c.pretrained == "encoder":
        load_checkpoint(c.encoder_checkpoint)  # missing or truncated: one line now, not after the search
    channels, side = _images(cfg, dataset)
    batch = min(c.batch_size, len(dataset.train))
    stem = resolve_stem(c.stem, side)
    build = lambda: ResNetClassifier(dataset.n_classes, stem=stem, dropout=c.dropout, in_channels=channels)  # noqa: E731
    nbytes = model_bytes(build, lambda n: (torch.zeros(n, channels, side, side),), batch)
    need("classify.batch_size", nbytes, f"ResNet-18 ({stem} stem) at batch {batch}, {side}x{side} images")


def _generate(cfg: Config) -> None:
    import torch

    from medgen.gan_training import generator_kwargs
    from medgen.models.gan import Discriminator, Generator

    g = cfg.generate
    _device("generate.device", g.device)
    dataset = data.load_prepared(cfg.data)
    channels, side = _images(cfg, dataset)
    n_labels = len(g.labels) or dataset.n_classes
    need(
        "generate.samples_per_class",
        2 * g.samples_per_class * n_labels * channels * side**2 + 4 * 500 * side**2,
        f"{g.samples_per_class} samples x {n_labels} classes",
    )
    n_eval = g.eval_samples or len(dataset.val)
    need("generate.eval_samples", 3 * 4 * n_eval * channels * side**2, "the val-FD sample set")
    batch = min(g.batch_size, len(dataset.train))
    labels = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
    shape = (channels, side, side)
    gen = model_bytes(
        lambda: Generator(**generator_kwargs(g, dataset.n_classes, shape)),
        lambda n: (torch.zeros(n, g.latent_dim), labels(n)),
        batch,
    )
    dis = max(
        model_bytes(
            lambda v=v: Discriminator(
                v, dataset.n_classes, g.d_channels, g.spectral_norm, image_size=side, image_channels=channels
            ),
            lambda n: (torch.zeros(n, channels, side, side), labels(n)),
            2 * batch,
        )
        for v in g.variants
    )
    need(
        "generate.g_channels/d_channels",
        2 * gen + dis,
        f"G (latent_dim={g.latent_dim}, g_channels={g.g_channels}) + EMA copy + D (d_channels={g.d_channels}) "
        f"at batch {batch}",
    )


def _augment(cfg: Config) -> None:
    from medgen.training import load_checkpoint

    _device("classify.device", cfg.classify.device)
    load_checkpoint(cfg.classify.checkpoint)  # the chosen hyper-parameters: missing or truncated fails now
    _classifier_memory(cfg, "augment")


def _export(cfg: Config) -> None:
    from pathlib import Path

    from medgen.training import load_checkpoint

    e = cfg.export
    for path in (e.classifier_checkpoint, e.augmented_checkpoint, e.generator_checkpoint):
        if path and Path(path).exists():  # missing ones: export.targets names the key
            load_checkpoint(path)  # truncated or corrupt: one line before any export
