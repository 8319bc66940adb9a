"""Diffusion model: denoiser shapes and checkpoints, the loss targets, DDIM with an oracle, the sampler interface."""

import numpy as np
import pytest
import torch

from medgen.diffusion import DiffusionSampler, DiffusionTrainer, ddim_sample, diffusion_loss, noise_scheduler
from medgen.models.diffusion import ClassConditionalUNet
from medgen.models.gan import Generator
from medgen.synthetic import GanSampler, as_sampler, sample, sample_like
from medgen.training import load_model, save_model

TINY = {"width": 8, "norm_groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}


@pytest.mark.parametrize(
    ("channels", "image_size", "sample_size"), [(1, 28, 32), (3, 28, 28), (1, 64, 64), (3, 30, 32)]
)
def test_denoiser_keeps_the_data_shape(channels, image_size, sample_size):
    torch.manual_seed(0)
    model = ClassConditionalUNet(n_classes=3, image_size=image_size, channels=channels, sample_size=sample_size, **TINY)
    x = torch.randn(4, channels, image_size, image_size)
    out = model(x, torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 3]))  # 3 = the null class
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_denoiser_rejects_bad_labels_and_settings():
    model = ClassConditionalUNet(n_classes=2, **TINY)
    with pytest.raises(ValueError, match="0..2"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="channels"):
        ClassConditionalUNet(channels=2, **TINY)
    with pytest.raises(ValueError, match="multiple of"):
        ClassConditionalUNet(sample_size=30, width=8, norm_groups=4, channel_mult=[1, 2, 2])
    with pytest.raises(ValueError, match="norm_groups"):
        ClassConditionalUNet(width=6, norm_groups=4)


def test_checkpoint_rebuilds_the_same_denoiser(tmp_path):
    torch.manual_seed(0)
    kwargs = {"n_classes": 2, "prediction": "v_prediction", **TINY}
    model = ClassConditionalUNet(**kwargs).eval()
    save_model(tmp_path / "ddpm.pt", model, kwargs, config={}, metrics={})
    loaded, checkpoint = load_model(tmp_path / "ddpm.pt")
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([5, 50, 900]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded(x, t, y))
    assert loaded.prediction == "v_prediction" and checkpoint["model"]["class"].endswith("ClassConditionalUNet")


class Oracle(torch.nn.Module):
    """A 'denoiser' that knows the clean image x0: returns the exact eps (or v) for any x_t and t."""

    def __init__(self, x0: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.x0, self.prediction = x0, prediction
        self.n_classes, self.null_label, self.train_timesteps, self.beta_schedule = 2, 2, 1000, "squaredcos_cap_v2"
        self.channels, self.image_size = x0.shape[1], x0.shape[2]
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.alphas = noise_scheduler(self).alphas_cumprod
        self.seen: list[torch.Tensor] = []

    def forward(self, x_t, t, labels):
        self.seen.append(labels.clone())
        a = self.alphas[t].view(-1, 1, 1, 1)
        x0 = self.x0.repeat(len(x_t) // len(self.x0), 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return self.scale * (eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_loss_target_is_zero_for_the_oracle_and_ddim_recovers_x0(prediction):
    torch.manual_seed(0)
    x0 = torch.rand(4, 1, 28, 28) * 1.8 - 0.9
    oracle = Oracle(x0, prediction)
    loss = diffusion_loss(oracle, noise_scheduler(oracle), x0, torch.tensor([0, 1, 0, 1]), label_dropout=0.0)
    assert float(loss.detach()) < 1e-6
    trace = []
    out = ddim_sample(
        oracle, torch.tensor([0, 1, 0, 1]), torch.randn(4, 1, 28, 28), steps=10, guidance=1.0, trace=trace
    )
    assert float((out - x0).abs().max()) < 1e-3  # a perfect denoiser walks the DDIM path back to x0
    assert [t for t, _, _ in trace] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]  # trailing spacing


def test_label_dropout_and_guidance_use_the_null_class():
    torch.manual_seed(0)
    x0 = torch.zeros(6, 1, 28, 28)
    oracle = Oracle(x0, "epsilon")
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    diffusion_loss(oracle, noise_scheduler(oracle), x0, labels, label_dropout=1.0)
    assert (oracle.seen[-1] == 2).all()
    diffusion_loss(oracle, noise_scheduler(oracle), x0, labels, label_dropout=0.0)
    assert torch.equal(oracle.seen[-1], labels)
    oracle = Oracle(x0[:3], "epsilon")
    ddim_sample(oracle, labels[:3], torch.randn(3, 1, 28, 28), steps=2, guidance=3.0)
    assert len(oracle.seen) == 2 and oracle.seen[0].tolist() == [0, 1, 0, 2, 2, 2]  # cond and null in one batch
    oracle.seen.clear()
    ddim_sample(oracle, labels[:3], torch.randn(3, 1, 28, 28), steps=2, guidance=1.0)
    assert oracle.seen[0].tolist() == [0, 1, 0]  # g = 1: one pass, no unconditional branch


def test_one_batch_fit_lowers_the_loss_and_moves_the_ema(one_thread):
    torch.manual_seed(0)
    model = ClassConditionalUNet(n_classes=2, **TINY)
    trainer = DiffusionTrainer(model, lr=2e-3, ema_decay=0.9, label_dropout=0.1, hflip=True)
    y, ramp = torch.tensor([0, 1] * 8), torch.linspace(-0.8, 0.8, 28)
    # learnable images: a vertical ramp for class 0, a horizontal one for class 1
    x = torch.where(y[:, None, None, None] == 0, ramp.view(1, 1, 28, 1), -ramp.view(1, 1, 1, 28)).expand(16, 1, 28, 28)
    losses = [trainer.train_step(x.contiguous(), y) for _ in range(40)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    gaps = [float((e - p).abs().max()) for e, p in zip(trainer.ema.parameters(), model.parameters())]
    assert max(gaps) > 0  # the EMA lags the live weights
    assert trainer.sampler().model is trainer.ema


def test_diffusion_sampler_is_seeded_through_synthetic_sample(one_thread):
    torch.manual_seed(0)
    model = ClassConditionalUNet(n_classes=2, **TINY)
    sampler = DiffusionSampler(model, steps=3, guidance=2.0, max_batch=4)
    a = sample(sampler, [0, 1], 5, seed=7)
    assert a.images.shape == (10, 28, 28) and a.images.dtype == np.uint8 and a.labels.tolist() == [0] * 5 + [1] * 5
    assert np.array_equal(a.images, sample(sampler, [0, 1], 5, seed=7).images)
    assert not np.array_equal(a.images, sample(sampler, [0, 1], 5, seed=8).images)
    like = sample_like(model, np.array([1, 0, 1]), seed=0)  # a bare denoiser gets the default DDIM sampler
    assert like.labels.tolist() == [0, 1, 1]
    assert isinstance(as_sampler(model), DiffusionSampler)


def test_gan_samples_are_unchanged_by_the_sampler_interface():
    torch.manual_seed(0)
    g = Generator(latent_dim=16, n_classes=2, channels=8, embed_dim=4).eval()
    got = sample(g, [1, 0], 3, seed=11, batch=4)
    rng = torch.Generator().manual_seed(11)
    with torch.no_grad():  # what synthetic.sample drew before the interface: z per batch of 4, in order
        first = g(torch.randn(4, 16, generator=rng), torch.tensor([1, 1, 1, 0]))
        second = g(torch.randn(2, 16, generator=rng), torch.tensor([0, 0]))
    expected = torch.cat([first, second]).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)[:, 0].numpy()
    assert np.array_equal(got.images, expected)
    assert isinstance(as_sampler(g), GanSampler) and g.training is False
