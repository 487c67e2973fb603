"""The torch runtime of training and inference: device, the one precision rule, batch defaults.

Also what makes a network fast at inference (BatchNorm folded into its convolutions) and the
seconds spent per stage of a run. torch is imported inside the functions, so that the methods
without a network never load it.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Iterator

from stemstrain.errors import StemstrainInputError

__all__ = [
    "PRECISIONS",
    "Timings",
    "autocast",
    "autocast_dtype",
    "default_batch_size",
    "fold_batchnorm",
    "native_bf16",
    "network_chunk",
    "resolve_device",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str, option: str = "--device") -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; an explicit device is checked.

    Raises
    ------
    StemstrainInputError
        For an unknown device, or CUDA on a machine without one.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StemstrainInputError(f"{option}: expected cpu, cuda or auto, found {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StemstrainInputError(f"{option} {device}: no CUDA device is available (use cpu or auto)")
    return device


def native_bf16(device) -> bool:
    """Whether bf16 matrix products run in hardware: CUDA with bf16, or a CPU with AVX-512-BF16 or AMX.

    The CPU test reads the instruction flags, not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``:
    that one says oneDNN *can* run bf16, which it also does on AVX-512 CPUs without BF16
    instructions, by emulation (slower than fp32, like the 4-8x measured on AVX2-only CPUs).
    """
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device, option: str = "--precision") -> str:
    """The precision of a network on a device: the one rule of training and inference.

    ``auto`` -> bf16 where the hardware computes bf16 natively (:func:`native_bf16`), fp16 on
    GPUs without bf16, fp32 on CPUs without it (emulated bf16 is slower than fp32).

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
        Requested precision.
    device : str or torch.device
        Where the network runs.
    option : str
        Option named in messages (``--precision``, ``train.precision``).

    Returns
    -------
    str
        ``fp32``, ``bf16`` or ``fp16``.

    Raises
    ------
    StemstrainInputError
        For an unknown precision, or fp16 on a CPU.
    """
    import torch

    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise StemstrainInputError(f"{option}: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision == "auto":
        if native_bf16(device):
            return "bf16"
        return "fp16" if kind == "cuda" else "fp32"
    if precision == "fp16" and kind != "cuda":
        raise StemstrainInputError(f"{option}: fp16 needs a CUDA GPU (found {kind}); use bf16, fp32 or auto")
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(
            f"{option} bf16: {device} has no native bf16 (AVX-512-BF16/AMX); emulated bf16 is slower than fp32",
            stacklevel=2,
        )
    return precision


def autocast_dtype(precision: str):
    """The torch autocast dtype of a resolved precision; None for fp32 (no autocast)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """The autocast context of a resolved precision on a device (disabled for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def default_batch_size(device: str) -> int:
    """Patterns per batch (network, then read-out): enough to keep a GPU busy, small enough for CPU caches."""
    return 1024 if device.startswith("cuda") else 128


def network_chunk(device: str, batch_size: int) -> int:
    """Patterns per network call within a batch: the whole batch on a GPU, at most 32 on a CPU.

    On a CPU the U-Net's activations of 32 patterns at 128² px (8 MB a layer in bf16) stay in the
    caches much better than those of 128: the shipped general-v2 ran 1.3-1.5x faster alone (bf16,
    AVX-512), and the network and template read-out of 128-pattern batches 1.3x faster with the
    network called on 32 at a time (384 against 297 patterns/s; calling all of it, read-out
    included, on batches of 32 gave 357).
    """
    return batch_size if device.startswith("cuda") else min(batch_size, 32)


def fold_batchnorm(network):
    """A copy of an eval-mode network with every BatchNorm2d that follows a Conv2d folded into it.

    In eval mode a batch norm is an affine map per channel, so it merges into the preceding
    convolution's weights and bias: the same function with one pass over memory less per layer
    (measured 1.3-1.5x faster for the default U-Net on CPU). Other modules are kept as they are.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    network = copy.deepcopy(network).eval()
    for module in network.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = torch.nn.Identity()
    return network


class Timings(dict):
    """Seconds spent per stage of a run (read, network, peaks, fit, write)."""

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add(self, stage: str, seconds: float) -> None:
        self[stage] = self.get(stage, 0.0) + seconds
