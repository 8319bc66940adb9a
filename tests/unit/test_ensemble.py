"""Cross-validation folds, parallel fold fits, the ensemble module and its ONNX graph, the recipe regularisers."""

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from medgen import classification, data, ensemble
from medgen.config import ClassifyConfig
from medgen.errors import ConfigError, MedgenError
from medgen.models.classifier import EnsembleClassifier, tta_view
from medgen.onnx_export import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


def _pool(n=40, size=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n // 4) + [1] * (n - n // 4))
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    images[labels == 1, :, : size // 2] //= 3  # something to learn
    return data.Split(images, labels)


def _cfg(**changes):
    return replace(ClassifyConfig(), stem="standard", batch_size=8, search_epochs=2, threads=1, **changes)


def test_folds_are_stratified_disjoint_and_cover_the_pool_once_per_repeat():
    labels = _pool().labels
    folds = ensemble.make_folds(labels, 5, 2, seed=3)
    assert [(f.repeat, f.fold) for f in folds] == [(r, f) for r in range(2) for f in range(5)]
    assert len({f.seed for f in folds}) == 10
    for r in range(2):
        held = np.concatenate([f.held_out for f in folds if f.repeat == r])
        assert sorted(held.tolist()) == list(range(len(labels)))
        for f in (f for f in folds if f.repeat == r):
            assert not set(f.train) & set(f.held_out)
            assert np.bincount(labels[f.held_out]).tolist() == [2, 6]  # 10 / 30 split five ways
    assert not np.array_equal(folds[0].held_out, folds[5].held_out)  # another repeat, another split
    with pytest.raises(MedgenError, match="cv_folds=11 but the smallest class has 10 images"):
        ensemble.make_folds(labels, 11, 1, seed=0)


def test_parallel_fold_fits_equal_the_serial_ones():
    pool = _pool()
    folds = ensemble.make_folds(pool.labels, 2, 1, seed=0)
    serial = ensemble.fit_folds(_cfg(jobs=1), pool, 2, folds, {}, "cpu")
    parallel = ensemble.fit_folds(_cfg(jobs=2), pool, 2, folds, {}, "cpu")
    for a, b in zip(serial, parallel):
        assert np.array_equal(a["probs"], b["probs"])
        assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    oof = ensemble.out_of_fold(pool, serial, 2)
    assert len(oof) == 1 and not np.isnan(oof[0]).any()
    scores = ensemble.cv_scores(pool.labels, oof)
    assert set(scores) == {"cv_auc", "cv_acc", "cv_balanced_acc"} and 0 <= scores["cv_auc"] <= 1


def test_the_ensemble_averages_member_probabilities_over_views():
    torch.manual_seed(0)
    model = EnsembleClassifier("ResNetClassifier", {"n_classes": 2, "stem": "standard"}, 3, ("identity", "hflip", "up"))
    model.eval()
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        expected = torch.stack(
            [torch.softmax(m(tta_view(x, v)), 1) for m in model.members for v in ("identity", "hflip", "up")]
        ).mean(0)
        got = torch.softmax(model(x), 1)
    assert torch.allclose(got, expected, atol=1e-6)
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert tta_view(image, "right")[0, 0, 0].tolist() == [0, 0, 1, 2]  # content moved right, edge repeated
    assert tta_view(image, "up")[0, 0, :, 0].tolist() == [4, 8, 12, 12]
    with pytest.raises(ValueError, match="known views"):
        EnsembleClassifier("ResNetClassifier", {"n_classes": 2}, 2, ("twist",))


def test_one_onnx_graph_matches_the_torch_ensemble(tmp_path):
    torch.manual_seed(1)
    views = ("identity", "hflip", "left", "right", "up", "down")
    model = EnsembleClassifier("ResNetClassifier", {"n_classes": 2, "stem": "pool"}, 3, views).eval()
    path = tmp_path / "ensemble.onnx"
    export_onnx(model, (torch.zeros(2, 1, 28, 28),), path, ("images",), ("logits",), 17, {})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [d.dim_value or d.dim_param for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim] == [
        "batch",
        2,
    ]  # the class axis stays static: the service reads it
    for n in (1, 7):
        x = np.random.default_rng(n).uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32)
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        (logits,) = session.run(None, {"images": x})
        got = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        assert np.abs(got - expected).max() <= 1e-4


def test_regularisers_change_the_fit_and_ema_keeps_the_average():
    pool = _pool()
    base = _cfg(augment=False)
    runs = {}
    for name, changes in {
        "base": {},
        "mixup": {"mixup": 0.2},
        "cutout": {"cutout": 0.25},
        "smoothing": {"label_smoothing": 0.1},
        "ema": {"ema": 0.9},
    }.items():
        model, history = classification.fit_classifier(
            replace(base, **changes), pool, None, 2, seed=5, device="cpu", epochs=2
        )
        runs[name] = (model, history)
    assert runs["base"][1]["best_val_auc"] is None and len(runs["base"][1]["rows"]) == 2  # fixed schedule
    for name in ("mixup", "cutout", "smoothing"):
        assert runs[name][1]["rows"][0]["train_loss"] != runs["base"][1]["rows"][0]["train_loss"], name
    # EMA trains the same weights as base (same seed, same steps) but returns their average
    assert runs["ema"][1]["rows"] == runs["base"][1]["rows"]
    assert not torch.equal(runs["ema"][0].head[1].weight, runs["base"][0].head[1].weight)


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(6, 1, 10, 10)
    out = classification.cutout(x, 0.3, torch.Generator().manual_seed(0))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert ((zeros > 0) & (zeros <= 9)).all()  # a 3x3 square, cut at the border


def test_recipes_are_validated_like_the_section():
    c = ClassifyConfig(recipes={"a": {"stem": "cifar", "lr": "3e-4", "mixup": 0.2}})
    assert (c.recipe("a").stem, c.recipe("a").lr, c.recipe("a").mixup) == ("cifar", 3e-4, 0.2)
    with pytest.raises(ConfigError, match=r"^classify.recipes.a.stem: must be one of standard, pool, cifar, auto"):
        ClassifyConfig(recipes={"a": {"stem": "x"}})
    with pytest.raises(ConfigError, match=r"^classify.recipes.a.checkpoint: not a recipe setting"):
        ClassifyConfig(recipes={"a": {"checkpoint": "x"}})
    with pytest.raises(ConfigError, match=r"^classify.recipes.a.augment: expected a bool, got 1"):
        ClassifyConfig(recipes={"a": {"augment": 1}})
    with pytest.raises(ConfigError, match=r"^classify.tta: unknown view 'twist'"):
        ClassifyConfig(tta=("twist",))
