"""Denoiser -> ONNX (dynamic batch) and the torch-free numpy DDIM loop of the service, step by step against torch."""

import ast
import json

import numpy as np
import pytest
import torch

from medgen.diffusion import ddim_scheduler, noise_scheduler
from medgen.diffusion_onnx import export_denoiser, network_parity, sampler_parity
from medgen.models.diffusion import ClassConditionalUNet
from medgen.onnx_export import session
from serving import ddim
from tests.conftest import ROOT

TINY = {"width": 8, "norm_groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_numpy_schedule_and_timesteps_match_diffusers(schedule):
    model = ClassConditionalUNet(beta_schedule=schedule, **TINY)
    expected = noise_scheduler(model).alphas_cumprod.numpy()
    assert np.abs(ddim.alphas_cumprod(1000, schedule) - expected).max() < 1e-6
    for steps in (1, 7, 25, 50, 1000):
        assert ddim.timesteps(1000, steps).tolist() == ddim_scheduler(model, steps).timesteps.tolist()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = ClassConditionalUNet(n_classes=2, **TINY).eval()
    with torch.no_grad():  # a fresh UNet's output layer is zero-initialised: give it weights that matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = export_denoiser(model, tmp_path_factory.mktemp("onnx") / "denoiser.onnx", metadata={"default_steps": 8})
    return model, path, session(path)


def test_exported_denoiser_matches_torch_at_several_batch_sizes(exported):
    model, path, sess = exported
    diffs = network_parity(sess, model, sizes=(1, 5, 16))
    assert diffs["max"] <= 1e-4
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["medgen"])
    assert meta["kind"] == "denoiser" and meta["null_label"] == 2 and meta["default_steps"] == 8
    assert [i.name for i in sess.get_inputs()] == ["x_t", "t", "labels"]


@pytest.mark.parametrize(("steps", "guidance", "n"), [(8, 1.0, 1), (7, 2.5, 6)])
def test_numpy_ddim_on_onnxruntime_follows_the_torch_sampler_step_by_step(exported, steps, guidance, n):
    model, _, sess = exported
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["medgen"])
    noise = np.random.default_rng(n).standard_normal((n, 1, 28, 28)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    step = ddim.make_step(ddim.onnx_denoiser(sess), labels, meta, steps, guidance)
    parity = sampler_parity(step, model, labels, noise, steps, guidance)
    assert parity["step_max"] <= 1e-4 and parity["prediction_max"] <= 1e-4
    # run on its own, the loop drifts a little (float32 in another order, amplified by a random network)
    assert parity["trajectory_max"] <= 1e-3
    trace: list = []
    out = ddim.sample(ddim.onnx_denoiser(sess), labels, noise, meta, steps, guidance, trace=trace)
    assert len(trace) == steps and out.min() >= -1 and out.max() <= 1
    assert float(np.abs(trace[-1][2] - noise).max()) > 0.5  # the loop really moved the sample


def test_generate_is_seeded_and_returns_pixels(exported):
    _, _, sess = exported
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["medgen"])
    a = ddim.generate(sess, meta, label=1, n=3, seed=5, steps=4)
    assert a.shape == (3, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, ddim.generate(sess, meta, label=1, n=3, seed=5, steps=4))
    assert not np.array_equal(a, ddim.generate(sess, meta, label=1, n=3, seed=6, steps=4))


def test_the_numpy_loop_imports_neither_torch_nor_diffusers():
    tree = ast.parse((ROOT / "serving" / "ddim.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "math", "collections", "typing", "numpy"}
