"""The service over real HTTP (a `bentoml serve` subprocess on 127.0.0.1): outputs equal in-process
onnxruntime outputs, every bad input is a 4xx with a JSON reason, and the service keeps serving."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import runtime
from serving.contract import Contract
from serving.settings import DEFAULTS

GREY28 = Contract(1, 28)
MAX_BODY = DEFAULTS["max_body_bytes"]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def local(export_dir):
    """The same models in-process: the reference outputs."""
    return runtime.load_models(str(export_dir))


def png(array: np.ndarray, size: tuple[int, int] | None = None, fmt: str = "PNG", mode: str = "L") -> bytes:
    image = Image.fromarray(array).convert(mode)
    image = image.resize(size, Image.Resampling.BILINEAR) if size else image
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def probs_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def test_json_batch_equals_in_process(client, local, test_images):
    images, _ = test_images
    got = probs_of(client.post("/classify", json={"images": images[:64].tolist()}))
    expected = runtime.classify_probs(local["classifier"], runtime.to_model_input(images[:64, None]))
    assert got.shape == (64, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    labels = [p["label"] for p in client.post("/classify", json={"images": images[:64].tolist()}).json()["predictions"]]
    assert labels == expected.argmax(1).tolist()


@pytest.mark.parametrize("size,fmt,mode", [(None, "PNG", "L"), ((300, 211), "PNG", "RGB"), ((64, 64), "JPEG", "L")])
def test_image_upload_equals_in_process(client, local, test_images, size, fmt, mode):
    payload = png(test_images[0][5], size, fmt, mode)
    raw = client.post("/classify", content=payload, headers={"content-type": f"image/{fmt.lower()}"})
    form = client.post("/classify", files={"image": ("x", payload, f"image/{fmt.lower()}")})
    expected = runtime.classify_probs(
        local["classifier"], runtime.to_model_input(GREY28.decode_image(payload, 10**6)[None])
    )
    np.testing.assert_allclose(probs_of(raw), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(probs_of(form), expected, atol=1e-6, rtol=0)
    prediction = raw.json()["predictions"][0]
    assert prediction["class_name"] == local["classifier"].metadata["class_names"][prediction["label"]]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_npy_batch_equals_json_batch(client, test_images):
    images = test_images[0][:16]
    binary = client.post("/classify", content=npy(images), headers={"content-type": "application/x-npy"})
    np.testing.assert_allclose(
        probs_of(binary), probs_of(client.post("/classify", json={"images": images.tolist()})), atol=1e-6
    )


def test_28px_png_is_the_dataset_image(test_images):
    """A 28x28 grey PNG round-trips exactly: the service sees what the model saw in training."""
    image = test_images[0][3]
    assert np.array_equal(GREY28.decode_image(png(image), 10**6)[0], image)


def test_concurrent_requests_are_batched_correctly(client, local, test_images):
    """32 concurrent single-image requests (adaptive batching merges them) each get their own answer."""
    images = test_images[0][:32]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda im: client.post("/classify", json={"images": [im.tolist()]}), images))
    got = np.concatenate([probs_of(r) for r in responses])
    np.testing.assert_allclose(
        got, runtime.classify_probs(local["classifier"], runtime.to_model_input(images[:, None])), atol=1e-6
    )


def _object_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


GOOD = {"images": np.zeros((1, 28, 28), dtype=int).tolist()}
BAD_CLASSIFY = [
    ("not an image", b"this is not an image", "image/png", 415),
    ("empty body", b"", "image/png", 400),
    ("empty json body", b"", "application/json", 400),
    ("malformed json", b'{"images": [[1, 2', "application/json", 400),
    ("gif image", None, "image/gif", 415),
    ("wrong shape", json.dumps({"images": np.zeros((2, 28, 27)).tolist()}).encode(), "application/json", 422),
    ("ragged", json.dumps({"images": [[[0] * 28] * 27 + [[0] * 5]]}).encode(), "application/json", 422),
    ("wrong dtype", json.dumps({"images": [[["a"] * 28] * 28]}).encode(), "application/json", 422),
    ("digit strings", json.dumps({"images": [[["12"] * 28] * 28]}).encode(), "application/json", 422),
    ("booleans", json.dumps({"images": [[[True] * 28] * 28]}).encode(), "application/json", 422),
    ("fractional pixels", json.dumps({"images": [[[0.5] * 28] * 28]}).encode(), "application/json", 422),
    (
        "nan",
        b'{"images": [' + json.dumps([[0] * 28] * 27 + [[0] * 27 + ["NaN"]]).replace('"NaN"', "NaN").encode() + b"]}",
        "application/json",
        422,
    ),
    ("out of range pixels", json.dumps({"images": [[[300] * 28] * 28]}).encode(), "application/json", 422),
    ("no images key", json.dumps({"pixels": []}).encode(), "application/json", 422),
    ("json list", json.dumps([1, 2, 3]).encode(), "application/json", 422),
    (
        "too many images",
        json.dumps({"images": np.zeros((257, 28, 28), dtype=int).tolist()}).encode(),
        "application/json",
        413,
    ),
    ("npy garbage", b"\x93NUMPY garbage", "application/x-npy", 400),
    ("npy float dtype", None, "application/x-npy", 422),
    ("npy pickled object", None, "application/x-npy", 400),
    ("deep json", b"[" * 5000 + b"]" * 5000, "application/json", 400),  # a RecursionError 500 before the scan
    ("deep json in images", b'{"images": ' + b"[" * 100 + b"0" + b"]" * 100 + b"}", "application/json", 400),
    ("too many values", b'{"images": [' + b",".join([b"0"] * 1_300_000) + b"]}", "application/json", 413),
    (
        "multipart without file",
        b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        400,
    ),
]


@pytest.mark.parametrize("name,body,content_type,status", BAD_CLASSIFY, ids=[b[0] for b in BAD_CLASSIFY])
def test_bad_classify_input_is_4xx_then_service_still_serves(client, name, body, content_type, status):
    if name == "gif image":
        buffer = io.BytesIO()
        Image.new("L", (28, 28)).save(buffer, format="GIF")
        body = buffer.getvalue()
    elif name == "npy float dtype":
        body = npy(np.zeros((1, 28, 28), dtype=np.float32))
    elif name == "npy pickled object":  # an object array needs pickle: refused, never unpickled
        body = _object_npy()
    response = client.post("/classify", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert client.post("/classify", json=GOOD).status_code == 200


def test_upload_over_size_limit_is_413(client, test_images):
    payload = png(test_images[0][0]) + bytes(MAX_BODY)  # a PNG padded past the limit
    response = client.post("/classify", content=payload, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))  # chunked: no content-length
    response = client.post("/classify", content=chunks, headers={"content-type": "image/png"})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert client.post("/classify", json=GOOD).status_code == 200


def test_decompression_bomb_is_refused(client):
    """A small PNG that decodes to 64 megapixels is refused from its header, before decoding."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < MAX_BODY
    response = client.post("/classify", content=buffer.getvalue(), headers={"content-type": "image/png"})
    assert response.status_code == 413 and "pixels" in response.json()["error"]
    assert client.post("/classify", json=GOOD).status_code == 200


BAD_GENERATE = [
    ({"label": 2, "n": 4}, 422),
    ({"label": -1, "n": 4}, 422),
    ({"n": 4}, 422),
    ({"label": 0, "n": 0}, 422),
    ({"label": 0, "n": 257}, 422),
    ({"label": 0, "n": 2.5}, 422),
    ({"label": True, "n": 4}, 422),
    ({"label": 0, "n": 4, "seed": -3}, 422),
    ({"label": 0, "format": "gif"}, 422),
    ({"label": 0, "x": 1}, 422),
    ([0, 4], 422),
    ("not json", 400),
    ("[" * 3000 + "]" * 3000, 400),
]


@pytest.mark.parametrize("body,status", BAD_GENERATE, ids=[str(b[0]) for b in BAD_GENERATE])
def test_bad_generate_input_is_4xx_then_service_still_serves(client, body, status):
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = client.post("/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert client.post("/generate", json={"label": 0, "n": 1, "seed": 0}).status_code == 200


def test_generate_is_deterministic_per_seed_and_equals_in_process(client, local):
    def arrays(seed: int, label: int = 1) -> np.ndarray:
        response = client.post("/generate", json={"label": label, "n": 9, "seed": seed, "format": "array"})
        assert response.status_code == 200, response.text
        assert response.json()["seed"] == seed and response.json()["label"] == label
        return np.array(response.json()["images"], dtype=np.uint8)

    first, again, other = arrays(7), arrays(7), arrays(8)
    assert first.shape == (9, 28, 28)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, arrays(7, label=0))
    assert np.array_equal(first, runtime.channels_last(runtime.generate(local["generator"], 1, 9, 7)))


def test_generate_png_grid(client):
    response = client.post("/generate", json={"label": 0, "n": 10, "seed": 1})
    assert response.status_code == 200
    body = response.json()
    with Image.open(io.BytesIO(base64.b64decode(body["png_base64"]))) as grid:
        assert grid.format == "PNG" and grid.size == (4 * 30 + 2, 3 * 30 + 2)  # 4x3 cells of 28px + 2px gutters
    seeded = client.post("/generate", json={"label": 0, "n": 2}).json()["seed"]
    assert isinstance(seeded, int)  # an unseeded request reports the seed it drew, so it can be replayed


def test_metadata_and_health(client, export_dir):
    assert client.get("/healthz").status_code == 200
    meta = client.get("/metadata").json()
    classifier = meta["models"]["classifier"]
    assert classifier["class_names"] == ["malignant", "normal, benign"]
    assert classifier["normalisation"]["range"] == [-1.0, 1.0]
    assert classifier["sha256"] == hashlib.sha256((export_dir / "classifier.onnx").read_bytes()).hexdigest()
    assert meta["models"]["generator"]["latent_dim"] == 16
    proof = meta["manifest"]  # the manifest's hashes and commit, as verified at start
    assert proof["files"]["classifier.onnx"] == classifier["sha256"] and proof["format"] == "medgen-export-manifest/1"
    assert proof["code_commit"] and "params_sha256" in proof
    assert meta["limits"]["max_json_depth"] == 8 and meta["limits"]["auth"] == "none"
    assert meta["input_spec"]["generate"]["n"] == "1..256"
    assert "model_card" not in meta  # these stand-ins were exported without a card: nothing to link


def test_model_card_json_and_markdown(breastmnist_npz, tmp_path):
    """/model-card serves the card export wrote (medgen.model_card, listed in the manifest): JSON, or Markdown
    on request; /metadata links it with each file's sha256."""
    from tests.serving.conftest import export_standins, running

    folder = export_standins(tmp_path, breastmnist_npz, card=True)
    written = {kind: (folder / name).read_bytes() for kind, name in runtime.CARD_FILES.items()}
    with running(folder, tmp_path) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        card = c.get("/model-card")
        assert card.status_code == 200 and card.headers["content-type"] == "application/json"
        assert card.content == written["json"]
        body = card.json()
        assert body["schema"] == 1 and set(body["models"]) == {"classifier", "generator"}
        assert body["models"]["classifier"]["evaluation_data"]["n"] == 156  # the real BreastMNIST test split
        markdown = c.get("/model-card", headers={"accept": "text/markdown"})
        assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
        assert markdown.content == written["md"]
        assert "### Intended use" in markdown.text and "NOT a diagnostic device" in markdown.text
        meta = c.get("/metadata").json()
        assert meta["model_card"] == {
            "url": "/model-card",
            "formats": ["application/json", "text/markdown"],
            "sha256": {runtime.CARD_FILES[k]: hashlib.sha256(v).hexdigest() for k, v in written.items()},
        }
        assert meta["manifest"]["files"]["model_card.json"] == meta["model_card"]["sha256"]["model_card.json"]
