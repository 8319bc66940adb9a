"""Export config validation, ONNX metadata helpers and the serving runtime's input checks (no HTTP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen import onnx_export
from medgen.errors import ConfigError, MedgenError
from medgen.models.reference import ReferenceClassifier, ReferenceGenerator
from medgen.params import build_config
from serving import inputs, runtime
from serving.bounded import BadInput
from serving.contract import Contract


@pytest.mark.parametrize(
    "override,key",
    [
        ("export.parity_tolerance=0.5", "export.parity_tolerance"),
        ("export.parity_batches=[]", "export.parity_batches"),
        ("export.opset=5", "export.opset"),
        ("export.alias=not an alias", "export.alias"),
        ("export.classifier_checkpoint=", "export.classifier_checkpoint"),
    ],
)
def test_export_config_rejects_bad_values(override, key):
    with pytest.raises(ConfigError, match=key):
        build_config({}, overrides=[override])


def test_reference_models_follow_the_contract():
    assert ReferenceClassifier(n_classes=3)(torch.zeros(5, 1, 28, 28)).shape == (5, 3)
    out = ReferenceGenerator(latent_dim=8, n_classes=2).eval()(torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))
    assert out.shape == (4, 1, 28, 28) and out.abs().max() <= 1


def test_class_names_and_run_id_from_checkpoint_config():
    assert onnx_export.class_names_of({"class_names": {"0": "a", "1": "b"}}, 2) == ["a", "b"]
    assert onnx_export.class_names_of({}, 2) == ["0", "1"]
    with pytest.raises(MedgenError, match="class names"):
        onnx_export.class_names_of({"class_names": ["a"]}, 2)
    assert onnx_export.source_run_id({"config": {"run_id": "abc"}}) == "abc"
    assert onnx_export.source_run_id({"config": {}}) == ""


def test_classifier_batches_are_consecutive_real_images():
    images = np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)
    batches = onnx_export.classifier_batches(images, (1, 7, 4))
    assert [len(b["images"]) for b in batches] == [1, 7, 4]
    assert np.array_equal(batches[2]["images"][2:], images[:2])  # wraps around


def test_to_model_input_matches_training_convention():
    from medgen.data import Split, to_tensors

    images = np.array([[[0, 255], [127, 128]]], dtype=np.uint8)
    expected, _ = to_tensors(Split(images, np.zeros(1, dtype=np.int64)))
    assert np.array_equal(runtime.to_model_input(images[:, None]), expected.numpy())  # (N, C, H, W) in


@pytest.mark.parametrize(
    "body,message",
    [
        ({"label": 0, "n": 300}, "n must be"),
        ({"label": "0"}, "label must be an integer"),
        ({}, "label must be"),
        ({"label": 0, "seed": 1.5}, "seed must be an integer"),
    ],
)
def test_parse_generate_rejects(body, message):
    with pytest.raises(BadInput, match=message):
        inputs.generate_args(body, 2, 256)


def test_parse_generate_defaults():
    assert inputs.generate_args({"label": 1}, 2, 256) == (1, 16, None, "png")


def test_decode_image_rejects_bad_bytes():
    with pytest.raises(BadInput) as info:
        Contract(1, 28).decode_image(b"GIF89a....", 10**6)
    assert info.value.status == 415
    with pytest.raises(BadInput) as info:
        Contract(1, 28).decode_image(b"", 10**6)
    assert info.value.status == 400


def test_greedy_batcher_merges_concurrent_requests_and_splits_results():
    import asyncio

    from serving.batching import GreedyBatcher

    seen: list[int] = []

    def double(batches):
        seen.append(sum(len(b) for b in batches))
        out = np.concatenate(batches) * 2
        return np.split(out, np.cumsum([len(b) for b in batches])[:-1])

    async def main():
        batcher = GreedyBatcher(double, max_items=8)
        inputs = [np.full((k % 3 + 1, 2), k) for k in range(10)]
        results = await asyncio.gather(*(batcher(x) for x in inputs))
        return batcher, inputs, results

    batcher, inputs, results = asyncio.run(main())
    for x, y in zip(inputs, results):
        assert np.array_equal(y, x * 2)
    assert batcher.calls < 10 and max(seen) <= 8 and sum(seen) == sum(len(x) for x in inputs)


def test_greedy_batcher_passes_errors_and_keeps_working():
    import asyncio

    from serving.batching import GreedyBatcher

    def fail_on_negative(batches):
        if any((b < 0).any() for b in batches):
            raise ValueError("negative")
        return list(batches)

    async def main():
        batcher = GreedyBatcher(fail_on_negative, max_items=4)
        with pytest.raises(ValueError):
            await batcher(np.array([-1]))
        return await batcher(np.array([3]))

    assert asyncio.run(main()).tolist() == [3]
