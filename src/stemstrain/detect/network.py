"""The network as a spot detector: patterns -> network -> spots (1/angstrom), at the scan's calibration.

Patterns are resampled from the scan's k coords to the model's calibration when they differ. The
network runs in inference mode with BatchNorm folded into its convolutions, in the precision of
:func:`stemstrain.runtime.resolve_precision`, by the engine of :func:`stemstrain.runtime.resolve_engine`:
ONNX Runtime for fp32 on a CPU, else torch (channels_last, optionally under ``torch.compile``).
Spots are read out of its output by :func:`stemstrain.model.encoding.decode_spots`, as validation
does during training, with each spot's counting noise in its weight when the scan records its beam
energy and convergence semiangle.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from stemstrain.config import REFINEMENTS
from stemstrain.detect.bragg import TILT_PRIOR, TemplateRefiner, disk_radius, probe_template
from stemstrain.errors import StemstrainInputError
from stemstrain.io import at_calibration, k_calibration
from stemstrain.model.disks import correct_positions, load_disk_corrector
from stemstrain.model.encoding import decode_spots
from stemstrain.runtime import (
    OnnxNetwork,
    Timings,
    autocast,
    default_batch_size,
    fold_batchnorm,
    network_chunk,
    resolve_device,
    resolve_engine,
    resolve_precision,
)

__all__ = ["CALIBRATION_FACTOR", "UNetDetector", "model_hash"]

# Data sampled this many times coarser than the model's calibration are refused unless overridden.
CALIBRATION_FACTOR = 1.5

# Template sources measured on the scan: the template read-out fits each disk's tilt with them.
MEASURED_TEMPLATES = ("probe", "mean")
DEFAULT_DISK_CORRECTION = "disks-offsets-v1"
"""The disk correction of ``disk_correction="auto"``: the shipped corrector of the offsets read-out, width 8,
the widest that kept ``strain`` above 250 patterns/s on 2 AVX2 cores (models/disks/disks-offsets-v1.md)."""


def model_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a checkpoint file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class UNetDetector:
    """Spots from the network's output, refined to subpixel, in 1/angstrom relative to k = 0.

    Parameters
    ----------
    model : path or (torch.nn.Module, dict)
        Exported model file (``stemstrain train``) or a loaded (model, metadata) pair.
    scan : xr.Dataset
        4D data whose k coords are mapped onto the model's.
    device : {"auto", "cpu", "cuda"}
        Where the network runs.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast precision of the network (:func:`stemstrain.runtime.resolve_precision`).
    engine : {"auto", "torch", "onnxruntime"}
        What runs the network (:func:`stemstrain.runtime.resolve_engine`); ``auto``: ONNX Runtime for
        fp32 on a CPU (1.15-1.3x faster end to end on an AVX2 CPU), torch otherwise.
    compile : bool
        Compile the network with ``torch.compile`` on a GPU (pays off on long runs); ignored with a
        warning on the CPU.
    batch_size : int, optional
        Patterns per batch (network, then read-out); default 128 on CPU, 1024 on CUDA (keeps a GPU
        busy). On a CPU the network runs on at most 32 of them at a time (:func:`stemstrain.runtime.network_chunk`).
    threshold_rel, min_distance, max_peaks
        Read-out of the spots (:func:`stemstrain.model.encoding.decode_spots`); default: its own.
    allow_calibration_mismatch : bool
        Warn instead of failing when the scan's k-sampling is more than ``CALIBRATION_FACTOR``
        times coarser than the model's, or its detector reaches less than half the model's k range.
    refine : {"auto", "offsets", "template"}
        Subpixel read-out (:data:`stemstrain.config.REFINEMENTS`); ``auto``: ``template`` when the scan
        records its beam energy and semiangle and is resampled to the model's calibration, else
        ``offsets``; with a ``disk_correction``, the read-out it corrects. ``offsets``: the network's offset heads, fit
        weights 1/(σ² + r²/N).
        ``template``: the network finds, indexes and selects the spots; each is then placed at the
        maximum of the raw pattern's correlation with the probe template within ±1 px, at the scan's
        own calibration, and weighted by that correlation's height, as bragg weights its disks. Needs
        the scan's ``energy_eV`` and ``semiangle_mrad``.
    template : {"auto", "probe", "simulated", "mean"}
        Probe template of ``refine="template"`` (:func:`~stemstrain.detect.bragg.probe_template`).
    tilt_prior : float, optional
        Prior spread of a disk's relative intensity tilt in the template read-out
        (:class:`~stemstrain.detect.bragg.TemplateRefiner`); 0: the plain correlation. Default:
        :data:`~stemstrain.detect.bragg.TILT_PRIOR` with a measured template (the scan's vacuum probe, or
        the mean central disk), 0 with the aperture disk simulated from the optics. The tilt model needs
        the disks' exact shape, blur included: a template of another shape lets the tilt mimic a shift
        (Gaussian spots narrower than the aperture disk moved by up to 1 px and fitted no lattice).
    disk_correction : path, optional
        File of a disk-centre correction (:mod:`stemstrain.model.disks`) applied after the read-out it
        was trained for (its file's ``readout``: ``template``, or ``offsets`` where it reads the network's
        input around each spot): each disk is moved by the file's gain times the offset that a small
        network reads from the disk's patch. ``refine="auto"`` takes that read-out. ``"auto"`` (default):
        :data:`DEFAULT_DISK_CORRECTION` where the read-out is the network's offsets and the scan's disks
        have a radius it learnt from, else none; ``"none"`` or None: none.
    """

    space = "reciprocal"

    def __init__(
        self,
        model,
        scan: xr.Dataset,
        device: str = "auto",
        precision: str = "auto",
        engine: str = "auto",
        compile: bool = False,
        batch_size: int | None = None,
        threshold_rel: float | None = None,
        min_distance: int | None = None,
        max_peaks: int | None = None,
        allow_calibration_mismatch: bool = False,
        refine: str = "auto",
        template: str = "auto",
        tilt_prior: float | None = None,
        disk_correction: str | Path | None = "auto",
    ):
        import torch

        from stemstrain.model import load_model

        self.device = resolve_device(device)
        precision = resolve_precision(precision, self.device)
        if isinstance(model, (str, Path)):
            self.model_hash = model_hash(model)
            network, self.metadata = load_model(model, device=self.device)
        else:
            network, self.metadata = model
            network = network.to(self.device).eval()
            self.model_hash = self.metadata.get("data_hash", "in-memory")
        self.engine = resolve_engine(engine, self.device, precision, option="option engine")
        self.pixels = int(self.metadata["pixels"])
        folded = fold_batchnorm(network)
        # The layout of the network's input: ONNX Runtime keeps its own blocked one, torch runs channels_last.
        if self.engine == "onnxruntime":
            patterns = (1, self.pixels, self.pixels)
            self.network, self._layout = OnnxNetwork(folded, {"patterns": patterns}), torch.contiguous_format
        else:
            self.network, self._layout = folded.to(memory_format=torch.channels_last), torch.channels_last
        if compile and not self.device.startswith("cuda"):
            warnings.warn(
                "option compile: ignored on the CPU, where torch.compile gained 0-3 % end to end and torch 2.13's "
                "CPU code failed on shipped networks (NaN with AVX2, a heap corruption for fast-v1 with AVX-512); "
                "the network runs eagerly",
                stacklevel=3,
            )
        elif compile:
            self.network = torch.compile(self.network)
        self.precision = precision
        self.batch_size = int(batch_size or default_batch_size(self.device))
        self._chunk = network_chunk(self.device, self.batch_size)
        readout = {"threshold_rel": threshold_rel, "min_distance": min_distance, "max_peaks": max_peaks}
        self.readout = {name: value for name, value in readout.items() if value is not None}
        self.k_sampling = float(self.metadata["k_sampling"])
        self._grid = self._resampling_grid(scan, allow_calibration_mismatch)
        energy, semiangle = scan.attrs.get("energy_eV"), scan.attrs.get("semiangle_mrad")
        radius = disk_radius(float(energy), float(semiangle)) if energy and semiangle else None  # [1/angstrom]
        self._check_optics(scan, radius)
        # The disk radius in model pixels adds each spot's counting noise to its fit weight (decode_spots);
        # a scan without its optics is fitted with the network's σ alone.
        self.disk_radius_px = None if radius is None else radius / self.k_sampling
        named = disk_correction not in (None, "none", "auto")
        corrector = load_disk_corrector(disk_correction) if named else None
        self.refine, self._refiner = self._template_refiner(
            scan,
            refine,
            template,
            radius,
            tilt_prior,
            resampled=self._grid is not None,
            corrected=None if corrector is None else corrector[1].get("readout", "template"),
        )
        self.disk_correction = None  # the correction file's name and gain, recorded in the map
        if disk_correction == "auto" and self.refine == "offsets":
            corrector, disk_correction = load_disk_corrector(DEFAULT_DISK_CORRECTION), DEFAULT_DISK_CORRECTION
        if corrector is not None:
            corrector = self._disk_corrector(*corrector, Path(disk_correction).name, radius, required=named)
        self._disks = corrector
        # the offsets read-out weighs each spot by 1/(σ² + r²/N), an inverse variance; the template by a height
        self.inverse_variance_weights = self.refine == "offsets"
        self.timings = Timings()

    def _disk_corrector(self, corrector, metadata: dict, name: str, radius: float | None, required: bool = True):
        """A disk-centre corrector (:mod:`stemstrain.model.disks`) and its file's metadata, checked against
        this scan and read-out (``name``: the file's, ``radius``: the scan's disk radius [1/angstrom]).

        Sets ``disk_correction`` (the file's name and gain, recorded in the map), the gain and the disk radius
        [px] of the patterns it reads: the scan's own for the template read-out, the model's calibration for
        the offsets read-out (the network's input). A scan without its disk radius, or with disks of a radius
        the corrector did not learn from, is refused; with ``required=False`` (the default correction) it is
        read without the correction instead (None is returned).
        """
        readout = metadata.get("readout", "template")
        if readout != self.refine:
            raise StemstrainInputError(
                f"option disk_correction: {name} corrects the {readout} read-out, but refine is {self.refine!r}; "
                f"use refine={readout!r} or 'auto'"
            )
        if radius is None:
            if not required:
                return None
            raise StemstrainInputError(
                "option disk_correction needs the scan's attributes energy_eV and semiangle_mrad (the disk radius)"
            )
        k_sampling = self._scan_k_sampling if readout == "template" else self.k_sampling
        radius_px = radius / k_sampling
        low, high = metadata.get("radius_px", (0.0, np.inf))
        if not low <= radius_px <= high:
            if not required:
                return None
            raise StemstrainInputError(
                f"option disk_correction: the scan's disks are {radius_px:.2f} px in radius; "
                f"{name} learnt from disks of {low:.2f}-{high:.2f} px"
            )
        self._disk_gain, self._disk_radius_read_px = float(metadata["gain"]), radius_px
        self.disk_correction = f"{name} (gain {self._disk_gain:g})"
        # The corrector runs on the CPU: in the network's precision there, else in the CPU's own; fp32 by
        # ONNX Runtime where the network's engine allows it: alone 2.2-2.8x faster than torch (6400 disks of
        # width 8 / 16 / 32 in 35 / 69 / 200 against 97 / 148 / 432 ms, 2 cores of an AMD EPYC with AVX2
        # only, the same offsets within 1e-7 px), in `strain`'s read-out 1.3x (0.70 against 0.91 ms per
        # pattern with width 8: the patches' sampling and the batching cost the rest; bench/infer.py).
        self._disk_precision = self.precision if self.device == "cpu" else resolve_precision("auto", "cpu")
        engine = self.engine if self.device == "cpu" else resolve_engine("auto", "cpu", self._disk_precision)
        self._disk_run = None
        if engine == "onnxruntime" and corrector.exportable:
            self._disk_run = OnnxNetwork(corrector, {"patches": (corrector.patch**2,), "scalars": (2,)})
        return corrector

    def _template_refiner(
        self,
        scan: xr.Dataset,
        refine: str,
        template: str,
        radius: float | None,
        tilt_prior: float | None,
        resampled: bool = False,
        corrected: str | None = None,
    ):
        """The read-out ``refine`` resolves to, and its template refiner at the scan's calibration (or None).

        ``resampled``: the scan is resampled to the model's calibration, which makes ``auto`` the template
        read-out (given the disk ``radius``); ``corrected``: the read-out a requested disk correction
        corrects, which ``auto`` then takes.
        """
        if refine not in REFINEMENTS:
            raise StemstrainInputError(f"option refine: expected one of {REFINEMENTS}, found {refine!r}")
        if refine == "auto":
            # The template read-out where the scan is resampled to the model's calibration (real cameras:
            # MgO, README); at the model's own calibration the network's offsets, which follow dynamical
            # disk contrast that moves a template fit (Si [110], 2x-box suite: bench/results/accuracy_box2.json).
            # A disk correction asks for the read-out it corrects.
            refine = corrected or ("template" if radius is not None and resampled else "offsets")
        self.tilt_prior = None  # the template read-out's, recorded in the map
        if refine == "offsets":
            return refine, None
        if radius is None:
            raise StemstrainInputError(
                "option refine='template' needs the scan's attributes energy_eV and semiangle_mrad (the disk radius)"
            )
        image, self.template_source = probe_template(scan, template)
        self._scan_k_sampling, self._scan_centre = k_calibration(scan)
        if tilt_prior is None:
            tilt_prior = TILT_PRIOR if self.template_source in MEASURED_TEMPLATES else 0.0
        self.tilt_prior = float(tilt_prior)
        return refine, TemplateRefiner(image, radius / self._scan_k_sampling, tilt_prior=tilt_prior)

    def _check_optics(self, scan: xr.Dataset, radius: float | None) -> None:
        """Warn when the scan's disks or beam energy lie outside what the model was trained on.

        The network works at the model's k calibration whatever the microscope; what changes with the
        optics is the disk radius α/λ [1/angstrom] (``radius``: None when the scan does not record its
        beam energy and semiangle) and, with the energy, the dynamical contrast.
        """
        trained = self.metadata.get("trained_on") or {}
        radius_range, energy_range = trained.get("disk_radius_inv_angstrom"), trained.get("energy_eV")
        if radius is None:
            return
        energy, semiangle = scan.attrs["energy_eV"], scan.attrs["semiangle_mrad"]
        problems = []
        if radius_range:
            low, high = radius_range
            if not 0.9 * low <= radius <= 1.1 * high:
                problems.append(
                    f"its disk radius α/λ = {radius:.4f} 1/angstrom ({semiangle} mrad at {float(energy) / 1e3:g} kV) "
                    f"lies outside the trained {low:.4f}-{high:.4f} 1/angstrom"
                )
        if energy_range and not energy_range[0] * 0.95 <= float(energy) <= energy_range[1] * 1.05:
            problems.append(
                f"its beam energy {float(energy) / 1e3:g} kV lies outside the trained "
                f"{energy_range[0] / 1e3:g}-{energy_range[1] / 1e3:g} kV"
            )
        if problems:
            warnings.warn(
                "the network was not trained on patterns like this scan's: " + "; ".join(problems), stacklevel=3
            )

    def _resampling_grid(self, scan: xr.Dataset, allow_mismatch: bool):
        """Sampling grid from the model's pixels to the scan's (None when they coincide)."""
        import torch

        k_sampling, (centre_y, centre_x) = k_calibration(scan)
        ratio = k_sampling / self.k_sampling
        n_y, n_x = scan.sizes["k_y"], scan.sizes["k_x"]
        # Finer data are averaged down without loss; coarser data would be interpolated up, giving
        # blurred spots the network never saw; a small detector hides most spots.
        extent = min(centre_y, n_y - 1 - centre_y, centre_x, n_x - 1 - centre_x) * k_sampling
        model_extent = (self.pixels // 2 - 1) * self.k_sampling
        problems = []
        if ratio > CALIBRATION_FACTOR:
            problems.append(
                f"scan k-sampling {k_sampling:.5g} 1/angstrom per pixel is {ratio:.3g} times coarser than the model's "
                f"{self.k_sampling:.5g}; the network never saw such patterns"
            )
        if extent < 0.5 * model_extent:
            problems.append(
                f"the scan's detector reaches |k| = {extent:.3g} 1/angstrom, less than half of the model's "
                f"{model_extent:.3g}; the network never saw such patterns"
            )
        if problems:
            message = "; ".join(problems)
            if not allow_mismatch:
                raise StemstrainInputError(message + " (pass --allow-calibration-mismatch to run anyway)")
            warnings.warn(message, stacklevel=3)
        if at_calibration(scan, self.pixels, self.k_sampling):
            return None
        half = self.pixels // 2
        k_model = (np.arange(self.pixels) - half) * self.k_sampling
        index_x = centre_x + k_model / k_sampling
        index_y = centre_y + k_model / k_sampling
        # grid_sample's normalised coordinates with align_corners=True: -1 and 1 are the centres of
        # the first and last input pixels.
        grid_x = 2 * index_x / (n_x - 1) - 1
        grid_y = 2 * index_y / (n_y - 1) - 1
        gy, gx = np.meshgrid(grid_y, grid_x, indexing="ij")
        self._intensity_scale = (self.k_sampling / k_sampling) ** 2
        return torch.as_tensor(np.stack([gx, gy], axis=-1)[None], dtype=torch.float32, device=self.device)

    def resample(self, patterns):
        """Patterns (n, H, W) at the scan's calibration -> tensor (n, 1, pixels, pixels) at the model's.

        Bilinear interpolation from the scan's k coords; intensities are scaled by the pixel-area
        ratio so that counts per pixel stay comparable. Outside the scan's detector the value is 0.
        """
        import torch
        import torch.nn.functional as F

        batch = torch.as_tensor(patterns, dtype=torch.float32, device=self.device)[:, None]
        if self._grid is None:
            return batch
        grid = self._grid.expand(len(batch), -1, -1, -1)
        return self._intensity_scale * F.grid_sample(
            batch, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )

    def predict(self, patterns: np.ndarray) -> np.ndarray:
        """Network output (n, C, pixels, pixels) float32 at the model calibration (channels: ``decode_spots``)."""
        outputs = [output for output, _, _ in self._batches(patterns)]
        return np.concatenate(outputs) if outputs else np.zeros((0, 2, self.pixels, self.pixels), np.float32)

    def _batches(self, patterns: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per batch: the network's output, its input (the patterns at the model calibration, (n, H, W))
        and the batch's patterns as given (at the scan's calibration)."""
        import torch

        cuda = self.device.startswith("cuda")
        for start in range(0, len(patterns), self.batch_size):
            given = patterns[start : start + self.batch_size]
            with self.timings.measure("network"), torch.inference_mode(), autocast(self.device, self.precision):
                batch = torch.from_numpy(np.ascontiguousarray(given, np.float32))
                if cuda:
                    # Page-locked host memory lets the copy run asynchronously to the GPU.
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                batch = self.resample(batch).contiguous(memory_format=self._layout)
                # The network on CPU-cache-sized parts (network_chunk); the output in the usual layout
                # again, so that the read-out's filters run over contiguous images.
                output = torch.cat([self.network(part) for part in batch.split(self._chunk)])
                output = output.to("cpu", torch.float32, memory_format=torch.contiguous_format).numpy()
                inputs = batch[:, 0].float().cpu().numpy()
            yield output, inputs, given

    def __call__(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Spots are read out batch by batch: only one batch of network output is held at a time.
        found = []
        for output, inputs, given in self._batches(patterns):
            with self.timings.measure("peaks"):
                if self._refiner is None:
                    spots = decode_spots(output, **self.readout, patterns=inputs, disk_radius_px=self.disk_radius_px)
                    if self._disks is not None:  # the corrector reads the network's input: model pixels
                        spots = (self._correct(inputs, spots[0]), spots[1])
                else:  # the template weights the spots: the network's σ and the disks' counts are not needed
                    positions, _ = decode_spots(output, **self.readout)
                    spots = self._refine(given, positions)
                found.append(spots)
        width = max((positions.shape[1] for positions, _ in found), default=0)
        positions = np.concatenate(
            [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=np.nan) for p, _ in found]
            or [np.full((0, 0, 2), np.nan)]
        )
        weights = np.concatenate([np.pad(w, ((0, 0), (0, width - w.shape[1]))) for _, w in found] or [np.zeros((0, 0))])
        return (positions - self.pixels // 2) * self.k_sampling, weights

    def _correct(self, patterns: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Disk positions (x, y) [px of ``patterns``] moved by the disk corrector."""
        return correct_positions(
            self._disks,
            patterns,
            positions,
            self._disk_radius_read_px,
            self._disk_gain,
            self._disk_precision,
            run=self._disk_run,
        )

    def _refine(self, patterns: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Template read-out of spots (x, y) [model px]: positions [model px] and weights relative to the strongest."""
        half = self.pixels // 2
        centre = np.array(self._scan_centre[::-1])  # (x, y) [scan px]
        scale = self.k_sampling / self._scan_k_sampling  # scan px per model px
        refined, heights = self._refiner(patterns, centre + (positions - half) * scale)
        if self._disks is not None:
            refined = self._correct(patterns, refined)
        heights = np.clip(heights, 0.0, None)  # background-subtracted counts can correlate negatively
        strongest = np.max(heights, axis=-1, keepdims=True)
        return half + (refined - centre) / scale, heights / np.where(strongest > 0, strongest, 1.0)
