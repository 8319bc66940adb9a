"""`generate` on the real BreastMNIST (smoke profile), and a conditional GAN that must follow its labels."""

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from medgen import synthetic, tracking
from medgen.config import GenerateConfig
from medgen.diffusion import DiffusionSampler
from medgen.errors import ConfigError
from medgen.gan_training import GanHyper, GanTrainer
from medgen.io import read_json
from medgen.models.diffusion import ClassConditionalUNet
from medgen.stages import generate, prepare
from medgen.synthetic import load_samples, sample
from medgen.training import load_model

pytestmark = pytest.mark.integration


def _runs(cfg, stage):
    tracking.configure(cfg.tracking)
    experiment = mlflow.get_experiment_by_name(tracking.experiment_name(cfg.data.flag, stage))
    return mlflow.search_runs([experiment.experiment_id], output_format="list")


@pytest.mark.slow
def test_generate_smoke_end_to_end(smoke_cfg, workdir):
    cfg = smoke_cfg()
    prepare.run(cfg)
    result = generate.run(cfg)

    samples = load_samples(synthetic.samples_path(cfg))
    n = cfg.generate.samples_per_class
    assert samples.images.shape == (2 * n, 28, 28) and samples.images.dtype == np.uint8
    assert np.bincount(samples.labels).tolist() == [n, n]
    on_disk = read_json(cfg.generate.metrics)
    assert on_disk == json.loads(json.dumps(result))
    # the chosen generator's figures at top level, every candidate's under `variants` (the keys)
    keys = ("variant", "fd_ratio", "kid_ratio", "c2st_acc", "memorization_share", "precision", "coverage")
    for key in keys:
        assert key in on_disk, key
    gan_variant = on_disk["variants"].keys() - {"ddpm"}
    assert set(on_disk["variants"]) == {"ddpm", *gan_variant} and gan_variant <= set(cfg.generate.variants)
    for name, entry in on_disk["variants"].items():
        for key in keys[1:] + ("family", "selection", "hyper", "search", "best_epoch"):
            assert key in entry, (name, key)
        assert set(entry["per_class"]) == {"0", "1"} and "fd_ratio" in entry["per_class"]["0"]
        assert 0.0 <= entry["memorization_share"] <= 1.0 and entry["memorization_threshold"] > 0
        assert 0.0 <= entry["c2st_acc"] <= 1.0 and entry["fd_real_vs_real"] > 0
        assert Path(cfg.generate.plots_dir, f"closest_pairs_{name}.png").exists()
    chosen = on_disk["variants"][on_disk["variant"]]
    assert {k: chosen[k] for k in keys[1:]} == {k: on_disk[k] for k in keys[1:]}
    # the rule, recomputed from the file: lowest selection val FD among the candidates under the limit
    selection = {name: on_disk["selection"][name] for name in on_disk["variants"]}
    fair = [k for k, v in selection.items() if v["val_memorization_share"] <= cfg.generate.max_memorization]
    expected = min(fair, key=lambda k: selection[k]["fd"]) if fair else None
    assert on_disk["selection"]["chosen"] == on_disk["variant"] == (expected or on_disk["variant"])
    assert (on_disk["family"] == "diffusion") == (on_disk["variant"] == "ddpm")

    g, checkpoint = load_model(cfg.generate.checkpoint)
    config = checkpoint["config"]
    assert config["variant"] == on_disk["variant"] and config["family"] == on_disk["family"]
    assert config["n_classes"] == 2 and config["class_names"] == ["malignant", "normal, benign"]
    assert checkpoint["metrics"]["fd_ratio"] == on_disk["fd_ratio"]
    plots_dir = Path(cfg.generate.plots_dir)
    assert (plots_dir / "losses.png").exists() and (plots_dir / "samples_class_1.png").exists()
    assert len(list(plots_dir.glob("grid_epoch_*.png"))) == cfg.generate.epochs  # the GAN's progress grids
    assert Path(cfg.generate.feature_checkpoint).exists()

    (stage_run,) = [r for r in _runs(cfg, "generate") if "mlflow.parentRunId" not in r.data.tags]
    assert stage_run.info.status == "FINISHED"
    trials = [r for r in _runs(cfg, "generate") if r.data.tags.get("mlflow.parentRunId") == stage_run.info.run_id]
    assert len(trials) == cfg.generate.n_trials + cfg.generate.ddpm_trials


@pytest.mark.slow
def test_diffusion_in_a_worker_process_changes_nothing(smoke_cfg, workdir):
    """generate.jobs = 2 (the diffusion model trained and its judge's sampling shared with a worker process)
    writes what one process writes: the same metrics file, samples and checkpoint; the worker's study trials
    are MLflow runs under the stage's run. Each run has its own Optuna store: the second must not resume the
    first's finished studies."""
    written = {}
    for jobs in (1, 2):
        store = f"tracking.optuna_storage=sqlite:///optuna{jobs}.db"
        cfg = smoke_cfg(f"generate.jobs={jobs}", store, "generate.n_trials=0")  # the GAN: no search
        if jobs == 1:
            prepare.run(cfg)
        result = generate.run(cfg)
        samples = load_samples(synthetic.samples_path(cfg))
        state = load_model(cfg.generate.checkpoint)[0].state_dict()
        written[jobs] = (read_json(cfg.generate.metrics), samples, state, result)
    (m1, s1, w1, _), (m2, s2, w2, result) = written[1], written[2]
    assert m1 == m2 and "ddpm" in m2["variants"]
    assert np.array_equal(s1.images, s2.images) and np.array_equal(s1.labels, s2.labels)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    stage_runs = [r for r in _runs(cfg, "generate") if "mlflow.parentRunId" not in r.data.tags]
    last = max(stage_runs, key=lambda r: r.info.start_time)
    trials = [r for r in _runs(cfg, "generate") if r.data.tags.get("mlflow.parentRunId") == last.info.run_id]
    studies = {r.data.tags["optuna.study"] for r in trials}
    assert len(trials) == cfg.generate.ddpm_trials and len(studies) == 1 and "-ddpm-" in studies.pop()
    assert last.info.status == "FINISHED" and result["variants"]["ddpm"]["search"]["n_trials"] == 2


@pytest.mark.parametrize("family", ["gan", "ddpm"])
def test_select_forces_a_family_and_its_checkpoint_rebuilds(smoke_cfg, workdir, family):
    cfg = smoke_cfg(f"generate.select={family}", "generate.ddpm_trials=0")
    prepare.run(cfg)
    result = generate.run(cfg)
    assert result["selection"]["rule"] == f"generate.select = {family}"
    g, checkpoint = load_model(cfg.generate.checkpoint)
    if family == "gan":
        assert result["variant"] in cfg.generate.variants and result["family"] == "gan"
        assert checkpoint["config"]["latent_dim"] == g.latent_dim
        out = g(torch.randn(3, g.latent_dim), torch.tensor([0, 1, 1])).detach()
    else:
        assert result["variant"] == "ddpm" and result["family"] == "diffusion"
        assert isinstance(g, ClassConditionalUNet) and (g.image_size, g.sample_size, g.channels) == (28, 32, 1)
        assert checkpoint["config"]["sampler_steps"] == cfg.generate.ddpm_steps  # no study: the defaults
        assert checkpoint["config"]["guidance"] == cfg.generate.ddpm_guidance
        assert result["search"] == {"n_trials": 0}
        out = DiffusionSampler(g, 2).draw(torch.tensor([0, 1, 1]), torch.Generator().manual_seed(0))
        # the written samples are the chosen denoiser's with its sampler settings, seed by seed
        steps, n = checkpoint["config"]["sampler_steps"], cfg.generate.samples_per_class
        again = sample(DiffusionSampler(g, steps), [0, 1], n, cfg.seed)
        written = load_samples(synthetic.samples_path(cfg))
        assert np.array_equal(again.images, written.images) and np.array_equal(again.labels, written.labels)
    assert out.shape == (3, 1, 28, 28) and float(out.abs().max()) <= 1.0


def test_without_ddpm_only_the_gan_competes(smoke_cfg, workdir):
    cfg = smoke_cfg("generate.ddpm=false")
    prepare.run(cfg)
    result = generate.run(cfg)
    assert set(result["variants"]) == {result["variant"]} and result["family"] == "gan"
    assert not list(Path(cfg.generate.plots_dir).glob("closest_pairs_ddpm.png"))


def test_bad_label_fails_before_training(smoke_cfg, workdir):
    cfg = smoke_cfg("generate.labels=[0, 5]")
    prepare.run(cfg)
    with pytest.raises(ConfigError, match=r"generate.labels: \[5\] out of range.*0..1"):
        generate.run(cfg)
    assert not Path(cfg.generate.feature_checkpoint).exists()  # nothing was trained
    (run,) = _runs(cfg, "generate")
    assert run.info.status == "FAILED"


def _toy(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a bright bar in the top half; class 1: in the bottom half; noisy dark background."""
    labels = torch.arange(n) % 2
    images = torch.full((n, 1, 28, 28), -0.8) + 0.1 * torch.randn(n, 1, 28, 28, generator=generator)
    rows = torch.randint(2, 9, (n,), generator=generator) + 14 * labels
    for i, row in enumerate(rows.tolist()):
        images[i, 0, row : row + 5, 4:24] = 0.8
    return images.clamp(-1, 1), labels


def test_conditional_gan_follows_the_requested_label():
    """Train a small cdcgan on two trivially separable classes; a classifier trained on the real toy
    images must recognise the label we asked the generator for."""
    rng = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = _toy(256, rng)
    cfg = dataclasses.replace(GenerateConfig(), g_channels=16, d_channels=16, latent_dim=16, batch_size=32, diffaug=())
    trainer = GanTrainer(cfg, GanHyper("cdcgan", 1e-3, 1e-3, 0.5), n_classes=2, device=torch.device("cpu"))
    for _ in range(12):
        trainer.train_epoch(x, y)
    judge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 2))
    opt = torch.optim.Adam(judge.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(judge(x), y).backward()
        opt.step()
    fake = sample(trainer.sampler(), [0, 1], 100, seed=1)
    images = torch.from_numpy(fake.images).float().div(127.5).sub(1).unsqueeze(1)
    assert images.shape == (200, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    accuracy = float((judge(images).argmax(1) == torch.from_numpy(fake.labels)).float().mean())
    assert accuracy > 0.9, accuracy
