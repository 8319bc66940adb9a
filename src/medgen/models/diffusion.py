"""Class-conditional denoiser for small images: diffusers' UNet2DModel, built from scratch (no weights).

forward(x_t (N, C, H, W), t (N,) int64, labels (N,) int64) -> the network's prediction (N, C, H, W):
the noise eps (`prediction="epsilon"`, Ho et al., 2020) or the velocity v (`"v_prediction"`, Salimans &
Ho, 2022). Labels 0..n_classes-1 are the classes; label `n_classes` is the extra "null" class that
classifier-free guidance (Ho & Salimans, 2022) trains by dropping labels and samples as the
unconditional branch.

28 px data are zero-padded to `sample_size` (32) inside forward and the output is cropped back, so the
diffusion process, the sampler and the ONNX graph all live at the data's size. Padding, not resizing:
it is exact and the crop inverts it, while a 28 -> 32 -> 28 resample would interpolate (blur) exactly the
speckle texture the GAN fails to produce; 32 = 4 * 8 also lets every level of a 3-4 level U-Net halve
cleanly. The pad is zeros because x_t is noise-scaled (mean 0): a zero border is a neutral value at
every t, like a convolution's own zero padding.

v-prediction is the default, measured (docs/diffusion.md): at the first DDIM step (t = T-1, alpha_bar ~ 2e-9
under the cosine schedule) an eps-model's x_0 estimate (x_t - sqrt(1 - a) eps) / sqrt(a) multiplies any error
in eps by ~2e4 and the clip to [-1, 1] turns it into salt-and-pepper noise that the later steps never remove
(FD ratio 1256 vs 80 for v at the same 2 CPU-minutes); x_0 = sqrt(a) x_t - sqrt(1 - a) v is well conditioned
at every t.

The noise schedule is stored here as plain data (`train_timesteps`, `beta_schedule`) beside the
prediction type: the checkpoint then describes everything a sampler needs (medgen.diffusion builds the
diffusers schedulers from it; serving/ddim.py rebuilds the same numbers in numpy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PREDICTIONS = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _check_labels(labels: torch.Tensor, n_labels: int) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # data-dependent checks cannot be traced; ONNX callers validate before running
    if labels.dtype != torch.int64 or labels.ndim != 1:
        raise ValueError(f"labels must be int64 of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_labels):
        raise ValueError(
            f"labels must be in 0..{n_labels - 1} ({n_labels - 1} = null), got {int(labels.min())}..{int(labels.max())}"
        )


class ClassConditionalUNet(nn.Module):
    """Denoiser eps/v = f(x_t, t, label) for `channels`-channel images of `image_size` px (28..64).

    Widths per level are `width * channel_mult[i]`; `attention_levels` lists the levels (0 = full size)
    whose blocks carry self-attention; the middle block has attention when `mid_attention`.
    All arguments are plain data so medgen.training.save_model / load_model rebuild the module.
    """

    def __init__(
        self,
        n_classes: int = 2,
        image_size: int = 28,
        channels: int = 1,
        sample_size: int = 32,
        width: int = 16,
        channel_mult: list[int] | tuple[int, ...] = (1, 2, 2),
        layers_per_block: int = 1,
        attention_levels: list[int] | tuple[int, ...] = (2,),
        mid_attention: bool = True,
        norm_groups: int = 8,
        dropout: float = 0.0,
        prediction: str = "v_prediction",
        train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel  # lazy: importing diffusers costs ~1 s and is needed only here

        levels = len(channel_mult)
        self._validate(image_size, channels, sample_size, levels, prediction, beta_schedule)
        widths = tuple(width * m for m in channel_mult)
        if any(w % norm_groups for w in widths):
            raise ValueError(f"norm_groups={norm_groups} must divide every level width {widths}")
        self.n_classes, self.image_size, self.channels, self.sample_size = n_classes, image_size, channels, sample_size
        self.null_label = n_classes
        self.prediction, self.train_timesteps, self.beta_schedule = prediction, train_timesteps, beta_schedule
        attn = set(attention_levels)
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=widths,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_groups,
            down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)),
            up_block_types=tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(levels))),
            add_attention=mid_attention,
            attention_head_dim=min(32, widths[-1]),
            dropout=dropout,
            num_class_embeds=n_classes + 1,  # + the null class of classifier-free guidance
        )
        pad = sample_size - image_size
        self._pad = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)  # left, right, top, bottom

    @staticmethod
    def _validate(
        image_size: int, channels: int, sample_size: int, levels: int, prediction: str, schedule: str
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if not 8 <= image_size <= sample_size:
            raise ValueError(f"image_size must be in 8..sample_size ({sample_size}), got {image_size}")
        if sample_size % 2 ** (levels - 1):
            raise ValueError(f"sample_size {sample_size} must be a multiple of 2**(levels-1) = {2 ** (levels - 1)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x_t (N, C, H, W) float, t (N,) int64 in 0..train_timesteps-1, labels (N,) int64 -> (N, C, H, W)."""
        _check_labels(labels, self.n_classes + 1)
        left, right, top, bottom = self._pad
        x = F.pad(x_t, self._pad)  # (N, C, S, S), S = sample_size; zeros around the H x W image
        # UNet2DModel: conv_in (N, w, S, S) -> down levels (N, w*m_i, S/2^i, S/2^i) -> mid (N, w*m_-1, S/2^(L-1))
        # -> up levels back to (N, w, S, S) -> GroupNorm, SiLU, conv_out (N, C, S, S); time + class embeddings
        # (N, 4w) are added inside every ResNet block.
        out = self.unet(x, t, class_labels=labels).sample  # (N, C, S, S)
        return out[:, :, top : top + x_t.shape[2], left : left + x_t.shape[3]]  # (N, C, H, W)
