"""Every model takes its shape from the data: 1 or 3 channels, sides 28..224. Shape tests per model and
size, one-batch fits, and the 28 px layouts pinned (BreastMNIST's results depend on them)."""

from __future__ import annotations

import pytest
import torch

from medgen.config import GenerateConfig
from medgen.gan_training import GanHyper, GanTrainer, fit_feature_net, generator_kwargs
from medgen.models import autoencoders
from medgen.models.classifier import EncoderClassifier, ResNetClassifier, TinyEncoder, resolve_stem
from medgen.models.features import FeatureNet
from medgen.models.gan import Discriminator, Generator, canvas

SHAPES = [(1, 28), (3, 28), (3, 32), (1, 64), (3, 128), (1, 224)]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    torch.manual_seed(0)


def test_canvas_rule():
    assert canvas(28) == (3, 32, 2) and canvas(32) == (3, 32, 0) and canvas(64) == (4, 64, 0)
    assert canvas(128) == (5, 128, 0) and canvas(224) == (6, 256, 16)


@pytest.mark.parametrize("channels, size", SHAPES)
def test_gan_shapes(channels, size):
    g = Generator(latent_dim=8, n_classes=3, channels=4, embed_dim=2, image_size=size, image_channels=channels).eval()
    out = g(torch.randn(2, 8), torch.tensor([0, 2])).detach()
    assert out.shape == (2, channels, size, size) and float(out.abs().max()) <= 1.0
    for variant in ("cdcgan", "acgan", "wgan-gp"):
        d = Discriminator(variant, n_classes=3, channels=4, image_size=size, image_channels=channels).eval()
        logit, classes = d(out, torch.tensor([0, 2]))
        assert logit.shape == (2,) and (classes is None) == (variant != "acgan")
    widths = [m.out_channels for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths[-1] == channels and max(widths) <= 8 * 4  # capped at 8c


def test_gan_layout_at_28px_is_the_three_stage_dcgan():
    """The BreastMNIST generator/discriminator must keep their layers (and so their random init)."""
    g = Generator(latent_dim=100, n_classes=2, channels=32, embed_dim=16)
    shapes = [tuple(p.shape) for p in g.parameters()]
    assert shapes == [
        (2, 16),
        (116, 128, 4, 4),
        (128,),
        (128,),
        (128, 64, 4, 4),
        (64,),
        (64,),
        (64, 32, 4, 4),
        (32,),
        (32,),
        (32, 1, 4, 4),
        (1,),
    ]
    d = Discriminator("cdcgan", n_classes=2, channels=32)
    assert [tuple(p.shape) for p in d.parameters()] == [
        (32, 3, 4, 4),
        (32,),
        (64, 32, 4, 4),
        (64,),
        (64,),
        (128, 64, 4, 4),
        (128,),
        (128,),
        (1, 128, 4, 4),
        (1,),
    ]


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 64)])
def test_gan_trainer_one_epoch_on_other_shapes(channels, size):
    cfg = GenerateConfig(latent_dim=8, g_channels=4, d_channels=4, embed_dim=2, batch_size=4, diffaug=("translation",))
    trainer = GanTrainer(cfg, GanHyper("acgan", 1e-3, 1e-3, 0.5), 2, torch.device("cpu"), (channels, size, size))
    x = torch.rand(8, channels, size, size) * 2 - 1
    losses = trainer.train_epoch(x, torch.arange(8) % 2)
    assert torch.isfinite(torch.tensor(losses["loss_d"])) and trainer.g_steps == 2
    rebuilt = Generator(**generator_kwargs(cfg, 2, (channels, size, size)))
    assert rebuilt(torch.randn(1, 8), torch.tensor([1])).shape == (1, channels, size, size)


@pytest.mark.parametrize("channels, size", SHAPES)
def test_feature_net_shapes(channels, size):
    net = FeatureNet(n_classes=2, channels=4, feature_dim=8, in_channels=channels).eval()
    x = torch.zeros(2, channels, size, size)
    assert net.features(x).shape == (2, 8) and net(x).shape == (2, 8)


def test_feature_net_fits_rgb():
    x, y = torch.rand(16, 3, 32, 32) * 2 - 1, torch.arange(16) % 2
    net = fit_feature_net(x, y, 2, GenerateConfig(feature_epochs=1, feature_dim=8), torch.device("cpu"))
    assert net.body[0].in_channels == 3 and net.features(x).shape == (16, 8)


@pytest.mark.parametrize("stem", ["standard", "pool", "cifar"])
@pytest.mark.parametrize("channels, size", [(3, 28), (3, 32), (1, 64)])
def test_resnet_channels_and_sizes(stem, channels, size):
    model = ResNetClassifier(n_classes=10, stem=stem, in_channels=channels).eval()
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 10)
    assert model.backbone.conv1.in_channels == channels


def test_auto_stem_rule_and_pool_unchanged_at_28():
    stems = [resolve_stem("auto", s) for s in (28, 32, 64, 128, 224)]
    assert stems == ["cifar", "cifar", "standard", "standard", "standard"]
    assert resolve_stem("pool", 28) == "pool" and resolve_stem("standard", 28) == "standard"
    pool = ResNetClassifier(2, stem="pool")  # BreastMNIST's default: 3x3 stride-1 conv, then the max-pool
    assert pool.backbone.conv1.kernel_size == (3, 3) and isinstance(pool.backbone.maxpool, torch.nn.MaxPool2d)


def test_encoder_classifier_on_rgb():
    model = EncoderClassifier("medgen.models.classifier.TinyEncoder", {"out_features": 8, "channels": 3}, n_classes=4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert TinyEncoder(out_features=5, channels=3)(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("method", autoencoders.METHODS)
@pytest.mark.parametrize("channels, size", [(3, 28), (3, 32), (1, 64)])
def test_autoencoders_round_trip_shapes(method, channels, size):
    model = autoencoders.build(method, latent_dim=4, image_size=size, channels=channels, width=4)
    x = torch.rand(4, channels, size, size) * 2 - 1
    assert model.encode(x).shape == (4, 4) and model(x).shape == x.shape
    loss, parts = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and parts["recon"] > 0


def test_export_refuses_models_built_for_other_images(tmp_path):
    """A stale checkpoint (grey 28 px) against RGB 32 px data is one clear error, not a torch traceback."""
    import numpy as np

    from medgen.errors import MedgenError
    from medgen.params import build_config
    from medgen.stages import export
    from medgen.training import load_model
    from tests.standins import save_classifier, save_generator

    cfg = build_config({})
    rgb = np.zeros((4, 3, 32, 32), dtype=np.float32)
    model, checkpoint = load_model(save_classifier(tmp_path / "c.pt"))
    del checkpoint["config"]["input_shape"]  # as written before input_shape existed: grey by definition
    with pytest.raises(
        MedgenError,
        match=r"classifier was trained on \[1, 28, 28\] inputs but the prepared images "
        r"are \[3, 32, 32\]",
    ):
        export._classifier_spec(model, checkpoint, rgb, cfg)
    generator, checkpoint = load_model(save_generator(tmp_path / "g.pt"))
    with pytest.raises(
        MedgenError,
        match=r"generator makes \[1, 28, 28\] images but the prepared images are "
        r"\[3, 32, 32\]",
    ):
        export._generator_spec(generator, checkpoint, rgb, cfg)
    rgb_model, checkpoint = load_model(save_classifier(tmp_path / "rgb.pt", channels=3, size=32))
    meta = export._classifier_spec(rgb_model, checkpoint, rgb, cfg)[0]
    assert meta["input_shape"] == [3, 32, 32] and meta["inputs"][0]["shape"] == ["batch", 3, 32, 32]
