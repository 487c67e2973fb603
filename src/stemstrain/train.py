"""Distributed training of the spot network: one code path for 1 process, N processes, N nodes.

``torchrun`` (or Slurm's ``srun`` with the same variables) sets RANK, WORLD_SIZE and LOCAL_RANK;
without them the process trains alone in a world of one. gloo on CPU, nccl on GPU. Each process
reads its DistributedSampler share of the Zarr training set batch by batch, augments it on the fly
(shift and ellipticity move the target with the input; dose by Poisson thinning) and steps a DDP
model. Rank 0 alone logs and writes: ``checkpoint.pt`` (atomic), ``metrics.csv`` (per epoch),
``steps.csv`` (per step), ``curves.png`` and the exported ``model.pt``.

Every random draw is a function of (seed, step, rank), and the data order of (seed, epoch), so a
run resumed from a checkpoint (taken at any step) continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import math
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import zarr
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from stemstrain.config import Augment, Config, TrainConfig
from stemstrain.errors import StemstrainInputError
from stemstrain.io import atomic_output, check_counts, discard_temporaries
from stemstrain.model import UNet, export_model, normalise_target, spot_loss

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.csv"
STEPS = "steps.csv"
CURVES = "curves.png"

METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_bce",
    "train_mse",
    "val_loss",
    "val_bce",
    "val_mse",
    "val_median_error_px",
    "val_recall",
    "val_precision",
    "samples_per_s",
    "elapsed_s",
)
STEP_FIELDS = ("step", "epoch", "lr", "loss", "bce", "mse")

# A predicted spot is a local maximum of the spot image where the mask is more likely on than
# off; a true spot is a local maximum of the (non-zero) target.
MASK_PROBABILITY = 0.5


# ---------------------------------------------------------------- data


class TrainingSet(torch.utils.data.Dataset):
    """Batches read from a training-set Zarr store (contract of DESIGN.md), never loaded whole.

    ``dataset[indices]`` returns ``(inputs, targets)`` as float32 tensors (b, 1, H, W) in the
    order of ``indices``. Whole Zarr chunks are decoded and kept in a least-recently-used cache of
    ``cache_mb`` per process, so shuffled batches do not decode the same chunk again and again.

    Parameters
    ----------
    path : path
        Training-set store with ``inputs`` and ``targets`` (n, k_y, k_x).
    cache_mb : float
        Decoded chunks kept [MiB].
    """

    def __init__(self, path: str | Path, cache_mb: float = 256.0):
        self.path = Path(path)
        self.cache_bytes = int(cache_mb * 2**20)
        self._group = None
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        group = self._open()
        self.shape = tuple(group["inputs"].shape)
        self.chunk = int(group["inputs"].chunks[0])

    def _open(self):
        if self._group is None:
            self._group = open_training_group(self.path)
        return self._group

    def __getstate__(self):
        # DataLoader workers open their own store handle and cache.
        return {**self.__dict__, "_group": None, "_cache": OrderedDict(), "_cached_bytes": 0}

    def __len__(self) -> int:
        return self.shape[0]

    def labels(self, name: str) -> np.ndarray | None:
        """A small per-sample label array (``strain``, ``dose``, ...) or None if absent."""
        group = self._open()
        return np.asarray(group[name][...]) if name in group else None

    def _chunk(self, name: str, index: int) -> np.ndarray:
        key = (name, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array = self._open()[name]
        block = np.asarray(array[index * self.chunk : (index + 1) * self.chunk], dtype=np.float32)
        self._cache[key] = block
        self._cached_bytes += block.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.nbytes
        return block

    def read(self, name: str, indices) -> np.ndarray:
        """Patterns ``indices`` of array ``name`` as float32 (b, H, W)."""
        out = np.empty((len(indices), *self.shape[1:]), np.float32)
        for row, index in enumerate(indices):
            out[row] = self._chunk(name, int(index) // self.chunk)[int(index) % self.chunk]
        return out

    def __getitem__(self, indices):
        inputs = torch.from_numpy(self.read("inputs", indices))[:, None]
        targets = torch.from_numpy(self.read("targets", indices))[:, None]
        return inputs, targets


def open_training_group(path: str | Path):
    """Open a training-set store and check the arrays training needs.

    Raises
    ------
    StemstrainInputError
        If the store is missing, unreadable, or ``inputs``/``targets`` are absent or malformed.
    """
    path = Path(path)
    if not path.exists():
        raise StemstrainInputError(f"{path}: training-set store not found")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises many types for foreign stores
        raise StemstrainInputError(f"{path}: cannot be read as a Zarr training set ({type(err).__name__})") from None
    for name in ("inputs", "targets"):
        if name not in group:
            raise StemstrainInputError(
                f"{path}: variable '{name}' is missing (found {sorted(group.array_keys())}); "
                "expected a training set written by `stemstrain simulate`"
            )
        if group[name].ndim != 3:
            raise StemstrainInputError(
                f"{path}: variable '{name}' has shape {group[name].shape}, expected (n, k_y, k_x)"
            )
    if group["inputs"].shape != group["targets"].shape:
        raise StemstrainInputError(
            f"{path}: 'inputs' {group['inputs'].shape} and 'targets' {group['targets'].shape} differ in shape"
        )
    if group["inputs"].shape[0] < 2:
        raise StemstrainInputError(f"{path}: {group['inputs'].shape[0]} pattern(s); training needs at least 2")
    return group


def _check_values(array, path: Path, name: str) -> None:
    """Every chunk of a training array decodes and holds finite patterns of non-negative total.

    NaN inputs crashed the Poisson dose thinning with a traceback; inf targets or sign-flipped
    inputs trained silently into a useless model. One pass over the set costs far less than an epoch.
    """
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise StemstrainInputError(f"{path}: variable '{name}' has dtype {array.dtype}, expected float32")
    step = array.chunks[0]
    for start in range(0, array.shape[0], step):
        where = f" in samples {start}:{min(start + step, array.shape[0])}"
        try:
            block = np.asarray(array[start : start + step])
        except Exception as err:  # codecs raise RuntimeError, ValueError, OSError ... for damaged chunks
            raise StemstrainInputError(
                f"{path}: variable '{name}' cannot be read{where}: damaged or truncated Zarr chunk "
                f"({type(err).__name__}: {err})"
            ) from None
        check_counts(block, str(path), name, where)


def check_training_set(path: str | Path, config: Config) -> tuple[int, int]:
    """Validate a training set against the configuration; return (patterns, pixels)."""
    group = open_training_group(path)
    n, height, width = group["inputs"].shape
    divisor = 2 ** (config.model.depth - 1)
    if height != width or height != config.detector.pixels:
        raise StemstrainInputError(
            f"{path}: patterns are {height}x{width} px, expected {config.detector.pixels}x{config.detector.pixels} "
            "(detector.pixels of the configuration)"
        )
    if height % divisor:
        raise StemstrainInputError(
            f"{path}: pattern size {height} px is not a multiple of 2**(model.depth - 1) = {divisor}"
        )
    expected = {
        "k_sampling": ("detector.k_sampling", config.detector.k_sampling),
        "energy_eV": ("optics.energy_eV", config.optics.energy_eV),
        "semiangle_mrad": ("optics.semiangle_mrad", config.optics.semiangle_mrad),
    }
    for attr, (option, value) in expected.items():
        found = group.attrs.get(attr)
        if found is not None and not np.isclose(float(found), value, rtol=1e-6):
            raise StemstrainInputError(
                f"{path}: attribute '{attr}' is {found}, but the configuration has {option} = {value}; "
                "the exported model must carry the calibration it was trained at"
            )
    for name in ("inputs", "targets"):
        _check_values(group[name], Path(path), name)
    return n, height


def data_hash(path: str | Path) -> str:
    """sha256 over every file of a store (relative path and content) [hex]."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def split_indices(strain: np.ndarray | None, n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole strain states (all their thicknesses and crystals) for validation.

    Patterns of one strain state share their spot positions, so splitting by pattern would
    validate on positions the network was trained on.

    Returns
    -------
    train, validation : ndarray of int
        Sorted sample indices; validation is empty when ``val_fraction`` is 0.
    """
    if strain is None:
        groups = np.arange(n)
    else:
        _, groups = np.unique(np.round(np.asarray(strain, float).reshape(n, -1), 9), axis=0, return_inverse=True)
        groups = groups.reshape(n)
    n_groups = groups.max() + 1
    n_val = min(n_groups - 1, max(1, round(val_fraction * n_groups))) if val_fraction > 0 and n_groups > 1 else 0
    held = np.random.default_rng(seed).permutation(n_groups)[:n_val]
    is_val = np.isin(groups, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# ---------------------------------------------------------------- augmentation


def thin_dose(inputs: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Resample a fraction of the patterns to a lower dose.

    Binomial thinning of integer counts gives exactly the Poisson statistics of the lower dose;
    non-integer inputs (blurred counts) are resampled as Poisson of the scaled intensity.

    Parameters
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    """
    dose = inputs.sum(dim=(1, 2, 3)).clamp_min(1.0)
    uniform = torch.rand(dose.shape, generator=generator, device=inputs.device, dtype=dose.dtype)
    low = math.log(augment.min_dose)
    new_dose = torch.exp(low + uniform * (torch.log(dose) - low).clamp_min(0.0))
    picked = torch.rand(dose.shape, generator=generator, device=inputs.device, dtype=dose.dtype)
    keep = torch.where(picked < augment.dose_fraction, (new_dose / dose).clamp(max=1.0), torch.ones_like(dose))
    keep = keep[:, None, None, None].expand_as(inputs).contiguous()
    counts = inputs.clamp_min(0.0)
    if torch.equal(counts, counts.round()):
        return torch.binomial(counts, keep, generator=generator)
    return torch.poisson(counts * keep, generator=generator)


def warp(images: torch.Tensor, matrices: torch.Tensor, shifts: torch.Tensor, centre: float) -> torch.Tensor:
    """Apply p' = c + M (p - c) + s to images (bilinear), about the undiffracted beam c.

    Parameters
    ----------
    images : Tensor (N, C, H, W)
    matrices : Tensor (N, 2, 2)
        Linear maps acting on (x, y) pixel vectors.
    shifts : Tensor (N, 2)
        Shifts (x, y) [px].
    centre : float
        Pixel index of k = 0 on both axes.
    """
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device, dtype=torch.float32),
        torch.arange(width, device=images.device, dtype=torch.float32),
        indexing="ij",
    )
    out_xy = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2) - centre - shifts[:, None, :]
    source = out_xy @ torch.linalg.inv(matrices).transpose(1, 2) + centre
    size = torch.tensor([width - 1, height - 1], device=images.device, dtype=torch.float32)
    grid = (2 * source / size - 1).reshape(n, height, width, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def augment_batch(
    inputs: torch.Tensor, targets: torch.Tensor, augment: Augment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dose thinning, then one random shift and ellipticity applied to pattern and target alike.

    Parameters
    ----------
    inputs : Tensor (N, 1, H, W)
        Raw patterns [counts].
    targets : Tensor (N, 1, H, W)
        Normalised targets; the warped spot mask is the bilinear mask > 0.5, so the mask does
        not grow a ring of tiny interpolated values.
    """
    n, device = inputs.shape[0], inputs.device
    if augment.dose_fraction > 0:
        inputs = thin_dose(inputs, augment, generator)
    if augment.shift_px == 0 and augment.ellipticity == 0:
        return inputs, targets

    def uniform(*shape):
        return torch.rand(shape, generator=generator, device=device)

    shifts = (2 * uniform(n, 2) - 1) * augment.shift_px
    stretch = 1 + augment.ellipticity * uniform(n)
    angle = math.pi * uniform(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    scale = torch.diag_embed(torch.stack([stretch, torch.ones_like(stretch)], -1))
    matrices = rotation @ scale @ rotation.transpose(1, 2)
    centre = float(inputs.shape[-1] // 2)
    warped = warp(torch.cat([inputs, targets, (targets > 0).float()], dim=1), matrices, shifts, centre)
    mask = warped[:, 2:3] > 0.5
    return warped[:, 0:1], warped[:, 1:2] * mask


# ---------------------------------------------------------------- spots and validation metrics


def spot_positions(images: torch.Tensor, valid: torch.Tensor) -> list[np.ndarray]:
    """Local maxima (3x3) of images inside ``valid``, refined by a parabola along x and y.

    Parameters
    ----------
    images : Tensor (N, H, W)
    valid : Tensor of bool (N, H, W)

    Returns
    -------
    list of ndarray (m_i, 2)
        Spot positions (x, y) [px] per image.
    """
    images = images.float()
    pooled = F.max_pool2d(images[:, None], 3, stride=1, padding=1)[:, 0]
    peaks = (images >= pooled) & valid
    peaks[:, [0, -1], :] = False
    peaks[:, :, [0, -1]] = False
    batch, y, x = torch.nonzero(peaks, as_tuple=True)
    centre = images[batch, y, x]

    def offset(before, after):
        curvature = before - 2 * centre + after
        return torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp(max=-1e-12), 0).clamp(-0.5, 0.5)

    dx = offset(images[batch, y, x - 1], images[batch, y, x + 1])
    dy = offset(images[batch, y - 1, x], images[batch, y + 1, x])
    xy = torch.stack([x + dx, y + dy], dim=-1).cpu().numpy()
    batch = batch.cpu().numpy()
    return [xy[batch == i] for i in range(images.shape[0])]


def match_spots(true: np.ndarray, predicted: np.ndarray, radius: float) -> np.ndarray:
    """Distances [px] of mutually nearest true/predicted spot pairs closer than ``radius``."""
    if len(true) == 0 or len(predicted) == 0:
        return np.empty(0)
    distance = np.linalg.norm(true[:, None, :] - predicted[None, :, :], axis=-1)
    nearest_pred = distance.argmin(axis=1)
    nearest_true = distance.argmin(axis=0)
    rows = np.flatnonzero(nearest_true[nearest_pred] == np.arange(len(true)))
    pairs = distance[rows, nearest_pred[rows]]
    return pairs[pairs < radius]


def spot_counts(outputs: torch.Tensor, targets: torch.Tensor, radius: float) -> tuple[int, int, list[float]]:
    """Spots in targets, spots predicted, and position errors [px] of the matched ones."""
    true = spot_positions(targets, targets > 0)
    predicted = spot_positions(outputs[:, 1], torch.sigmoid(outputs[:, 0].float()) > MASK_PROBABILITY)
    errors = [match_spots(t, p, radius) for t, p in zip(true, predicted, strict=True)]
    return sum(map(len, true)), sum(map(len, predicted)), [float(e) for err in errors for e in err]


# ---------------------------------------------------------------- setup


def _environment() -> tuple[int, int, int, int]:
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))


def _setup(rank: int, world: int, local_rank: int, local_world: int) -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        # Processes on one node share its cores; oversubscription slows every rank down.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``; None for fp32.

    ``auto`` picks bf16 on GPUs that support it and fp16 (with a GradScaler) on older ones. On a
    CPU it picks bf16 only with native bf16 instructions (AVX512-BF16 or AMX): emulated bf16 is
    several times slower than fp32.

    Raises
    ------
    StemstrainInputError
        For fp16 on a CPU.
    """
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
            precision = "bf16" if native else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise StemstrainInputError("train.precision: fp16 needs a CUDA GPU (found a CPU); use bf16, fp32 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) * 4099 + rank)
    return generator


def _init_mask_prior(model: UNet, dataset: TrainingSet, indices: np.ndarray, n: int = 64) -> None:
    """Start the mask logit at the spot-pixel fraction of the training set instead of p = 0.5.

    Spots cover a few to twenty per cent of a pattern; from the prior, the first steps learn
    where the spots are instead of that most pixels are background.
    """
    fraction = float(np.mean(dataset.read("targets", np.sort(indices[:n])) > 0))
    fraction = min(max(fraction, 1e-4), 0.5)
    with torch.no_grad():
        model.head.bias[0] = math.log(fraction / (1 - fraction))


def _summed(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum of a small CPU tensor over all ranks (NCCL reduces only GPU tensors)."""
    values = values.to(device, copy=True)
    dist.all_reduce(values)
    return values.cpu()


def _parameter_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _scheduler(optimizer, train: TrainConfig, total_steps: int):
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=total_steps, pct_start=min(0.3, max(0.05, 50 / total_steps))
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


# ---------------------------------------------------------------- rank-0 files


def _rewrite_csv(path: Path, fields, rows: list[dict]) -> None:
    with atomic_output(path) as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)


def _read_csv(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) <= up_to_step]


def plot_curves(metrics: list[dict], steps: list[dict], out: Path) -> Path:
    """Loss per step and per epoch (train, validation) and validation spot metrics, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def column(rows, key):
        return np.array([float(row[key]) if row[key] not in ("", None) else np.nan for row in rows])

    figure, (loss_axis, spot_axis) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    if steps:
        loss_axis.plot(
            column(steps, "step"), column(steps, "loss"), lw=0.6, alpha=0.4, label="train (rank 0, per step)"
        )
    if metrics:
        epoch_step = column(metrics, "step")
        for key, label in [("train_loss", "train"), ("val_loss", "validation"), ("val_bce", "validation BCE")]:
            loss_axis.plot(epoch_step, column(metrics, key), "o-", label=label)
        spot_axis.plot(epoch_step, column(metrics, "val_recall"), "o-", label="recall")
        spot_axis.plot(epoch_step, column(metrics, "val_precision"), "s-", label="precision")
        spot_axis.set_ylim(0, 1.05)
        error_axis = spot_axis.twinx()
        error_axis.plot(epoch_step, column(metrics, "val_median_error_px"), "^-", color="C3", label="median error")
        error_axis.set_ylabel("median spot-position error [px]", color="C3")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss L = BCE + MSE^γ [1]")
    loss_axis.legend()
    spot_axis.set_xlabel("step")
    spot_axis.set_ylabel("validation spot recall / precision [1]")
    spot_axis.legend(loc="lower left")
    with atomic_output(out) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return out


# ---------------------------------------------------------------- the loop


def _validate(model, dataset, indices, train: TrainConfig, autocast_dtype, device, rank, world) -> dict:
    model.eval()
    share = indices[rank::world]
    sums = torch.zeros(4, dtype=torch.float64)  # loss, bce and mse summed over patterns; patterns
    n_true = n_predicted = 0
    errors: list[float] = []
    with torch.no_grad():
        for start in range(0, len(share), train.batch_size):
            inputs, targets = dataset[share[start : start + train.batch_size]]
            inputs = inputs.to(device).contiguous(memory_format=torch.channels_last)
            targets = normalise_target(targets.to(device), train.target_power)[:, 0]
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                outputs = model(inputs)
            outputs = outputs.float()
            loss = spot_loss(outputs, targets, train.gamma)
            b = len(inputs)
            sums[:4] += torch.tensor([loss.total.item() * b, loss.bce.item() * b, loss.mse.item() * b, b])
            true, predicted, matched = spot_counts(outputs, targets, train.match_radius_px)
            n_true, n_predicted = n_true + true, n_predicted + predicted
            errors += matched
    counts = torch.tensor([n_true, n_predicted, len(errors)], dtype=torch.float64)
    gathered: list[list[float]] = [[] for _ in range(world)]
    sums, counts = _summed(sums, device), _summed(counts, device)
    dist.all_gather_object(gathered, errors)
    all_errors = [e for part in gathered for e in part]
    model.train()
    n = max(sums[3].item(), 1.0)
    n_true, n_predicted, n_matched = counts.tolist()
    return {
        "val_loss": sums[0].item() / n,
        "val_bce": sums[1].item() / n,
        "val_mse": sums[2].item() / n,
        "val_median_error_px": float(np.median(all_errors)) if all_errors else float("nan"),
        "val_recall": n_matched / n_true if n_true else float("nan"),
        "val_precision": n_matched / n_predicted if n_predicted else float("nan"),
    }


def train(
    config: Config,
    data: str | Path,
    ckpt_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict | None:
    """Train the spot network on a training set; call once in every process of the job.

    Parameters
    ----------
    config : Config
        ``model`` and ``train`` sections are used; ``optics`` and ``detector`` go into the model's
        metadata.
    data : path
        Training-set Zarr store.
    ckpt_dir : path
        Output directory: checkpoint.pt, metrics.csv, steps.csv, curves.png, model.pt.
    resume : bool
        Continue from ``ckpt_dir/checkpoint.pt`` if it exists and was made with the same model,
        train config, number of processes and training set; otherwise train from the start.
    max_steps : int, optional
        Stop after this global step with a checkpoint, as if interrupted (tests, benchmarks).
    progress : bool
        Show a progress bar on rank 0.

    Returns
    -------
    dict or None
        On rank 0 the metadata of the exported model (None when stopped by ``max_steps``); None
        on other ranks.

    Raises
    ------
    StemstrainInputError
        If the training set does not fit the config (pattern size, calibration).
    """
    rank, world, local_rank, local_world = _environment()
    device = _setup(rank, world, local_rank, local_world)
    try:
        return _train(config, Path(data), Path(ckpt_dir), resume, max_steps, progress, device, rank, world)
    finally:
        dist.destroy_process_group()


def _train(config, data, ckpt_dir, resume, max_steps, progress, device, rank, world) -> dict | None:
    train_config = config.train
    started = time.perf_counter()
    if train_config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    n_patterns, pixels = check_training_set(data, config)
    dataset = TrainingSet(data, train_config.cache_mb)
    train_indices, val_indices = split_indices(
        dataset.labels("strain"), n_patterns, train_config.val_fraction, train_config.seed
    )
    autocast_dtype = resolve_precision(train_config.precision, device)
    # One rank reads the whole store for the hash; the others get it by broadcast.
    fingerprint = [data_hash(data) if rank == 0 else None]
    dist.broadcast_object_list(fingerprint, src=0)
    fingerprint = fingerprint[0]

    torch.manual_seed(train_config.seed)
    model = UNet(config.model)
    _init_mask_prior(model, dataset, train_indices)
    model = model.to(device).to(memory_format=torch.channels_last)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    sampler = DistributedSampler(train_indices, num_replicas=world, rank=rank, shuffle=True, seed=train_config.seed)
    steps_per_epoch = math.ceil(len(sampler) / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    scheduler = _scheduler(optimizer, train_config, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    checkpoint_path = ckpt_dir / CHECKPOINT
    identity = {"model": config.model.model_dump(), "train": _resumable(train_config), "world_size": world}
    step = 0
    # Per-epoch sums of (loss, bce, mse, patterns), and the seconds spent on training steps; a
    # checkpoint inside an epoch carries them (summed over ranks) so the epoch's row is exact.
    sums = torch.zeros(4, dtype=torch.float64)
    train_seconds = 0.0
    state = (
        torch.load(checkpoint_path, map_location=device, weights_only=False)
        if resume and checkpoint_path.is_file()
        else None
    )
    if state is not None and (reason := _why_not_resumable(state, identity, fingerprint)):
        # The workflow always asks to resume; after a change of config or data it must retrain.
        if rank == 0:
            print(f"stemstrain train: not resuming {checkpoint_path}: {reason}; training from the start")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        if rank == 0:
            sums, train_seconds = state["epoch_sums"].cpu(), state["epoch_seconds"]
    metrics = _read_csv(ckpt_dir / METRICS, step) if rank == 0 and step else []
    step_rows = _read_csv(ckpt_dir / STEPS, step) if rank == 0 and step else []
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, METRICS, STEPS, CURVES, MODEL):
            discard_temporaries(ckpt_dir / name)  # a killed run's half-written files
        print(f"stemstrain train: {world} process(es) on {device.type}, precision {autocast_dtype or 'fp32'}")
        print(
            f"  data {data}: {n_patterns} patterns of {pixels}² px, {len(train_indices)} train / {len(val_indices)} val"
        )
        print(f"  model {config.model.model_dump()}  train {train_config.model_dump()}")
        print(
            f"  {steps_per_epoch} steps per epoch, {total_steps} steps" + (f", resuming at step {step}" if step else "")
        )

    def save_checkpoint(partial_sums: torch.Tensor, partial_seconds: float):
        partial_sums = _summed(partial_sums, device)  # every rank checkpoints at the same steps
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": step // steps_per_epoch,
            "step": step,
            "config": config.model_dump(),
            "identity": identity,
            "data_hash": fingerprint,
            "epoch_sums": partial_sums,
            "epoch_seconds": partial_seconds,
        }
        # The logs first: a run killed between the two resumes from the previous checkpoint and
        # keeps only the rows up to it, so the logs never miss a step of the checkpoint.
        _rewrite_csv(ckpt_dir / METRICS, METRIC_FIELDS, metrics)
        _rewrite_csv(ckpt_dir / STEPS, STEP_FIELDS, step_rows)
        with atomic_output(checkpoint_path) as tmp:
            torch.save(state, tmp)

    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        # In a log file (Snakemake, Slurm) a line every 30 s instead of a redraw per step.
        interval = 0.1 if sys.stderr.isatty() else 30.0
        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=interval)
    ddp.train()
    stopped = False
    while step < total_steps and not stopped:
        epoch, first_batch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        order = train_indices[list(sampler)]
        batches = [order[i : i + train_config.batch_size] for i in range(0, len(order), train_config.batch_size)]
        loader = DataLoader(
            dataset,
            batch_size=None,
            sampler=batches[first_batch:],
            num_workers=train_config.num_workers,
            pin_memory=device.type == "cuda",
        )
        resumed_at = time.perf_counter() - train_seconds
        for inputs, targets in loader:
            generator = _step_generator(train_config.seed, step, rank, device)
            inputs = inputs.to(device, non_blocking=True)
            targets = normalise_target(targets.to(device, non_blocking=True), train_config.target_power)
            inputs, targets = augment_batch(inputs, targets, train_config.augment, generator)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                outputs = ddp(inputs)
            loss = spot_loss(outputs, targets, train_config.gamma)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss.total).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            values = [loss.total.item(), loss.bce.item(), loss.mse.item()]
            sums += torch.tensor([*(v * len(inputs) for v in values), len(inputs)], dtype=torch.float64)
            if rank == 0:
                step_rows.append(dict(zip(STEP_FIELDS, [step, epoch, lr, *values], strict=True)))
                if bar is not None:
                    bar.update()
                    bar.set_postfix(loss=f"{values[0]:.4f}", bce=f"{values[1]:.4f}", mse=f"{values[2]:.5f}")
            if step % steps_per_epoch == 0:
                train_seconds = time.perf_counter() - resumed_at
                sums = _summed(sums, device)
                row = {
                    "epoch": epoch,
                    "step": step,
                    "lr": lr,
                    "train_loss": (sums[0] / sums[3]).item(),
                    "train_bce": (sums[1] / sums[3]).item(),
                    "train_mse": (sums[2] / sums[3]).item(),
                    "samples_per_s": sums[3].item() / train_seconds,
                }
                # Each rank's BatchNorm statistics saw its own last batch; rank 0's are the model's.
                # Validation runs the bare module: a DDP forward is a collective, and the ranks'
                # validation shares may differ in their number of batches.
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
                if len(val_indices):
                    row |= _validate(model, dataset, val_indices, train_config, autocast_dtype, device, rank, world)
                row["elapsed_s"] = time.perf_counter() - started
                metrics.append(row)
                if rank == 0:
                    summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
                    (bar.write if bar is not None else print)(f"epoch {epoch}: {summary}")
                sums, train_seconds = torch.zeros_like(sums), 0.0
                save_checkpoint(sums, train_seconds)
                stopped = step == max_steps
                break  # a fresh loader for the next epoch
            if step == max_steps or (train_config.checkpoint_every and step % train_config.checkpoint_every == 0):
                save_checkpoint(sums, time.perf_counter() - resumed_at)
            if step == max_steps:
                stopped = True
                break
    if bar is not None:
        bar.close()
    checksums: list[str] = [""] * world
    dist.all_gather_object(checksums, _parameter_checksum(model))
    if stopped or rank != 0:
        return None
    if len(set(checksums)) != 1:
        raise RuntimeError(f"parameters differ between ranks after training: {checksums}")
    plot_curves(metrics, step_rows, ckpt_dir / CURVES)
    metadata = {
        "pixels": pixels,
        "k_sampling": config.detector.k_sampling,
        "energy_eV": config.optics.energy_eV,
        "semiangle_mrad": config.optics.semiangle_mrad,
        "target_power": train_config.target_power,
        "config": config.model_dump(mode="json"),
        "data_hash": fingerprint,
        "data_path": str(Path(data).resolve()),
        "steps": step,
        "world_size": world,
        "train_patterns": len(train_indices),
        "val_patterns": len(val_indices),
        "rank_parameter_checksums": checksums,
        "validation": {k: v for k, v in (metrics[-1] if metrics else {}).items() if k.startswith("val_")},
    }
    export_model(model, ckpt_dir / MODEL, metadata)
    print(f"wrote {ckpt_dir / MODEL} ({time.perf_counter() - started:.0f} s)")
    return metadata


def _resumable(train: TrainConfig) -> dict:
    """Options that must not change between a checkpoint and its resumption."""
    return train.model_dump(exclude={"num_workers", "cache_mb", "checkpoint_every"})


def _why_not_resumable(state: dict, identity: dict, fingerprint: str) -> str | None:
    for key, value in identity.items():
        if state["identity"].get(key) != value:
            return f"it was made with another {key} ({state['identity'].get(key)}, now {value})"
    if state["data_hash"] != fingerprint:
        return "it was made on another training set (data hash differs)"
    return None
