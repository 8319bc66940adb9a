"""The export stage on a diffusion generator: a tiny ClassConditionalUNet checkpoint (the generate stage's
contract) -> generator.onnx/.json with the denoiser metadata, network and per-step sampler parity recorded,
and a stage error (no ONNX left) when either parity breaks; the model card and the champion rule read it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from medgen import data, diffusion_onnx, model_card, onnx_export, registry
from medgen.errors import MedgenError
from medgen.params import build_config
from medgen.stages import export
from serving import ddim, runtime
from tests.standins import CLASS_NAMES, save_denoiser

NAMES = CLASS_NAMES


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return build_config({}, overrides=[f"export.out_dir={tmp_path / 'export'}"])


def target(cfg) -> export.Target:
    return export.Target(
        "generator", "generator", "medgen-generator", export.Path(cfg.export.generator_checkpoint), "generator"
    )


REAL = np.zeros((4, 1, 28, 28), np.float32)  # a generator's parity inputs are its own; only the shape is read


def test_denoiser_exports_with_its_metadata_and_both_parities(cfg):
    save_denoiser(cfg.export.generator_checkpoint, steps=4, guidance=1.5)
    result, onnx_path, json_path = export.export_one(target(cfg), cfg, REAL)
    meta = json.loads(json_path.read_text())
    assert onnx_path.name == "generator.onnx" and json_path.name == "generator.json"
    assert meta["kind"] == "denoiser" and meta["family"] == "diffusion" and meta["variant"] == "ddpm"
    assert (meta["default_steps"], meta["default_guidance"]) == (4, 1.5)
    assert meta["class_names"] == NAMES and meta["n_classes"] == 2 and meta["null_label"] == 2
    assert meta["output_shape"] == [1, 28, 28] and meta["normalisation"] == onnx_export.normalisation(1)
    assert meta["sha256"] == onnx_export.file_sha256(onnx_path)
    assert set(result["max_abs_diff_by_batch"]) == {str(n) for n in cfg.export.parity_batches}
    tol = cfg.export.parity_tolerance
    assert 0 < result["max_abs_diff"] <= tol
    sampler = result["sampler"]
    assert (sampler["steps"], sampler["guidance"]) == (4, 1.5)
    assert sampler["step_max"] <= tol and sampler["prediction_max"] <= tol
    assert meta["parity"] == result  # the JSON beside the graph records what was measured
    served = runtime.build_model("generator", onnx_path.read_bytes(), json_path.read_bytes(), str(onnx_path))
    assert served.denoiser and served.family == "diffusion" and served.info()["default_steps"] == 4


def test_a_sampler_that_drifts_from_torch_fails_the_stage_and_leaves_no_onnx(cfg, monkeypatch):
    save_denoiser(cfg.export.generator_checkpoint)
    step = ddim.ddim_step
    monkeypatch.setattr(ddim, "ddim_step", lambda *a: step(*a) + np.float32(1e-3))  # what make_step calls
    with pytest.raises(MedgenError, match="DDIM step of serving/ddim.py .* differs from PyTorch by 0.001"):
        export.export_one(target(cfg), cfg, REAL)
    assert not (export.Path(cfg.export.out_dir) / "generator.onnx").exists()


def test_a_graph_that_differs_from_torch_fails_the_stage_and_leaves_no_onnx(cfg, monkeypatch):
    save_denoiser(cfg.export.generator_checkpoint)
    real_session = onnx_export.session

    class Perturbed:
        def __init__(self, path):
            self.inner = real_session(path)

        def run(self, names, feeds):
            return [out + np.float32(1e-2) for out in self.inner.run(names, feeds)]

    monkeypatch.setattr(onnx_export, "session", Perturbed)
    with pytest.raises(MedgenError, match="generator: onnxruntime differs from PyTorch by 0.01"):
        export.export_one(target(cfg), cfg, REAL)
    assert not (export.Path(cfg.export.out_dir) / "generator.onnx").exists()


def test_a_denoiser_for_other_images_is_refused(cfg):
    save_denoiser(cfg.export.generator_checkpoint)
    with pytest.raises(MedgenError, match=r"denoiser makes \[1, 28, 28\] images but the prepared images are"):
        export.export_one(target(cfg), cfg, np.zeros((4, 3, 28, 28), np.float32))


def test_the_cli_path_loads_the_service_sampler_from_its_file(monkeypatch):
    """The installed `medgen` CLI cannot import serving/ (not a package of the distribution): the export then
    loads serving/ddim.py by path, the same file the service runs."""
    monkeypatch.setitem(sys.modules, "serving", None)  # `from serving import ddim` -> ImportError
    monkeypatch.delitem(sys.modules, "medgen_service_ddim", raising=False)
    module = diffusion_onnx.service_sampler()
    assert module is not ddim and module.__file__ == str(diffusion_onnx.SERVICE_SAMPLER) == ddim.__file__
    monkeypatch.setattr(diffusion_onnx, "SERVICE_SAMPLER", diffusion_onnx.SERVICE_SAMPLER.with_name("absent.py"))
    monkeypatch.delitem(sys.modules, "medgen_service_ddim")
    with pytest.raises(MedgenError, match="absent.py: not found"):
        diffusion_onnx.service_sampler()


def test_card_and_champion_rule_read_a_denoiser_generator(cfg):
    save_denoiser(cfg.export.generator_checkpoint, steps=4)
    _, _, json_path = export.export_one(target(cfg), cfg, REAL)
    split = data.Split(np.zeros((8, 28, 28), np.uint8), np.arange(8) % 2)
    card = model_card.build(
        cfg,
        target(cfg),
        json.loads(json_path.read_text()),
        data.Dataset("breastmnist", 2, tuple(NAMES), split, split, split),
    )
    details = card["model_details"]
    assert details["architecture"] == "medgen.models.diffusion.ClassConditionalUNet"
    assert details["training"].items() >= {"family": "diffusion", "variant": "ddpm", "sampler_steps": 4}.items()
    assert details["output_shape"] == [1, 28, 28]
    assert card["quantitative_analyses"]["test"]["fd_ratio"]["value"] == 3.0  # from the checkpoint's metrics
    from medgen.training import load_checkpoint

    standing = registry.standing("generator", load_checkpoint(cfg.export.generator_checkpoint), cfg)
    assert (standing.metric, standing.mode, standing.value, standing.profile) == ("val_fd", "min", 2.5, "full")
