"""Every autoencoder: shapes, ranges, a one-batch fit, and the encoder contract classify relies on."""

import pytest
import torch

from medgen.models.autoencoders import METHODS, ConvEncoder, DenseEncoder, build
from medgen.training import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.rand(8, 1, 28, 28) * 2 - 1  # (N, C, S, S) in [-1, 1]


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_ranges(method, batch):
    model = build(method, latent_dim=5).eval()
    z = model.encode(batch)
    assert z.shape == (8, 5)
    out = model.decode(z)
    assert out.shape == batch.shape
    assert out.min() >= -1 and out.max() <= 1  # tanh: same range as the inputs
    assert model(batch).shape == batch.shape


@pytest.mark.parametrize("method", METHODS)
def test_one_batch_fit_lowers_the_loss(method, batch):
    torch.manual_seed(0)
    model = build(method, latent_dim=4).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, parts = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    assert "recon" in parts and ("kl" in parts) == method.startswith("vae")


@pytest.mark.parametrize("method", ["vae_dense", "vae_conv"])
def test_vae_encode_is_the_deterministic_posterior_mean(method, batch):
    model = build(method, latent_dim=3).eval()
    mu, logvar = model.encode_stats(batch)
    assert logvar.shape == mu.shape == (8, 3)
    assert torch.equal(model.encode(batch), mu)
    assert torch.equal(model.encoder(batch), mu)  # the saved encoder's forward is the mean too


def test_latent_dim_larger_than_the_input_is_refused():
    with pytest.raises(ValueError, match="must be in 1..784"):
        build("ae_conv", latent_dim=785)
    with pytest.raises(ValueError, match="must be in 1..784"):
        DenseEncoder(latent_dim=0)
    with pytest.raises(ValueError, match="unknown autoencoder"):
        build("ae_sparse", latent_dim=4)


@pytest.mark.parametrize("variational", [False, True])
def test_conv_encoder_round_trips_through_save_model(tmp_path, batch, variational):
    encoder = ConvEncoder(latent_dim=6, width=8, variational=variational).eval()
    assert encoder.out_features == 6
    path = save_model(tmp_path / "enc.pt", encoder, encoder.init_kwargs, config={"out_features": 6}, metrics={})
    loaded, checkpoint = load_model(path)
    assert type(loaded) is ConvEncoder and loaded.out_features == 6
    assert torch.allclose(loaded(batch), encoder(batch))
    assert loaded(batch).shape == (8, 6)
