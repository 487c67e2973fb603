"""U-Net mapping a raw diffraction pattern to a Bragg-spot mask logit and a spot image.

The network sees counts at any dose (1e3 to 1e7 e- per pattern): :func:`normalise_patterns`
divides each pattern by its mean and compresses with ``log1p`` inside ``forward``, so the
expected input does not depend on the dose and callers never scale anything themselves.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stemstrain.config import ModelConfig


def normalise_patterns(patterns: torch.Tensor) -> torch.Tensor:
    """Dose-independent compression of raw patterns.

    Parameters
    ----------
    patterns : Tensor (N, 1, H, W)
        Raw intensities [counts]; negative values (over-subtracted dark reference) count as 0.

    Returns
    -------
    Tensor (N, 1, H, W)
        ``log1p(patterns / mean(patterns))`` per pattern [1]. Dividing by the mean removes the
        dose; the logarithm brings the undiffracted disk and weak Bragg disks within a decade.
    """
    counts = patterns.float().clamp_min(0.0)
    mean = counts.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return torch.log1p(counts / mean)


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: str):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net of ``depth`` levels; level ``l`` has ``base_channels * 2**l`` channels.

    Parameters
    ----------
    config : ModelConfig
        ``base_channels``, ``depth`` and ``norm`` (batch, group or none).

    Notes
    -----
    ``forward(patterns)`` takes RAW patterns (N, 1, H, W) [counts] with H and W divisible by
    ``2**(depth - 1)`` and returns (N, C, H, W): channel 0 is the spot-mask logit, channel 1
    the spot image (the training target, normalised as in :func:`stemstrain.model.loss.normalise_target`);
    with ``config.offsets`` channels 2 and 3 are the offset (x, y) to the nearest spot centre [px] and
    channel 4 its log σ (:mod:`stemstrain.model.encoding`).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**level for level in range(config.depth)]
        self.encoders = nn.ModuleList()
        in_channels = 1
        for width in widths:
            self.encoders.append(_DoubleConv(in_channels, width, config.norm))
            in_channels = width
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamples.append(nn.ConvTranspose2d(in_channels, width, 2, stride=2))
            self.decoders.append(_DoubleConv(2 * width, width, config.norm))
            in_channels = width
        self.head = nn.Conv2d(in_channels, self.channels, 1)

    @property
    def channels(self) -> int:
        """Output channels: mask logit and spot image, then offsets (x, y) and log σ when ``config.offsets``."""
        return 5 if self.config.offsets else 2

    @property
    def divisor(self) -> int:
        """Pattern sizes must be multiples of this [px]."""
        return 2 ** (self.config.depth - 1)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        height, width = patterns.shape[-2:]
        if height % self.divisor or width % self.divisor:
            raise ValueError(f"pattern size {height}x{width} is not a multiple of {self.divisor} (2**(depth-1))")
        x = normalise_patterns(patterns)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
