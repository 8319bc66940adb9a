"""serving.runtime.generate over an exported denoiser (serving/ddim.py on onnxruntime): the GAN path's uint8
(n, C, S, S), seeded, the torch sampler's images after the same rounding; the request's steps/guidance checks;
a denoiser whose metadata the sampler cannot run is refused at load; and none of it imports torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen import data
from medgen.diffusion import ddim_sample
from medgen.params import build_config
from medgen.stages import export
from serving import inputs, runtime
from serving.bounded import BadInput
from serving.contract import ModelError
from tests.conftest import ROOT
from tests.standins import save_denoiser


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, runtime.Model, onnx path, json path) of a tiny denoiser exported by the export stage."""
    folder = tmp_path_factory.mktemp("denoiser")
    cfg = build_config(
        {},
        overrides=[f"export.generator_checkpoint={folder / 'generator.pt'}", f"export.out_dir={folder / 'export'}"],
    )
    model = save_denoiser(cfg.export.generator_checkpoint, steps=4)
    target = export.Target(
        "generator", "generator", "medgen-generator", Path(cfg.export.generator_checkpoint), "generator"
    )
    _, onnx_path, json_path = export.export_one(target, cfg, np.zeros((1, 1, 28, 28), np.float32))
    served = runtime.build_model("generator", onnx_path.read_bytes(), json_path.read_bytes(), str(onnx_path))
    return model, served, onnx_path, json_path


def test_denoiser_images_have_the_gan_layout_and_follow_the_seed(exported):
    _, served, _, _ = exported
    images = runtime.generate(served, 1, 3, seed=5)
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert np.array_equal(images, runtime.generate(served, 1, 3, seed=5))
    assert not np.array_equal(images, runtime.generate(served, 1, 3, seed=6))
    assert np.array_equal(images, runtime.generate(served, 1, 3, seed=5, steps=4, guidance=1.0))  # the defaults
    assert not np.array_equal(images, runtime.generate(served, 1, 3, seed=5, steps=2))
    # what the response and the PNG grid are made from: the same helpers as for a GAN
    assert runtime.channels_last(images).shape == (3, 28, 28) and runtime.png_grid(images)


@pytest.mark.parametrize(("steps", "guidance"), [(4, 1.0), (3, 2.0)])
def test_denoiser_images_equal_the_torch_sampler_after_rounding(exported, steps, guidance):
    model, served, _, _ = exported
    n, label, seed = 6, 0, 11
    noise = np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)
    expected = data.to_uint8(
        ddim_sample(model, torch.full((n,), label), torch.from_numpy(noise), steps, guidance)
    ).astype(int)
    got = runtime.channels_last(runtime.generate(served, label, n, seed, steps, guidance)).astype(int)
    differ = got != expected
    # float32 in another order can move a value across a rounding boundary: one level, on few pixels
    assert np.abs(got - expected).max() <= 1 and differ.mean() < 0.01
    assert expected.std() > 5  # the images are not a constant that any sampler would match


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"steps": 0}, "steps must be an integer in 1..50"),
        ({"steps": 51}, "steps must be an integer in 1..50"),
        ({"steps": "5"}, "steps must be an integer"),
        ({"steps": True}, "steps must be an integer"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"guidance": -0.5}, "guidance must be a number in 0..10"),
        ({"guidance": 10.5}, "guidance must be a number in 0..10"),
        ({"guidance": "high"}, "guidance must be a number"),
        ({"guidance": math.nan}, "guidance must be a number"),
        ({"guidance": math.inf}, "guidance must be a number"),
    ],
)
def test_sampler_arguments_are_checked(body, message):
    with pytest.raises(BadInput, match=message) as refused:
        inputs.sampler_args({"label": 0, **body}, "diffusion", 50)
    assert refused.value.status == 422


def test_sampler_arguments_are_optional_and_refused_for_a_gan():
    assert inputs.sampler_args({"label": 0}, "diffusion", 50) == (None, None)
    assert inputs.sampler_args({"label": 0, "steps": 50, "guidance": 0}, "diffusion", 50) == (50, 0.0)
    assert inputs.generate_args({"label": 1, "steps": 7, "guidance": 2}, 2, 256) == (1, 16, None, "png")
    with pytest.raises(BadInput, match="apply to a diffusion generator; this service serves a gan"):
        inputs.sampler_args({"label": 0, "steps": 4}, "gan", 50)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"default_steps": None}, "lacks \\['default_steps'\\]"),
        ({"beta_schedule": "cubic"}, "unknown beta_schedule 'cubic'"),
        ({"default_steps": 0}, "steps must be in 1..1000"),
        ({"prediction": "sample"}, "unknown prediction type 'sample'"),
        ({"image_size": 32}, "differ from its output shape"),
    ],
)
def test_a_denoiser_the_sampler_cannot_run_is_refused_at_load(exported, change, message):
    _, _, onnx_path, json_path = exported
    meta = json.loads(json_path.read_text())
    meta = {k: v for k, v in (meta | change).items() if v is not None}
    with pytest.raises(ModelError, match=message):
        runtime.build_model("generator", onnx_path.read_bytes(), json.dumps(meta).encode(), "generator.onnx")


NO_TORCH = """
import sys
from pathlib import Path
from serving import runtime
path = Path(sys.argv[1])
model = runtime.build_model("generator", path.read_bytes(), path.with_suffix(".json").read_bytes(), str(path))
images = runtime.generate(model, 1, 2, seed=0, steps=2, guidance=1.5)
assert images.shape == (2, 1, 28, 28), images.shape
assert model.info()["family"] == "diffusion"
assert "torch" not in sys.modules and "diffusers" not in sys.modules, "torch imported at serve time"
print("ok")
"""


def test_a_denoiser_is_served_without_torch(exported):
    onnx_path = exported[2]
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(onnx_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_registry_champion_serves_a_denoiser(workdir, monkeypatch, exported):
    """MEDGEN_MODEL_SOURCE=mlflow: the export's registration of a denoiser (full profile, val_fd recorded, no
    champion yet -> champion) loads from models:/medgen-generator@champion and generates as the files do."""
    import mlflow

    from medgen import registry

    cfg = build_config({}, overrides=[f"export.out_dir={workdir / 'export'}"])
    save_denoiser(cfg.export.generator_checkpoint, steps=4)
    checkpoint = Path(cfg.export.generator_checkpoint)
    target = export.Target("generator", "generator", "medgen-generator", checkpoint, "generator")
    _, onnx_path, json_path = export.export_one(target, cfg, np.zeros((1, 1, 28, 28), np.float32))
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        version = registry.register("generator", "medgen-generator", "generator", checkpoint, cfg, onnx_path, json_path)
    model = runtime._from_mlflow("generator", "champion")
    assert model.denoiser and model.family == "diffusion" and model.version == version
    assert model.source == "mlflow:models:/medgen-generator@champion" and model.info()["variant"] == "ddpm"
    # requirements given, not inferred (medgen.tracking.register_onnx): this environment's pins
    from importlib.metadata import version as installed

    pins = Path(mlflow.artifacts.download_artifacts(f"models:/medgen-generator/{version}/requirements.txt"))
    wanted = {f"{name}=={installed(name)}" for name in ("onnx", "onnxruntime", "numpy", "mlflow")}
    assert wanted <= set(pins.read_text().split()), pins.read_text()
    local = exported[1]  # the same checkpoint exported to files
    assert np.array_equal(runtime.generate(model, 0, 2, seed=1), runtime.generate(local, 0, 2, seed=1))
