"""The torch runtime of training and inference: device, the one precision rule, batch defaults.

Also what makes a network fast at inference (BatchNorm folded into its convolutions; the engine that
runs it, ONNX Runtime for fp32 on a CPU) and the seconds spent per stage of a run. torch and
onnxruntime are imported inside the functions, so that the methods without a network never load them.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Iterator

from stemstrain.errors import StemstrainInputError

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "OnnxNetwork",
    "Timings",
    "autocast",
    "autocast_dtype",
    "default_batch_size",
    "fold_batchnorm",
    "native_bf16",
    "network_chunk",
    "resolve_device",
    "resolve_engine",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENGINES = ("auto", "torch", "onnxruntime")


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


def resolve_engine(engine: str, device, precision: str, option: str = "--engine") -> str:
    """What runs an inference network: ``auto`` -> ``onnxruntime`` for fp32 on a CPU, else ``torch``.

    ONNX Runtime fuses each convolution with its ReLU and keeps a blocked memory layout through the
    U-Net's concatenations, which torch's eager CPU path does not: fast-v1 alone ran 1.5-1.8x faster
    and ``strain`` end to end 1.15-1.3x (fp32, 2 cores of an AMD EPYC with AVX2 only; the same strains
    within 3e-7). bf16 and GPUs stay with torch (autocast, AMX, CUDA). Where ``onnxruntime`` or ``onnx``
    is not installed (a platform without their wheels), ``auto`` is torch.

    Parameters
    ----------
    engine : {"auto", "torch", "onnxruntime"}
        Requested engine.
    device : str or torch.device
        Where the network runs.
    precision : str
        The resolved precision (:func:`resolve_precision`).
    option : str
        Option named in messages.

    Returns
    -------
    str
        ``torch`` or ``onnxruntime``.

    Raises
    ------
    StemstrainInputError
        For an unknown engine, or onnxruntime on a GPU, in another precision than fp32 or not installed.
    """
    import importlib.util

    import torch

    if engine not in ENGINES:
        raise StemstrainInputError(f"{option}: expected one of {', '.join(ENGINES)}, found {engine!r}")
    cpu_fp32 = torch.device(device).type == "cpu" and precision == "fp32"
    missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    if engine == "auto":
        return "onnxruntime" if cpu_fp32 and not missing else "torch"
    if engine == "onnxruntime" and not cpu_fp32:
        raise StemstrainInputError(
            f"{option} onnxruntime: runs fp32 on the CPU only, found {precision} on {device} (use torch or auto)"
        )
    if engine == "onnxruntime" and missing:
        raise StemstrainInputError(
            f"{option} onnxruntime: the package(s) {', '.join(missing)} are not installed "
            "(pip install onnxruntime onnx, or use torch or auto)"
        )
    return engine


class OnnxNetwork:
    """An eval-mode network run by ONNX Runtime on the CPU, called like the torch module.

    The network is exported to ONNX in memory (any batch size) and run on ``torch.get_num_threads()``
    threads that sleep between calls instead of spinning, so that they leave the cores to the read-out
    that follows each batch.

    Parameters
    ----------
    network : torch.nn.Module
        The network in eval mode (BatchNorm folded or not: ONNX Runtime folds it too).
    inputs : dict of str to tuple of int
        Its inputs in the order it takes them: name and the shape of one item (the batch axis, of any
        size, comes first): ``{"patterns": (1, 128, 128)}`` for the U-Net.
    """

    def __init__(self, network, inputs: dict[str, tuple[int, ...]]):
        import io

        import onnxruntime
        import torch

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes about its TorchScript-based exporter
            torch.onnx.export(
                network.float().eval(),
                tuple(torch.ones(2, *shape) for shape in inputs.values()),
                buffer,
                dynamo=False,
                input_names=list(inputs),
                output_names=["output"],
                dynamic_axes={name: {0: "n"} for name in [*inputs, "output"]},
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.names = list(inputs)

    def __call__(self, *inputs):
        """The first output of the inputs (torch tensors, float32 on the CPU), as a torch tensor."""
        import numpy as np
        import torch

        feeds = {name: np.ascontiguousarray(x.float().numpy()) for name, x in zip(self.names, inputs, strict=True)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


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
