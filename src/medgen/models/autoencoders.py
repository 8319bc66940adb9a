"""Autoencoders for the representation study: dense AE, convolutional AE, dense VAE, convolutional VAE.

Every model maps images x (N, C, S, S) in [-1, 1] to a latent z (N, latent_dim) with `encode()` and back
with `decode()` (tanh output, same range as the input). For a VAE `encode()` is the posterior mean mu
(deterministic features for KNN and transfer learning); `encode_stats()` returns (mu, logvar).

The encoders are standalone modules (`DenseEncoder`, `ConvEncoder`) with an `out_features` attribute so a
classifier can reuse them (saved with `medgen.training.save_model`); a variational encoder's forward
returns mu.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _check_latent(latent_dim: int, channels: int, image_size: int) -> None:
    # A "bottleneck" wider than the image is no bottleneck: the identity would be a perfect code.
    n_in = channels * image_size * image_size
    if not 1 <= latent_dim <= n_in:
        raise ValueError(f"latent_dim={latent_dim} must be in 1..{n_in} (the input has {n_in} values)")


class DenseEncoder(nn.Module):
    """(N, C, S, S) -> (N, latent_dim). Hidden layers: Linear -> [BatchNorm] -> ReLU -> [Dropout]."""

    def __init__(
        self,
        latent_dim: int,
        image_size: int = 28,
        channels: int = 1,
        hidden: tuple[int, ...] = (512, 256),
        dropout: float = 0.0,
        batch_norm: bool = False,
        variational: bool = False,
    ):
        super().__init__()
        _check_latent(latent_dim, channels, image_size)
        self.latent_dim, self.out_features, self.variational = latent_dim, latent_dim, variational
        # plain-data constructor arguments: what medgen.training.save_model needs to rebuild the module
        self.init_kwargs = {
            "latent_dim": latent_dim,
            "image_size": image_size,
            "channels": channels,
            "hidden": list(hidden),
            "dropout": dropout,
            "batch_norm": batch_norm,
            "variational": variational,
        }
        layers: list[nn.Module] = [nn.Flatten()]  # (N, C*S*S)
        width = channels * image_size * image_size
        for size in hidden:
            layers += [nn.Linear(width, size), *([nn.BatchNorm1d(size)] if batch_norm else []), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            width = size
        self.body = nn.Sequential(*layers)  # (N, hidden[-1])
        self.head = nn.Linear(width, 2 * latent_dim if variational else latent_dim)

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mu, logvar) each (N, latent_dim); logvar is None for a plain autoencoder."""
        h = self.head(self.body(x))
        return h.chunk(2, dim=1) if self.variational else (h, None)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stats(x)[0]


class DenseDecoder(nn.Module):
    """(N, latent_dim) -> (N, C, S, S) in [-1, 1]; mirror of DenseEncoder."""

    def __init__(
        self,
        latent_dim: int,
        image_size: int = 28,
        channels: int = 1,
        hidden: tuple[int, ...] = (256, 512),
        batch_norm: bool = False,
    ):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        layers: list[nn.Module] = []
        width = latent_dim
        for size in hidden:
            layers += [nn.Linear(width, size), *([nn.BatchNorm1d(size)] if batch_norm else []), nn.ReLU()]
            width = size
        layers += [nn.Linear(width, channels * image_size * image_size), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).view(-1, *self.shape)


class ConvEncoder(nn.Module):
    """(N, C, S, S) -> (N, latent_dim); S divisible by 4 (28 -> 14 -> 7).

    Conv(4, stride 2) -> BatchNorm -> LeakyReLU twice, then a linear head. Variational: the head emits
    (mu, logvar) and forward returns mu, so the module is a deterministic feature extractor.
    """

    def __init__(
        self, latent_dim: int, image_size: int = 28, channels: int = 1, width: int = 32, variational: bool = False
    ):
        super().__init__()
        _check_latent(latent_dim, channels, image_size)
        if image_size % 4:
            raise ValueError(f"image_size={image_size} must be divisible by 4 for the conv encoder")
        self.latent_dim, self.out_features, self.variational = latent_dim, latent_dim, variational
        self.init_kwargs = {
            "latent_dim": latent_dim,
            "image_size": image_size,
            "channels": channels,
            "width": width,
            "variational": variational,
        }
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),  # (N, w, S/2, S/2)
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),  # (N, 2w, S/4, S/4)
            nn.Flatten(),  # (N, 2w * S/4 * S/4)
        )
        flat = 2 * width * (image_size // 4) ** 2
        self.head = nn.Linear(flat, 2 * latent_dim if variational else latent_dim)

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.head(self.body(x))
        return h.chunk(2, dim=1) if self.variational else (h, None)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stats(x)[0]


class ConvDecoder(nn.Module):
    """(N, latent_dim) -> (N, C, S, S) in [-1, 1]: linear to (2w, S/4, S/4), two ConvTranspose(4, stride 2)."""

    def __init__(self, latent_dim: int, image_size: int = 28, channels: int = 1, width: int = 32):
        super().__init__()
        self.start = (2 * width, image_size // 4, image_size // 4)
        self.fc = nn.Linear(latent_dim, 2 * width * (image_size // 4) ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),  # (N, w, S/2, S/2)
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
            nn.Tanh(),  # (N, C, S, S)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(-1, *self.start))


class Autoencoder(nn.Module):
    """Encoder + decoder. `loss(x)` returns (total, parts) so the fit loop is the same for AE and VAE."""

    variational = False

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = encoder.latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, latent_dim)."""
        return self.encoder(x)

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encoder.stats(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) -> (N, C, S, S) in [-1, 1]."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared reconstruction error per pixel."""
        recon = F.mse_loss(self(x), x)
        return recon, {"recon": float(recon.detach())}


class VAE(Autoencoder):
    """Gaussian VAE (Kingma & Welling 2014): q(z|x) = N(mu, exp(logvar)), prior N(0, I).

    Loss per image = sum of squared errors over pixels + beta * KL(q || prior); a Gaussian likelihood
    with fixed variance, the usual choice for images in [-1, 1].
    """

    variational = True

    def __init__(self, encoder: nn.Module, decoder: nn.Module, beta: float = 1.0):
        super().__init__(encoder, decoder)
        if not encoder.variational:
            raise ValueError("a VAE needs a variational encoder (variational=True)")
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode_stats(x)
        if self.training:  # reparameterisation trick: sampling stays differentiable in mu, logvar
            mu = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(mu)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        mu, logvar = self.encode_stats(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        sse = (self.decode(z) - x).pow(2).flatten(1).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        total = sse + self.beta * kl
        pixels = x[0].numel()
        return total, {"recon": float(sse.detach()) / pixels, "kl": float(kl.detach())}


METHODS = ("ae_dense", "ae_conv", "vae_dense", "vae_conv")


def build(
    method: str,
    latent_dim: int,
    image_size: int = 28,
    channels: int = 1,
    dropout: float = 0.2,
    width: int = 32,
    beta: float = 1.0,
) -> Autoencoder:
    """One of METHODS. Dense AE: dropout; conv models and VAEs: batch norm."""
    if method == "ae_dense":
        return Autoencoder(
            DenseEncoder(latent_dim, image_size, channels, dropout=dropout),
            DenseDecoder(latent_dim, image_size, channels),
        )
    if method == "vae_dense":
        return VAE(
            DenseEncoder(latent_dim, image_size, channels, batch_norm=True, variational=True),
            DenseDecoder(latent_dim, image_size, channels, batch_norm=True),
            beta=beta,
        )
    if method == "ae_conv":
        return Autoencoder(
            ConvEncoder(latent_dim, image_size, channels, width), ConvDecoder(latent_dim, image_size, channels, width)
        )
    if method == "vae_conv":
        return VAE(
            ConvEncoder(latent_dim, image_size, channels, width, variational=True),
            ConvDecoder(latent_dim, image_size, channels, width),
            beta=beta,
        )
    raise ValueError(f"unknown autoencoder {method!r} (known: {', '.join(METHODS)})")
