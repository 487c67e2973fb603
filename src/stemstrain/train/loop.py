"""The training loop: steps of a DDP model, validation each epoch, checkpoints, the exported model.

Each process reads its DistributedSampler share of the Zarr training set batch by batch
(:mod:`~stemstrain.train.data`), augments it on the fly (:mod:`~stemstrain.train.augment`) and steps
a DDP model (:mod:`~stemstrain.train.ddp`). Rank 0 alone logs and writes: ``checkpoint.pt``
(atomic), ``metrics.csv`` (per epoch), ``steps.csv`` (per step), ``curves.png``
(:mod:`~stemstrain.train.logs`) and the exported ``model.pt``.

Every random draw is a function of (seed, step, rank), and the data order of (seed, epoch), so a
run resumed from a checkpoint (taken at any step) continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from stemstrain.config import Config, TrainConfig
from stemstrain.errors import StemstrainInputError
from stemstrain.io import atomic_output, discard_temporaries
from stemstrain.model import UNet, export_model, load_model, resolve_model, spot_loss
from stemstrain.runtime import autocast, resolve_precision
from stemstrain.train.augment import Batch, augment_batch
from stemstrain.train.data import TrainingSet, check_training_set, data_hash, split_indices, trained_on
from stemstrain.train.ddp import broadcast_object, environment, parameter_checksum, setup, summed
from stemstrain.train.logs import CURVES, METRIC_FIELDS, METRICS, STEP_FIELDS, STEPS, plot_curves, read_csv, rewrite_csv
from stemstrain.train.metrics import validate

__all__ = ["CHECKPOINT", "MODEL", "train"]

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def train(
    config: Config,
    data: str | Path,
    ckpt_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    check_data: bool = True,
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
    check_data : bool
        Check the training set against the config first (one pass over it, on rank 0); False
        where the caller checked it (``stemstrain train`` before it starts torchrun).

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
    rank, world, local_rank, local_world = environment()
    device = setup(rank, world, local_rank, local_world)
    started = time.perf_counter()
    # Process-wide torch settings this run changes, put back when it ends (a caller such as a
    # notebook or a test session goes on in the same process).
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    run = None
    try:
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        if check_data:
            _check_on_rank_0(data, config, rank)
        run = _Training(config, Path(data), Path(ckpt_dir), device, rank, world)
        run.restore(resume)
        run.announce()
        stopped = run.fit(max_steps, progress, started)
        checksums = run.gather_checksums()
        if stopped or rank != 0:
            return None
        return run.export(checksums, started)
    finally:
        # The run sits in a reference cycle, and its DDP reducer holds the process group. Left to a later
        # garbage collection, the group's gloo threads were joined inside the next train() of the same
        # process, with a new group up, and hung there (seen once in CI). Free it here, before the group goes.
        run = None
        gc.collect()
        dist.destroy_process_group()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(threads)


def _check_on_rank_0(data: Path, config: Config, rank: int) -> None:
    """One pass over the training set, on rank 0; its error is raised on every rank."""
    problem = None
    if rank == 0:
        try:
            check_training_set(data, config)
        except StemstrainInputError as err:
            problem = str(err)
    problem = broadcast_object(problem)
    if problem is not None:
        raise StemstrainInputError(problem)


class _Training:
    """One process of a training run: its data, model, optimizer and schedule, and where it stands.

    ``sums`` holds the epoch's (loss, bce, mse, offset, patterns) so far and ``train_seconds`` the time
    spent on its steps; a checkpoint inside an epoch carries them (summed over ranks), so that
    the epoch's row of a resumed run is exact.
    """

    def __init__(self, config: Config, data: Path, ckpt_dir: Path, device: torch.device, rank: int, world: int):
        settings = config.train
        self.config, self.settings, self.data, self.ckpt_dir = config, settings, data, ckpt_dir
        self.device, self.rank, self.world = device, rank, world
        self.dataset = TrainingSet(data, settings.cache_mb)
        self.train_indices, self.val_indices = split_indices(
            self.dataset.labels("strain"), len(self.dataset), settings.val_fraction, settings.seed
        )
        self.precision = resolve_precision(settings.precision, device, "train.precision")
        # One rank reads the whole store for the hash; the others get it by broadcast.
        self.fingerprint = broadcast_object(data_hash(data) if rank == 0 else None)

        if config.model.offsets and not self.dataset.has_spots:
            raise StemstrainInputError(
                f"{data}: model.offsets needs the target spot lists 'spots' and 'spot_amplitudes', which this "
                "training set lacks (simulate it again with this version of `stemstrain simulate`)"
            )
        torch.manual_seed(settings.seed)
        model = UNet(config.model)
        self.init_model = _start_weights(model, config, self.dataset, self.train_indices)
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.sampler = DistributedSampler(
            self.train_indices, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / settings.batch_size)
        self.total_steps = self.steps_per_epoch * settings.epochs
        self.scheduler = _scheduler(self.optimizer, settings, self.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.identity = {"model": config.model.model_dump(), "train": _resumable(settings), "world_size": world}
        self.step = 0
        self.sums = torch.zeros(5, dtype=torch.float64)
        self.train_seconds = 0.0
        self.metrics: list[dict] = []
        self.step_rows: list[dict] = []

    # ------------------------------------------------------------ start

    def restore(self, resume: bool) -> None:
        """Continue from the checkpoint when asked and it was made by the same run."""
        path = self.ckpt_dir / CHECKPOINT
        state = torch.load(path, map_location=self.device, weights_only=False) if resume and path.is_file() else None
        if state is not None and (reason := _why_not_resumable(state, self.identity, self.fingerprint)):
            # The workflow always asks to resume; after a change of config or data it must retrain.
            if self.rank == 0:
                print(f"stemstrain train: not resuming {path}: {reason}; training from the start")
            state = None
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self.rank == 0:
            self.sums, self.train_seconds = state["epoch_sums"].cpu(), state["epoch_seconds"]
            self.metrics = read_csv(self.ckpt_dir / METRICS, self.step)
            self.step_rows = read_csv(self.ckpt_dir / STEPS, self.step)

    def announce(self) -> None:
        """Rank 0: make the output directory, drop a killed run's half-written files, print the run."""
        if self.rank != 0:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, METRICS, STEPS, CURVES, MODEL):
            discard_temporaries(self.ckpt_dir / name)
        n_patterns, pixels = self.dataset.shape[:2]
        print(f"stemstrain train: {self.world} process(es) on {self.device.type}, precision {self.precision}")
        print(
            f"  data {self.data}: {n_patterns} patterns of {pixels}² px, "
            f"{len(self.train_indices)} train / {len(self.val_indices)} val"
        )
        print(f"  model {self.config.model.model_dump()}  train {self.settings.model_dump()}")
        resuming = f", resuming at step {self.step}" if self.step else ""
        print(f"  {self.steps_per_epoch} steps per epoch, {self.total_steps} steps{resuming}")

    # ------------------------------------------------------------ steps

    def fit(self, max_steps: int | None, progress: bool, started: float) -> bool:
        """Train epoch by epoch to the end, or to ``max_steps``; True when stopped there."""
        bar = None
        if self.rank == 0 and progress:
            from tqdm import tqdm

            # In a log file (Snakemake, Slurm) a line every 30 s instead of a redraw per step.
            interval = 0.1 if sys.stderr.isatty() else 30.0
            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=interval)
        self.ddp.train()
        stopped = False
        while self.step < self.total_steps and not stopped:
            stopped = self._epoch(max_steps, bar, started)
        if bar is not None:
            bar.close()
        return stopped

    def _epoch(self, max_steps: int | None, bar, started: float) -> bool:
        """The rest of the current epoch; True when stopped at ``max_steps``."""
        settings = self.settings
        epoch, first_batch = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        order = self.train_indices[list(self.sampler)]
        batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            sampler=batches[first_batch:],
            num_workers=settings.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        resumed_at = time.perf_counter() - self.train_seconds
        for batch in loader:
            lr, values = self._step(batch)
            if self.rank == 0:
                self.step_rows.append(dict(zip(STEP_FIELDS, [self.step, epoch, lr, *values], strict=True)))
                if bar is not None:
                    bar.update()
                    bar.set_postfix(loss=f"{values[0]:.4f}", bce=f"{values[1]:.4f}", mse=f"{values[2]:.5f}")
            if self.step % self.steps_per_epoch == 0:
                self.train_seconds = time.perf_counter() - resumed_at
                self._end_epoch(epoch, lr, bar, started)
                return self.step == max_steps  # a fresh loader for the next epoch
            if self.step == max_steps or (settings.checkpoint_every and self.step % settings.checkpoint_every == 0):
                self.checkpoint(self.sums, time.perf_counter() - resumed_at)
            if self.step == max_steps:
                return True
        return False

    def _step(self, batch: Batch) -> tuple[float, list[float]]:
        """One optimizer step on a batch; returns the learning rate it used and (loss, bce, mse, offset)."""
        settings = self.settings
        generator = _step_generator(settings.seed, self.step, self.rank, self.device)
        inputs, targets = augment_batch(
            batch.to(self.device), settings.augment, generator, settings.target_power, self.dataset.target_sigma_px
        )
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            outputs = self.ddp(inputs)
        loss = spot_loss(
            outputs, targets.image, settings.gamma, targets.offsets, targets.offset_mask, settings.offset_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        values = [loss.total.item(), loss.bce.item(), loss.mse.item(), loss.offset.item()]
        self.sums += torch.tensor([*(v * len(inputs) for v in values), len(inputs)], dtype=torch.float64)
        return lr, values

    def _end_epoch(self, epoch: int, lr: float, bar, started: float) -> None:
        """The epoch's row of metrics.csv (training means, validation), then a checkpoint."""
        sums = summed(self.sums, self.device)
        row = {
            "epoch": epoch,
            "step": self.step,
            "lr": lr,
            "train_loss": (sums[0] / sums[4]).item(),
            "train_bce": (sums[1] / sums[4]).item(),
            "train_mse": (sums[2] / sums[4]).item(),
            "train_offset": (sums[3] / sums[4]).item(),
            "samples_per_s": sums[4].item() / self.train_seconds,
        }
        # Each rank's BatchNorm statistics saw its own last batch; rank 0's are the model's.
        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)
        if len(self.val_indices):
            row |= validate(
                self.model,
                self.dataset,
                self.val_indices,
                self.settings,
                self.precision,
                self.device,
                self.rank,
                self.world,
            )
        row["elapsed_s"] = time.perf_counter() - started
        self.metrics.append(row)
        if self.rank == 0:
            summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
            (bar.write if bar is not None else print)(f"epoch {epoch}: {summary}")
        self.sums, self.train_seconds = torch.zeros_like(sums), 0.0
        self.checkpoint(self.sums, self.train_seconds)

    # ------------------------------------------------------------ files

    def checkpoint(self, epoch_sums: torch.Tensor, epoch_seconds: float) -> None:
        """Rank 0 writes the logs, then the checkpoint (every rank checkpoints at the same steps)."""
        epoch_sums = summed(epoch_sums, self.device)
        if self.rank != 0:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.step // self.steps_per_epoch,
            "step": self.step,
            "config": self.config.model_dump(),
            "identity": self.identity,
            "data_hash": self.fingerprint,
            "epoch_sums": epoch_sums,
            "epoch_seconds": epoch_seconds,
        }
        # The logs first: a run killed between the two resumes from the previous checkpoint and
        # keeps only the rows up to it, so the logs never miss a step of the checkpoint.
        rewrite_csv(self.ckpt_dir / METRICS, METRIC_FIELDS, self.metrics)
        rewrite_csv(self.ckpt_dir / STEPS, STEP_FIELDS, self.step_rows)
        with atomic_output(self.ckpt_dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def gather_checksums(self) -> list[str]:
        """Every rank's parameter checksum (a collective: all ranks call it)."""
        checksums: list[str] = [""] * self.world
        dist.all_gather_object(checksums, parameter_checksum(self.model))
        return checksums

    def export(self, checksums: list[str], started: float) -> dict:
        """Rank 0 checks that the ranks agree, plots the curves and exports model.pt; returns its metadata."""
        if len(set(checksums)) != 1:
            raise RuntimeError(f"parameters differ between ranks after training: {checksums}")
        plot_curves(self.metrics, self.step_rows, self.ckpt_dir / CURVES)
        validation = self.metrics[-1] if self.metrics else {}
        metadata = {
            "pixels": int(self.dataset.shape[1]),
            "k_sampling": self.config.detector.k_sampling,
            "energy_eV": self.config.optics.energy_eV,
            "semiangle_mrad": self.config.optics.semiangle_mrad,
            "trained_on": trained_on(self.dataset),
            "target_power": self.settings.target_power,
            "config": self.config.model_dump(mode="json"),
            "data_hash": self.fingerprint,
            "data_path": str(self.data.resolve()),
            "steps": self.step,
            "world_size": self.world,
            "train_patterns": len(self.train_indices),
            "val_patterns": len(self.val_indices),
            "rank_parameter_checksums": checksums,
            "validation": {k: v for k, v in validation.items() if k.startswith("val_")},
            "init_model": self.init_model,
        }
        export_model(self.model, self.ckpt_dir / MODEL, metadata)
        print(f"wrote {self.ckpt_dir / MODEL} ({time.perf_counter() - started:.0f} s)")
        return metadata


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) * 4099 + rank)
    return generator


def _start_weights(model: UNet, config: Config, dataset: TrainingSet, indices: np.ndarray) -> dict | None:
    """Load ``train.init_model`` into the network (fine-tuning), else start the mask logit at its prior.

    Returns
    -------
    dict or None
        The starting model's file, the hash of the training set it was made on and that set's
        ranges (``trained_on``), for the exported model's metadata; None from random weights.

    Raises
    ------
    StemstrainInputError
        If the starting model cannot be found or read, or its network or calibration differ from
        the config's.
    """
    if config.train.init_model is None:
        _init_mask_prior(model, dataset, indices)
        return None
    path = resolve_model(config.train.init_model)
    start, metadata = load_model(path)
    if start.config != config.model:
        raise StemstrainInputError(
            f"train.init_model: {path} is a network {start.config.model_dump()}, but the config's model section "
            f"is {config.model.model_dump()}; make them equal to fine-tune it"
        )
    if metadata["pixels"] != dataset.shape[1] or not math.isclose(metadata["k_sampling"], config.detector.k_sampling):
        raise StemstrainInputError(
            f"train.init_model: {path} was trained for {metadata['pixels']} px at {metadata['k_sampling']} 1/angstrom "
            f"per pixel, the training set has {dataset.shape[1]} px and detector.k_sampling is "
            f"{config.detector.k_sampling}"
        )
    model.load_state_dict(start.state_dict())
    return {"path": str(path), "data_hash": metadata["data_hash"], "trained_on": metadata.get("trained_on")}


def _init_mask_prior(model: UNet, dataset: TrainingSet, indices: np.ndarray, n: int = 64) -> None:
    """Start the mask logit at the spot-pixel fraction of the training set instead of p = 0.5.

    Spots cover a few to twenty per cent of a pattern; from the prior, the first steps learn
    where the spots are instead of that most pixels are background.
    """
    fraction = float(np.mean(dataset.read("targets", np.sort(indices[:n])) > 0))
    fraction = min(max(fraction, 1e-4), 0.5)
    with torch.no_grad():
        model.head.bias[0] = math.log(fraction / (1 - fraction))


def _scheduler(optimizer, train: TrainConfig, total_steps: int):
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=total_steps, pct_start=min(0.3, max(0.05, 50 / total_steps))
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


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
