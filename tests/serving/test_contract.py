"""The service takes its input contract from the model (real HTTP): a 3-channel 32 px model and a 1-channel
64 px model, built here, each behind its own `bentoml serve`. Uploads are converted to the model's channels
and size, arrays are checked against its shape (422 naming it), /generate returns the trained shape and
/metadata states the contract."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import runtime
from tests.serving.conftest import running
from tests.serving.shaped import export_shaped

CASES = {"rgb32": (3, 32, True), "grey64": (1, 64, False)}  # grey64's metadata has input_size only (today's export)


@pytest.fixture(scope="module", params=list(CASES))
def shaped(request, tmp_path_factory):
    """(channels, size, base URL, in-process models) for each stand-in shape."""
    channels, size, record = CASES[request.param]
    folder = export_shaped(tmp_path_factory.mktemp(request.param) / "export", channels, size, record)
    with running(folder, folder.parent) as live:
        yield channels, size, live.url, runtime.load_models(str(folder))


def post(url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=30, **kwargs)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def probs(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def test_metadata_states_the_contract(shaped):
    channels, size, url, _ = shaped
    meta = httpx.get(f"{url}/metadata", timeout=30).json()
    spec = meta["input_spec"]["classify"]
    assert spec["input_shape"] == [channels, size, size] and spec["channels"] == channels and spec["size"] == size
    assert meta["input_spec"]["generate"]["returns"] == [channels, size, size]
    assert meta["models"]["classifier"]["channels"] == channels


def test_uploads_are_converted_to_the_model_contract(shaped):
    """An RGB 32x32 PNG, a grey 100x80 PNG and an RGB JPEG all reach the model as (C, S, S), the same way
    the in-process contract converts them."""
    channels, size, url, local = shaped
    rng = np.random.default_rng(0)
    uploads = [
        encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        encode(rng.integers(0, 256, (80, 100), dtype=np.uint8)),
        encode(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8), "JPEG"),
    ]
    contract = local["classifier"].contract
    for payload in uploads:
        got = probs(post(url, "/classify", content=payload, headers={"content-type": "image/png"}))
        pixels = contract.decode_image(payload, 10**7)
        assert pixels.shape == (channels, size, size)
        expected = runtime.classify_probs(local["classifier"], runtime.to_model_input(pixels[None]))
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_arrays_in_both_layouts_give_the_same_answer(shaped):
    channels, size, url, local = shaped
    first = np.random.default_rng(1).integers(0, 256, (3, channels, size, size), dtype=np.uint8)
    last = np.moveaxis(first, 1, -1)
    expected = runtime.classify_probs(local["classifier"], runtime.to_model_input(first))
    for array in (first, last):
        np.testing.assert_allclose(probs(post(url, "/classify", json={"images": array.tolist()})), expected, atol=1e-6)
        buffer = io.BytesIO()
        np.save(buffer, array)
        npy = post(url, "/classify", content=buffer.getvalue(), headers={"content-type": "application/x-npy"})
        np.testing.assert_allclose(probs(npy), expected, atol=1e-6)


def test_wrong_shapes_are_422_naming_the_expected_shape(shaped):
    channels, size, url, _ = shaped
    other = 28 if size != 28 else 32
    wrong = [
        np.zeros((2, channels, other, other)),
        np.zeros((2, 4 - channels, size, size)),
        np.zeros((2, size, size, 2)),
        np.zeros((2, 2, channels, size, size)),
    ]
    for array in wrong:
        response = post(url, "/classify", json={"images": array.astype(int).tolist()})
        assert response.status_code == 422, response.text
        assert f"[N, {channels}, {size}, {size}]" in response.json()["error"]
        assert f"[N, {size}, {size}, {channels}]" in response.json()["error"]


def test_generate_returns_the_trained_shape(shaped):
    channels, size, url, local = shaped
    body = post(url, "/generate", json={"label": 1, "n": 5, "seed": 3, "format": "array"}).json()
    images = np.array(body["images"], dtype=np.uint8)
    assert images.shape == ((5, size, size) if channels == 1 else (5, size, size, channels))
    assert (body["channels"], body["size"]) == (channels, size)
    assert np.array_equal(images, runtime.channels_last(runtime.generate(local["generator"], 1, 5, 3)))
    grid = post(url, "/generate", json={"label": 0, "n": 4, "seed": 1}).json()
    with Image.open(io.BytesIO(base64.b64decode(grid["png_base64"]))) as image:
        assert image.mode == ("L" if channels == 1 else "RGB")
        assert image.size == (2 * (size + 2) + 2, 2 * (size + 2) + 2)  # 2x2 cells + 2 px gutters
    again = post(
        url,
        "/classify",
        content=json.dumps({"images": images.tolist()}).encode(),
        headers={"content-type": "application/json"},
    )
    assert again.status_code == 200  # what /generate returns, /classify accepts as is
