"""Throughput of the strain step per stage (read, network, peaks, fit, write) and end to end.

Builds a uint16 scan of kinematic disk patterns (aperture disks at SIM's spots, Poisson noise) and runs
``stemstrain.strainmap.strain_map`` with the unet method in fp32 (run by ONNX Runtime, the default
for fp32 on a CPU, and by torch) and bf16 (the default read-out), then with each read-out
(``refine``: the network's offsets, the probe template; the template also untilted,
``tilt_prior=0``, and with a disk-centre correction, ``--disk-correction``, default the shipped disks-v1) in the
fastest precision, after timing the network alone (NCHW, channels_last, folded BatchNorm, ONNX
Runtime, bf16 autocast, torch.compile, its FLOPs and the CPU's fp32 GEMM rate; ``strain`` itself
compiles only on a GPU). The network is the default U-Net of config.yaml with random weights and a
pass-through channel (:func:`default_model`: every layer costs what it costs in a trained network,
and the peaks and fits see real spots) unless ``--model`` names a trained one. On a shared machine
compare the ratios of one run; the load average is recorded next to each figure. Results: ``bench/results/infer.json``.

    python bench/infer.py [--patterns 4096] [--no-bf16] [--no-compile] [--tag NAME]

An AVX2-only CPU can be approximated on a newer one by capping every library's instruction set
(recorded in the result's ``machine.isa_limits``). bf16 is then emulated, so skip it. torch.compile
fails in torch 2.13 under this cap (NaN for the channels_last network; eager AVX2 is exact) and, on
AVX-512, for the base-4 network of fast-v1 (the process aborts): skip it with ``--no-compile``.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
        python bench/infer.py --model models/general-v2.pt --no-bf16 --no-compile --tag avx2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.config import ModelConfig  # noqa: E402
from stemstrain.detect.bragg import aperture_disk, disk_radius  # noqa: E402
from stemstrain.io import make_4d_dataset  # noqa: E402
from stemstrain.model import UNet, export_model  # noqa: E402
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights  # noqa: E402
from stemstrain.strainmap import strain_map  # noqa: E402

PIXELS, K_SAMPLING, ENERGY = 128, 0.025, 200e3


def make_scan(path: Path, n_patterns: int, dose: float = 1e5, chunk: tuple[int, int] = (8, 32)) -> Path:
    """uint16 scan of Si [110] kinematic disk patterns with Poisson noise, 32 positions wide.

    Each reflection is the aperture disk at the scan's 200 kV and 1.5 mrad, weighted by its kinematic
    intensity; the scan's vacuum probe is that disk, so the template read-out runs as on a measured
    scan (with the disks' tilt fitted).
    """
    g_xy, intensity, _ = kinematic_spots("Si_110", np.eye(2), 1.55, ENERGY)
    radius = disk_radius(ENERGY, 1.5)  # [1/angstrom]
    pattern = sum(
        weight * aperture_disk((PIXELS, PIXELS), K_SAMPLING, (y, x), radius)
        for (x, y), weight in zip(pixels_from_k(g_xy, PIXELS, K_SAMPLING), spot_weights(intensity, g_xy), strict=True)
    )
    pattern = pattern / pattern.sum() * dose
    n_x = 32
    n_y = max(1, n_patterns // n_x)
    rng = np.random.default_rng(0)
    data = rng.poisson(np.broadcast_to(pattern, (n_y, n_x, PIXELS, PIXELS))).astype(np.uint16)
    probe = aperture_disk((PIXELS, PIXELS), K_SAMPLING, (PIXELS // 2, PIXELS // 2), radius) * dose
    ds = make_4d_dataset(data, 0.5, K_SAMPLING, ENERGY, 1.5, reference_roi=[0, n_y, 0, 4], probe=probe)
    ds.chunk({"scan_y": chunk[0], "scan_x": chunk[1]}).to_zarr(path, mode="w")
    return path


def default_model(path: Path, passthrough: bool = True) -> Path:
    """The default U-Net of config.yaml, random weights, exported with the reference calibration.

    With ``passthrough`` one channel of every level-0 convolution and the head copy the network's
    normalised input through the top of the U: the spot image is ``log1p(pattern / mean)`` and
    the mask logit is positive on the spots, so that peaks and lattice fits see real spots while
    every layer still costs what it costs in a trained network (same shapes, dense weights).
    """
    import torch

    torch.manual_seed(0)
    network = UNet(ModelConfig()).eval()
    if passthrough:
        with torch.no_grad():
            width = network.config.base_channels

            def copy_channel(conv, source):
                conv.weight[0] = 0.0
                conv.weight[0, source, 1, 1] = 1.0

            copy_channel(network.encoders[0][0], 0)
            copy_channel(network.encoders[0][3], 0)
            copy_channel(network.decoders[-1][0], width)  # the skip's channel 0 after the upsampled ones
            copy_channel(network.decoders[-1][3], 0)
            network.head.weight.zero_()
            network.head.weight[:, 0] = 1.0
            network.head.bias.copy_(torch.tensor([-0.5, 0.0]))  # mask where pattern > 0.65 x its mean
    metadata = {"pixels": PIXELS, "k_sampling": K_SAMPLING, "energy_eV": ENERGY, "semiangle_mrad": 1.5}
    return export_model(
        network, path, {**metadata, "config": {}, "data_hash": "passthrough" if passthrough else "random"}
    )


def rates(timings: dict) -> dict:
    n = timings["patterns"]
    return {stage: round(n / seconds, 1) for stage, seconds in timings.items() if stage != "patterns" and seconds > 0}


def patterns_per_s(network, inputs, autocast: bool = False) -> float:
    """Patterns/s of ``network`` on the batch ``inputs`` (bf16 autocast optional), called as ``strain``
    calls it: on parts of :func:`stemstrain.runtime.network_chunk` patterns."""
    import torch

    from stemstrain.runtime import network_chunk

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        start = time.perf_counter()
        for part in inputs.split(network_chunk("cpu", len(inputs))):
            network(part)
        return len(inputs) / (time.perf_counter() - start)


def gflop_per_pattern(network) -> float:
    """FLOPs of one 128² pattern through ``network`` [GFLOP] (2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.ones(1, 1, PIXELS, PIXELS))
    return round(counter.get_total_flops() / 1e9, 3)


def network_alone(model_path: Path, batch: int, rounds: int, compile: bool = True) -> dict:
    """Patterns/s of the network by itself: layouts, BatchNorm folding, bf16 autocast, torch.compile.

    Variants are interleaved round by round so that a change of the machine's load hits all of
    them alike; the figure is the median over rounds. Also the model's FLOPs per pattern and the
    fp32 GEMM rate of this CPU (the FLOP limit).
    """
    import copy

    import torch

    from stemstrain.model import load_model
    from stemstrain.runtime import OnnxNetwork, fold_batchnorm, network_chunk

    network, _ = load_model(model_path)
    x = torch.poisson(torch.full((batch, 1, PIXELS, PIXELS), 6.0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(network).to(memory_format=torch.channels_last)
    variants = {
        "fp32 NCHW": (network, x, False),
        "fp32 channels_last": (copy.deepcopy(network).to(memory_format=torch.channels_last), x_cl, False),
        "fp32 channels_last + folded BN (torch)": (folded, x_cl, False),
        "fp32 onnxruntime (default without native bf16)": (OnnxNetwork(folded, {"patterns": x.shape[1:]}), x, False),
    }

    for model, inp, autocast in variants.values():
        patterns_per_s(model, inp, autocast)  # warm-up (oneDNN primitive creation)
    samples: dict = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (model, inp, autocast) in variants.items():
            samples[name].append(patterns_per_s(model, inp, autocast))
    result = {name: round(statistics.median(values), 1) for name, values in samples.items()}
    # bf16 and compile: one timed call each, between two of the default, to keep the run short.
    others = {"bf16 autocast (folded, channels_last)": (folded, True)}
    if compile:
        start = time.perf_counter()
        compiled = torch.compile(folded)
        patterns_per_s(compiled, x_cl, False)
        result["compile_seconds"] = round(time.perf_counter() - start, 1)
        others["fp32 torch.compile (folded, channels_last)"] = (compiled, False)
    for name, (model, autocast) in others.items():
        before = patterns_per_s(folded, x_cl, False)
        patterns_per_s(model, x_cl, autocast)
        value = patterns_per_s(model, x_cl, autocast)
        after = patterns_per_s(folded, x_cl, False)
        result[name] = round(value, 1)
        result[name + " / fp32 torch in the same minute"] = round(value / statistics.mean([before, after]), 2)
    result["gflop_per_pattern"] = gflop_per_pattern(network)
    a = torch.randn(2048, 2048)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    result["fp32_gemm_gflops"] = round(5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9, 1)
    default = result["fp32 onnxruntime (default without native bf16)"]
    result["flop_limit_patterns_per_s"] = round(result["fp32_gemm_gflops"] / result["gflop_per_pattern"], 1)
    result["default_fraction_of_flop_limit"] = round(default / result["flop_limit_patterns_per_s"], 2)
    result["samples"] = {name: [round(v, 1) for v in values] for name, values in samples.items()}
    result["patterns_per_call"] = network_chunk("cpu", batch)
    return result


SIZES = [(4, 4), (8, 3), (8, 4), (12, 4), (16, 4), (24, 4)]


def network_sizes(batch: int, rounds: int) -> dict:
    """Network-alone patterns/s and GFLOP per pattern of U-Nets of other widths and depths.

    fp32, folded BatchNorm, run by torch (channels_last) and by ONNX Runtime (what ``stemstrain
    strain`` runs in fp32 on a CPU), random weights: the cost of a layer does not depend on its
    weights. The median over ``rounds`` calls.
    """
    import torch

    from stemstrain.runtime import OnnxNetwork, fold_batchnorm

    x = torch.poisson(torch.full((batch, 1, PIXELS, PIXELS), 6.0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    result = {}
    for base, depth in SIZES:
        network = fold_batchnorm(UNet(ModelConfig(base_channels=base, depth=depth)).eval())
        engines = {
            "patterns_per_s": (network.to(memory_format=torch.channels_last), x_cl),
            "patterns_per_s_onnxruntime": (OnnxNetwork(network, {"patterns": (1, PIXELS, PIXELS)}), x),
        }
        result[f"base {base} depth {depth}"] = {"gflop_per_pattern": gflop_per_pattern(network)}
        for key, (model, inputs) in engines.items():
            patterns_per_s(model, inputs)  # warm-up
            samples = [patterns_per_s(model, inputs) for _ in range(rounds)]
            result[f"base {base} depth {depth}"][key] = round(statistics.median(samples), 1)
    return result


def engines_interleaved(scan: Path, work: Path, model: Path, batch: int, rounds: int) -> dict:
    """End-to-end patterns/s of ``strain`` in fp32 (the default read-out) run by each engine, the engines
    alternated round by round after a warm-up round: on a shared machine whose speed drifts, only figures
    taken this way compare them. The median and every round's figure per engine."""
    samples: dict = {"onnxruntime": [], "torch": []}
    for round_ in range(rounds + 1):
        for engine, values in samples.items():
            out = work / f"engine-{engine}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            timings: dict = {}
            options = {"precision": "fp32", "engine": engine, "batch_size": batch}
            strain_map(scan, out, model=model, device="cpu", progress=False, timings=timings, **options)
            if round_:
                values.append(round(timings["patterns"] / timings["total"], 1))
    return {engine: {"median": statistics.median(values), "rounds": values} for engine, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=4096, help="scan size; 512 is mostly warm-up")
    parser.add_argument("--model", type=Path, default=None, help="trained model (default: pass-through default U-Net)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the network-alone timing")
    parser.add_argument("--no-bf16", action="store_true", help="skip the (slow on AVX2) bf16 end-to-end run")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing of the network")
    parser.add_argument(
        "--disk-correction",
        nargs="+",
        default=["disks-v1"],
        help="disk-centre correctors, one corrected run each (files or shipped names; default disks-v1)",
    )
    parser.add_argument("--tag", help="appended to the result's name: bench/results/infer_<tag>.json")
    parser.add_argument(
        "--device", default="cpu", help="cpu (every row above), or cuda: the end-to-end rows in each precision"
    )
    args = parser.parse_args()
    if args.device != "cpu":
        return device_rows(args)

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as work:
        work = Path(work)
        scan = make_scan(work / "scan.zarr", args.patterns)
        model = args.model or default_model(work / "model.pt")
        results = {
            "patterns": args.patterns,
            "batch_size": args.batch,
            "model": str(args.model or f"passthrough default U-Net ({ModelConfig()}), random weights"),
            "load_avg_start": [round(v, 1) for v in os.getloadavg()],
        }
        results["network_alone_patterns_per_s"] = network_alone(model, 64, args.rounds, not args.no_compile)
        print("network alone", results["network_alone_patterns_per_s"], flush=True)
        results["network_sizes"] = network_sizes(64, args.rounds)
        print("network sizes", results["network_sizes"], flush=True)
        # (precision, read-out options): the default read-out, and each read-out in the fastest precision
        fast = "fp32" if args.no_bf16 else "bf16"
        variants = [("fp32", {}), ("fp32", {"engine": "torch"})] + ([] if args.no_bf16 else [("bf16", {})])
        variants += [(fast, {"refine": "offsets"}), (fast, {"refine": "template"})]
        variants += [(fast, {"refine": "template", "tilt_prior": 0})]
        variants += [(fast, {"disk_correction": corrector}) for corrector in args.disk_correction]
        for precision, options in variants:
            name = " ".join([precision, *(f"{key}={value}" for key, value in options.items())])
            timings: dict = {}
            start = time.perf_counter()
            strain_map(
                scan,
                work / f"{name}.zarr",
                model=model,
                device="cpu",
                precision=precision,
                batch_size=args.batch,
                progress=False,
                timings=timings,
                detector_options=options or None,
            )
            results[name] = {
                "patterns_per_s": rates(timings),
                "network_share_of_total": round(timings.get("network", 0) / timings["total"], 3),
                "wall_s": round(time.perf_counter() - start, 2),
                "load_avg": [round(v, 1) for v in os.getloadavg()],
            }
            print(name, results[name], flush=True)
        results["fp32 engines interleaved"] = engines_interleaved(scan, work, model, args.batch, args.rounds)
        print("fp32 engines interleaved", results["fp32 engines interleaved"], flush=True)
        results["load_avg_end"] = [round(v, 1) for v in os.getloadavg()]
        print(write_result("infer" + (f"_{args.tag}" if args.tag else ""), results))


def device_rows(args: argparse.Namespace) -> None:
    """``strain`` end to end on an accelerator in each precision (``auto`` first), each run twice.

    The first run of each precision warms the device (kernels, allocator); the second is reported. The
    batch is ``strain``'s default for the device. Results: ``bench/results/infer_<tag or device>.json``.
    """
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as work:
        work = Path(work)
        scan = make_scan(work / "scan.zarr", args.patterns)
        model = args.model or default_model(work / "model.pt")
        results = {"patterns": args.patterns, "device": args.device, "model": str(args.model or "passthrough")}
        for precision in ("auto", "fp32", "bf16"):
            for _ in range(2):
                timings: dict = {}
                out = work / f"{precision}.zarr"
                strain_map(
                    scan,
                    out,
                    model=model,
                    device=args.device,
                    precision=precision,
                    progress=False,
                    timings=timings,
                    fresh=True,
                )
            results[precision] = {"patterns_per_s": rates(timings), "load_avg": [round(v, 1) for v in os.getloadavg()]}
            print(precision, results[precision], flush=True)
        print(write_result("infer_" + (args.tag or args.device), results))


if __name__ == "__main__":
    main()
