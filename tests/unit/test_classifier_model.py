"""Classifier models and classic augmentation: shapes, one-batch fit, init, augmentation draws."""

import pytest
import torch
from torch import nn

from medgen.models.classifier import EncoderClassifier, ResNetClassifier, TinyEncoder
from medgen.transforms import ClassicAugmentation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stem", ["standard", "pool", "cifar"])
def test_resnet_maps_grey_28x28_to_logits(stem):
    model = ResNetClassifier(n_classes=3, stem=stem, dropout=0.5).eval()
    out = model(torch.rand(4, 1, 28, 28) * 2 - 1)
    assert out.shape == (4, 3)
    assert model.backbone.conv1.in_channels == 1
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.5


def test_one_batch_fit_drives_the_loss_down():
    torch.manual_seed(0)
    model = ResNetClassifier(n_classes=2)
    x, y = torch.rand(8, 1, 28, 28) * 2 - 1, torch.tensor([0, 1] * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_xavier_init_differs_from_default_and_zeroes_biases():
    torch.manual_seed(0)
    default = ResNetClassifier(2, init="default")
    torch.manual_seed(0)
    xavier = ResNetClassifier(2, init="xavier")
    assert not torch.equal(default.backbone.conv1.weight, xavier.backbone.conv1.weight)
    assert torch.count_nonzero(xavier.head[1].bias) == 0
    with pytest.raises(ValueError):
        ResNetClassifier(2, stem="huge")


def test_encoder_classifier_wraps_a_medgen_encoder_only():
    model = EncoderClassifier("medgen.models.classifier.TinyEncoder", {"out_features": 8}, n_classes=2, dropout=0.1)
    assert model.out_features == 8 and model(torch.zeros(3, 1, 28, 28)).shape == (3, 2)
    assert TinyEncoder(out_features=5)(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ValueError, match="refusing"):
        EncoderClassifier("os.system", {}, n_classes=2)


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    images = torch.rand(16, 1, 28, 28) * 2 - 1
    aug = ClassicAugmentation(rotation=20, translate=0.1, shear=5, zoom=0.2, brightness=0.2, contrast=0.2)
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    c = aug(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    off = ClassicAugmentation(flip=False, rotation=0, translate=0, shear=0, zoom=0, brightness=0, contrast=0)
    assert not off.active and off(images, torch.Generator()) is images
    assert not ClassicAugmentation().scaled(0.0).rotation and ClassicAugmentation().scaled(2.0).rotation == 30


def test_flip_alone_mirrors_images():
    images = torch.arange(28.0).repeat(1, 1, 28, 1) / 27 * 2 - 1  # a horizontal ramp
    flip_only = ClassicAugmentation(flip=True, rotation=0, translate=0, shear=0, zoom=0, brightness=0, contrast=0)
    out = flip_only(images.repeat(32, 1, 1, 1), torch.Generator().manual_seed(0))
    mirrored = torch.isclose(out, images.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, images, atol=1e-5).flatten(1).all(1)
    assert bool((mirrored | same).all()) and 0 < int(mirrored.sum()) < 32
