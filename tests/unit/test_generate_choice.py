"""The generate stage's choice between generator families, and the diffusion family's settings."""

import dataclasses

import pytest
import torch

from medgen import ddpm_training, metrics
from medgen.config import ConfigError, GenerateConfig
from medgen.diffusion import DiffusionTrainer
from medgen.generation import Candidate, choose
from medgen.models.diffusion import ClassConditionalUNet


def _candidate(name: str, family: str, val_fd: float, memorised: float) -> Candidate:
    c = Candidate(name, family, torch.nn.Identity(), {}, None, {}, [], 1, {})
    c.selection = {"fd": val_fd, "val_memorization_share": memorised, "val_memorization_threshold": 1.0}
    return c


def test_the_lowest_fd_wins_among_generators_that_do_not_copy():
    gan, ddpm = _candidate("acgan", "gan", 0.30, 0.0), _candidate("ddpm", "diffusion", 0.20, 0.02)
    assert choose([gan, ddpm], "auto", 0.10)[0] is ddpm
    assert choose([gan, _candidate("ddpm", "diffusion", 0.40, 0.0)], "auto", 0.10)[0] is gan


def test_a_generator_that_copies_its_training_set_cannot_win():
    """A copier has the best val FD (its samples are training images) but most of them sit closer to a
    training image than real unseen images do: it is excluded, whatever its FD."""
    rng = torch.Generator().manual_seed(0)
    train = torch.rand(200, 64, generator=rng).numpy()
    val = torch.rand(60, 64, generator=rng).numpy()
    copier = metrics.memorization(train, val, train[:100] + 1e-3)["memorization_share"]
    fresh = metrics.memorization(train, val, torch.rand(100, 64, generator=rng).numpy())["memorization_share"]
    assert copier == 1.0 and fresh <= 0.10
    copying, honest = _candidate("ddpm", "diffusion", 0.01, copier), _candidate("acgan", "gan", 0.50, fresh)
    chosen, why = choose([copying, honest], "auto", 0.10)
    assert chosen is honest and "memorisation" in why
    # every candidate over the limit: the least memorising, not the best FD
    chosen, why = choose([copying, _candidate("acgan", "gan", 0.50, 0.6)], "auto", 0.10)
    assert chosen.name == "acgan" and why.startswith("every candidate")


def test_select_forces_a_family():
    gan, ddpm = _candidate("acgan", "gan", 0.30, 0.0), _candidate("ddpm", "diffusion", 0.20, 0.0)
    assert choose([gan, ddpm], "gan", 0.10) == (gan, "generate.select = gan")
    assert choose([gan, ddpm], "ddpm", 0.10)[0] is ddpm


def test_lr_follows_a_cosine_down_to_the_final_value():
    model = ClassConditionalUNet(width=8, norm_groups=4, channel_mult=[1, 2], attention_levels=[1])
    trainer = DiffusionTrainer(model, lr=1e-3, total_steps=10, lr_final=1e-4)
    seen = []
    x, y = torch.zeros(2, 1, 28, 28), torch.tensor([0, 1])
    for _ in range(12):
        seen.append(trainer.current_lr())
        trainer.train_step(x, y)
    assert seen[0] == pytest.approx(1e-3) and seen[5] == pytest.approx(5.5e-4) and seen[10:] == [1e-4, 1e-4]
    assert all(a >= b for a, b in zip(seen, seen[1:]))
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    constant = DiffusionTrainer(model, lr=1e-3)
    assert constant.current_lr() == 1e-3


def test_canvas_and_settings():
    g = GenerateConfig()
    assert [ddpm_training.sample_size(g, s) for s in (28, 32, 64, 224)] == [32, 32, 64, 256]
    assert ddpm_training.sample_size(dataclasses.replace(g, ddpm_sample_size=28), 28) == 28
    kwargs = ddpm_training.model_kwargs(g, 3, (3, 28, 28), 16)
    assert kwargs == {"n_classes": 3, "image_size": 28, "channels": 3, "sample_size": 32, "width": 16}
    assert ClassConditionalUNet(**kwargs).channels == 3
    with pytest.raises(ConfigError, match="generate.select"):
        GenerateConfig(ddpm=False, select="ddpm")
    with pytest.raises(ConfigError, match="multiple of 8"):
        GenerateConfig(ddpm_widths=(12,))


def test_the_diffusion_study_is_defined_by_its_own_settings_only(tmp_path):
    from medgen.gan_search import study_spec as gan_spec
    from medgen.params import load_config
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "params.yaml", overrides=[f"data.prepared_dir={tmp_path}"])
    ddpm = ddpm_training.study_spec(cfg)["section"]
    gan = gan_spec(cfg)["section"]
    assert "ddpm_lr" in ddpm and "ddpm_trials" not in ddpm and "lr_g" not in ddpm
    assert not any(k.startswith("ddpm") for k in gan) and "select" not in gan and "lr_g" in gan


class _NoiseSampler:
    """A stand-in generator: uniform noise whose contrast depends on the class."""

    n_classes, max_batch = 2, 500

    def draw(self, labels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        x = torch.rand(len(labels), 1, 28, 28, generator=rng) * 2 - 1
        return x * (0.4 + 0.4 * labels.view(-1, 1, 1, 1).float())


def test_the_report_fd_is_the_mean_over_subsets_of_the_drawn_synthetic_pool():
    """fd_draws = 1 leaves the one-draw figures as they were; more draws average FD(train, synthetic) over the
    report's own set and class-stratified, held-out-sized subsets of the synthetic pool, overall and per class,
    with the range of the ratio; no subset repeats an image and the generator is not sampled again."""
    import copy

    import numpy as np

    from medgen import data, generation, synthetic
    from medgen.gan_training import extract_features
    from medgen.models.features import FeatureNet

    torch.manual_seed(0)
    sampler = _NoiseSampler()
    labels = np.array([0] * 30 + [1] * 50)
    split = lambda seed: synthetic.sample_like(sampler, labels, seed)  # noqa: E731
    train, val, test = split(1), split(2), split(3)
    net = FeatureNet(2, channels=4, feature_dim=6).eval()
    feats = lambda s: extract_features(net, data.to_tensors(s)[0])  # noqa: E731
    heldout = data.Split(np.concatenate([val.images, test.images]), np.concatenate([val.labels, test.labels]))
    dataset = data.Dataset("noise", 2, ("a", "b"), train, val, test)
    x, y = data.to_tensors(train)
    real = generation.Real(dataset, x, y, net, feats(train), heldout, feats(heldout))
    seed = 11
    first = synthetic.sample_like(sampler, heldout.labels, seed)
    first = (feats(first), first.labels)
    extra = synthetic.sample_like(sampler, train.labels, seed + 1)
    pool = (np.concatenate([first[0], feats(extra)]), np.concatenate([first[1], extra.labels]))
    report = metrics.generation_quality(
        (real.train_features, train.labels), (real.heldout_features, heldout.labels), first, first[0], seed=0
    )
    one = copy.deepcopy(report)
    generation.average_fd(one, real, first, pool, 1, seed)
    assert one["fd_real_vs_synth"] == report["fd_real_vs_synth"] and one["fd_draws"] == 1
    assert one["fd_ratio_range95"] == [one["fd_ratio"]] * 2

    seen = []
    real_fd = metrics.frechet_distance
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampler, "draw", lambda *a: pytest.fail("the generator was sampled again"))
        mp.setattr(metrics, "frechet_distance", lambda ref, f: seen.append(f) or real_fd(ref, f))
        generation.average_fd(report, real, first, pool, 4, seed)
    assert len(seen) == 4 * 3  # 4 sets x (all, class 0, class 1)
    sets = seen[0:4]  # the overall group's sets, in draw order
    assert np.array_equal(sets[0], first[0])
    for s in sets[1:]:
        assert len(s) == len(first[0]) and not np.array_equal(s, first[0])
        rows = {r.tobytes() for r in s}
        assert len(rows) == len(s)  # without replacement
        assert rows <= {r.tobytes() for r in pool[0]}
    for g, (name, target) in enumerate([("all", report), *report["per_class"].items()]):
        ref = real.train_features if name == "all" else real.train_features[train.labels == int(name)]
        fds = [real_fd(ref, f) for f in seen[4 * g : 4 * g + 4]]
        if name != "all":  # each class's subsets hold exactly the held-out count of that class
            assert [len(f) for f in seen[4 * g : 4 * g + 4]] == [int((heldout.labels == int(name)).sum())] * 4
        assert target["fd_real_vs_synth"] == pytest.approx(np.mean(fds))
        assert target["fd_ratio"] == pytest.approx(np.mean(fds) / target["fd_real_vs_real"])
        low, high = target["fd_ratio_range95"]
        assert low < target["fd_ratio"] < high


class _NoiseSampler:
    """A sampler whose images are its rng's noise plus the label: any change of seed or order shows."""

    n_classes, max_batch = 3, 4

    def draw(self, labels, rng):
        return torch.rand(len(labels), 1, 4, 4, generator=rng) * 0.5 + labels.view(-1, 1, 1, 1) * 0.25 - 0.5


def test_sets_drawn_with_a_worker_are_the_sets_one_process_draws():
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from medgen import generation, synthetic

    sampler = _NoiseSampler()
    wanted = [(np.array([2, 0, 0, 1, 0, 0, 0]), 11), (np.array([1] * 9 + [0, 2]), 50)]
    alone = [synthetic.sample_like(sampler, labels, seed) for labels, seed in wanted]
    calls = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn, *args):
            calls.append(args[1])
            return super().submit(fn, *args)

    with Recording(1) as executor:
        shared = generation.sample_like_sets(sampler, wanted, executor)
    # the worker got the largest part (set 1's 9 images of class 1), this process the other 5 parts (9 images)
    assert calls == [[(1, 1, 9, 51)]]
    for a, b in zip(alone, shared):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert [len(s.labels) for s in shared] == [7, 11]
