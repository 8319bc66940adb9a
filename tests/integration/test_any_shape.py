"""The whole smoke pipeline, export included, on data whose shape is not BreastMNIST's: a 3-channel 28 px
npz, a 1-channel 64 px npz and a `cifar10` flag read from a native-format folder, all built here (small:
60/20/20-ish images). Every stage must take channels and size from the data, and the exported ONNX
models must declare them."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from medgen import data
from medgen.cli import run_pipeline, serve_command
from medgen.io import read_json
from medgen.params import load_config
from medgen.synthetic import load_samples
from medgen.training import load_checkpoint
from tests.conftest import _ENV_TO_CLEAR, ROOT

pytestmark = pytest.mark.integration


def patterned(n: int, size: int, channels: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark noise; class c gets a bright square whose position (and colour channel) depends on c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    images = rng.integers(0, 90, (n, size, size, channels)).astype(np.int64)
    side = size // 4
    for i, c in enumerate(labels):
        top = (c * side) % (size - side)
        images[i, top : top + side, side : 2 * side, c % channels] += 150
    images = images.clip(0, 255).astype(np.uint8)
    return (images[..., 0] if channels == 1 else images), labels


def write_npz(path: Path, size: int, channels: int, counts=(60, 20, 20)) -> Path:
    arrays = {}
    for i, (split, n) in enumerate(zip(data.SPLITS, counts)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = patterned(n, size, channels, 2, seed=i)
    np.savez(path, **arrays)
    return path


def onnx_dims(path: Path) -> tuple[list, list]:
    """Declared shapes of the first input and output ('batch' for the dynamic axis)."""
    graph = onnx.load(str(path)).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return dims(graph.input[0]), dims(graph.output[0])


def check_outputs(cfg, shape: tuple[int, int, int], stem: str) -> None:
    """What every stage left behind is built for images of `shape` (C, S, S)."""
    channels, size, _ = shape
    assert data.load_prepared(cfg.data).image_shape == shape
    represent = read_json(cfg.represent.metrics)
    assert set(represent) == set(cfg.represent.methods) and all(0 <= e["test_acc"] <= 1 for e in represent.values())
    config = load_checkpoint(cfg.classify.checkpoint)["config"]
    assert config["input_shape"] == list(shape) and config["stem_used"] == stem
    samples = load_samples(Path(cfg.generate.samples_dir) / cfg.data.flag / "samples.npz")
    assert samples.images.shape[1:] == ((size, size) if channels == 1 else (size, size, channels))
    assert read_json(cfg.augment.metrics)["arms"].keys() == set(cfg.augment.arms)
    out = Path(cfg.export.out_dir)
    assert onnx_dims(out / "classifier.onnx") == (["batch", channels, size, size], ["batch", 2])
    # a GAN's images, or the x_t a denoiser (the smoke profile's tiny GAN often loses to it) takes and returns
    generator_in, generator_out = onnx_dims(out / "generator.onnx")
    denoiser = read_json(out / "generator.json").get("kind") == "denoiser"
    assert (generator_in if denoiser else generator_out) == ["batch", channels, size, size]
    meta = read_json(out / "classifier.json")
    assert meta["input_shape"] == list(shape) and meta["channels"] == channels and meta["stem"] == stem
    assert read_json(out / "generator.json")["output_shape"] == list(shape)
    assert all(v["max_abs_diff"] <= cfg.export.parity_tolerance for v in read_json(cfg.export.metrics).values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size, channels, stem_override, stem",
    [
        ("rgb28", 28, 3, None, "standard"),  # smoke's classify.stem (standard) unchanged
        ("grey64", 64, 1, "auto", "standard"),  # the size rule: the standard stem from 64 px
    ],
)
def test_smoke_pipeline_on_other_shapes(workdir, one_thread, name, size, channels, stem_override, stem):
    npz = write_npz(workdir / f"{name}.npz", size, channels)
    overrides = [f"data.flag={name}", "data.n_classes=2", f"data.size={size}", f"data.source={npz}"]
    overrides += [f"classify.stem={stem_override}"] if stem_override else []
    cfg = load_config(workdir / "params.yaml", profile="smoke", overrides=overrides)
    results = run_pipeline(cfg)
    assert results["prepare"]["n"] == {"train": 60, "val": 20, "test": 20}
    check_outputs(cfg, (channels, size, size), stem)
    # the configured stem as the stage saw it: with "auto", stem_used above is the size rule's choice, not the
    # smoke profile's own standard stem passing through
    assert load_checkpoint(cfg.classify.checkpoint)["config"]["stem"] == (stem_override or "standard")


# ------------------------------------------------------------------- CIFAR-10 from its native files
@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, mlflow_template):
    """`medgen pipeline --profile smoke` (the CLI, in a subprocess) on a native-format CIFAR-10 folder:
    100 training images (90/10 after the carve) and 20 test images, 10 classes."""
    from medgen.standin import write_cifar10

    root = tmp_path_factory.mktemp("cifar-run")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    (root / "mlruns").mkdir()
    shutil.copy(mlflow_template, root / "mlruns" / "mlflow.db")
    write_cifar10(root / "native", patterned(100, 32, 3, 10, seed=0), patterned(20, 32, 3, 10, seed=1))
    env = {k: v for k, v in os.environ.items() if k not in (*_ENV_TO_CLEAR, "MEDGEN_DATA_SOURCE")}
    cmd = [
        sys.executable,
        "-m",
        "medgen.cli",
        "pipeline",
        "--profile",
        "smoke",
        "-S",
        "data.flag=cifar10",
        "-S",
        "data.size=32",
        "-S",
        "data.check_counts=false",
        "-S",
        f"data.source={root / 'native'}",
    ]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    return root, cmd, done


@pytest.mark.slow
def test_cli_smoke_pipeline_on_native_cifar10(cifar_run):
    root, cmd, done = cifar_run
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_config(root / "params.yaml", profile="smoke", overrides=cmd[cmd.index("-S") :][1::2])
    cfg_paths = {k: root / v for k, v in (("export", cfg.export.out_dir), ("prepare", cfg.prepare.metrics))}
    prepared = read_json(cfg_paths["prepare"])
    assert prepared["n"] == {"train": 90, "val": 10, "test": 20} and prepared["class_names"]["0"] == "airplane"
    assert prepared["metadata"]["val_carved_from_train"]["seed"] == 0
    assert onnx_dims(cfg_paths["export"] / "classifier.onnx") == (["batch", 3, 32, 32], ["batch", 10])
    meta = read_json(cfg_paths["export"] / "classifier.json")
    assert meta["input_shape"] == [3, 32, 32] and meta["class_names"][9] == "truck" and meta["stem"] == "standard"
    assert read_json(cfg_paths["export"] / "generator.json")["output_shape"] == [3, 32, 32]


def _serving_reads_the_contract() -> bool:
    """The service takes channels/size from the model metadata (#21 item 2, the serving branch)."""
    code = "".join((ROOT / "serving" / name).read_text() for name in ("runtime.py", "service.py"))
    return "input_shape" in code


@pytest.mark.skipif(
    not _serving_reads_the_contract(),
    reason="the service does not read input_shape from the model "
    "metadata yet (#21 item 2, serving branch): runs once that is merged",
)
def test_bentoml_serve_classifies_an_rgb_32px_png(cifar_run):
    from PIL import Image

    from tests.serving.conftest import free_port, serve_env, wait_ready

    root, _, done = cifar_run
    assert done.returncode == 0, done.stderr[-3000:]
    port = free_port()
    cmd = serve_command("127.0.0.1", port)
    with (root / "serve.log").open("w") as log:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=serve_env(root / "models" / "export"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process)
            import httpx

            picture = io.BytesIO()
            Image.fromarray(patterned(1, 32, 3, 10, seed=5)[0][0], mode="RGB").save(picture, format="PNG")
            response = httpx.post(
                f"{url}/classify", content=picture.getvalue(), headers={"content-type": "image/png"}, timeout=30
            )
            assert response.status_code == 200, response.text
            (prediction,) = response.json()["predictions"]
            probs = np.asarray(prediction["probabilities"])
            assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5 and prediction["label"] == int(probs.argmax())
            assert response.json()["class_names"][0] == "airplane"
            # the classify ensemble: /metadata lists its members, views and recipe (smoke: 2 folds x 1 repeat)
            info = httpx.get(f"{url}/metadata", timeout=30).json()["models"]["classifier"]
            assert [(m["repeat"], m["fold"]) for m in info["members"]] == [(0, 0), (0, 1)]
            assert info["views"] == ["identity", "hflip"] and info["recipe"] in ("classic", "plain")
        finally:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
