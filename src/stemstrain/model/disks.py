"""Disk-centre correction: a small network that moves each template-placed disk towards its true centre.

The template read-out (:class:`~stemstrain.detect.bragg.TemplateRefiner`) places each disk where the
probe template, tilted by a plane, fits best. Dynamical scattering leaves structure inside a disk (a
bright crescent, a dark centre) that no plane describes, and the fit is biased by it: on simulated
training patterns the median distance from the fitted to the true disk centre is 0.17 px at 1e6 e-
(``bench/disk_corrector.py``). This network reads a patch of the raw pattern around the fitted
position, sampled in units of the disk radius, and predicts the remaining offset to the true centre.
It learns with a random symmetry of the pixel grid (90° turns and mirrors) per batch, so a turned
crystal gets the turned correction, nearly: on the validation set of disks-v1 the correction of a
patch turned by 90° differs from the turned correction by 0.03 px (median), against corrections of
0.11 px. It runs once per disk. Averaging its prediction over the 8 symmetries made it exactly
equivariant at 8 times the cost and did not change its accuracy (averaged against one pass:
validation median 0.109 against 0.111 px at 1e6 e-; uniform series static 1e6 e- 3.46 against
3.56e-4, 4 frozen phonons 8.65 against 8.64, 1e4 e- 15.06 against 15.08; models/disks/disks-v1.md).

A correction file holds the weights and a ``gain`` (the fraction of the predicted offset applied),
chosen on the uniform series (``bench/uniform_series.py``), not on the accuracy suite.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stemstrain.errors import StemstrainInputError
from stemstrain.io import atomic_output
from stemstrain.runtime import autocast

__all__ = [
    "MATRICES",
    "PATCH",
    "RADIUS_SCALE",
    "REACH",
    "DiskCorrector",
    "correct_positions",
    "disk_patches",
    "grid_permutations",
    "load_disk_corrector",
    "save_disk_corrector",
]

PATCH = 13
"""Samples per side of a disk's patch (a corrector file records its own: ``patch``; absent, this)."""
REACH = 1.6
"""Half-width of the patch [disk radii]."""
RADIUS_SCALE = 3.0
"""The disk radius enters the network divided by this [px] (second of :func:`disk_patches`' scalars)."""
FORMAT = "stemstrain-disk-corrector"
SHIPPED_CORRECTORS = Path(__file__).resolve().parents[3] / "models" / "disks"
"""The shipped correctors, beside the shipped networks (models/ at the top of the source tree)."""

MATRICES = torch.tensor(
    [
        ((1, 0), (0, 1)), ((0, -1), (1, 0)), ((-1, 0), (0, -1)), ((0, 1), (-1, 0)),
        ((-1, 0), (0, 1)), ((1, 0), (0, -1)), ((0, 1), (1, 0)), ((0, -1), (-1, 0)),
    ],
    dtype=torch.float32,
)  # fmt: skip
"""The 8 symmetries of the pixel grid (8, 2, 2), on (x, y)."""


@functools.cache
def grid_permutations(patch: int = PATCH) -> torch.Tensor:
    """Patch permutations (8, patch²) of the symmetries :data:`MATRICES`.

    Permutation k gathers the patch turned by matrix T_k: its value at offset v is the old value at T_k⁻¹ v.
    """
    centre = patch // 2
    offsets = np.stack(np.meshgrid(np.arange(patch) - centre, np.arange(patch) - centre), -1).reshape(-1, 2)
    permutations = []
    for matrix in MATRICES.numpy():
        source = offsets @ np.linalg.inv(matrix.astype(float)).T  # (x, y) offsets, rows of T⁻¹ v
        source = np.rint(source).astype(int) + centre
        permutations.append(source[:, 1] * patch + source[:, 0])
    return torch.as_tensor(np.stack(permutations))


class DiskCorrector(nn.Module):
    """Offset (x, y) [px] from a disk's fitted position to its centre, from its normalised patch.

    Parameters
    ----------
    width : int
        Channels of the first convolutions.
    patch : int
        Samples per side of its patches (:func:`disk_patches`).
    """

    def __init__(self, width: int = 32, patch: int = PATCH):
        super().__init__()
        self.width, self.patch = int(width), int(patch)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(3),
        )
        self.head = nn.Sequential(nn.Linear(2 * width * 9 + 2, 128), nn.ReLU(), nn.Linear(128, 2))

    @property
    def exportable(self) -> bool:
        """Whether ONNX can take it: its adaptive pooling must reduce the pooled patch (patch // 2) by a whole
        factor to 3 (13 x 13 patches: 6 -> 3; not 9 x 9: 4 -> 3)."""
        return (self.patch // 2) % 3 == 0

    def forward(self, patches: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """Offsets (n, 2) [px] of patches (n, patch²) with their scalars (n, 2) (:func:`disk_patches`)."""
        # reshape with the batch's own length (not -1): the ONNX export keeps the patch's shape
        images = patches.reshape(patches.shape[0], 1, self.patch, self.patch)
        images = images.contiguous(memory_format=torch.channels_last)
        found = self.features(images).flatten(1)
        return self.head(torch.cat([found, scalars], dim=1))


def disk_patches(
    patterns: np.ndarray, positions: np.ndarray, radius_px: float, patch: int = PATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of the raw patterns around disk positions, in units of the disk radius.

    Parameters
    ----------
    patterns : ndarray (n, k_y, k_x)
        Patterns [counts].
    positions : ndarray (n, m, 2)
        Disk positions (x, y) [px]; NaN rows give patches of zeros.
    radius_px : float
        Disk radius [px].
    patch : int
        Samples per side of a patch.

    Returns
    -------
    patches : Tensor (n·m, patch²)
        Bilinear samples on a patch² grid over ±REACH radii, divided by the mean of the central 5×5
        samples (at least 1 count).
    scalars : Tensor (n·m, 2)
        log10 of that mean [counts] and the disk radius / RADIUS_SCALE [px].
    """
    n, m, _ = positions.shape
    height, width = patterns.shape[-2:]
    start = torch.as_tensor(np.nan_to_num(positions), dtype=torch.float32)
    grid = torch.as_tensor(np.linspace(-REACH, REACH, patch) * radius_px, dtype=torch.float32)
    x = start[..., 0, None, None] + grid[None, None, None, :]
    y = start[..., 1, None, None] + grid[None, None, :, None]
    x, y = torch.broadcast_tensors(x, y)
    # grid_sample's coordinates with align_corners=True: -1 and 1 are the first and last pixel centres.
    where = torch.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], dim=-1).reshape(n, m * patch, patch, 2)
    images = torch.as_tensor(np.asarray(patterns, dtype=np.float32))[:, None]
    patches = nn.functional.grid_sample(images, where, mode="bilinear", align_corners=True).reshape(n * m, -1)
    inner = slice(patch // 2 - 2, patch // 2 + 3)
    level = patches.reshape(-1, patch, patch)[:, inner, inner].mean(dim=(1, 2)).clamp_min(1.0)
    scalars = torch.stack([torch.log10(level), torch.full_like(level, radius_px / RADIUS_SCALE)], dim=1)
    return patches / level[:, None], scalars


def correct_positions(
    corrector: DiskCorrector,
    patterns: np.ndarray,
    positions: np.ndarray,
    radius_px: float,
    gain: float,
    precision: str = "fp32",
    run=None,
) -> np.ndarray:
    """Disk positions (n, m, 2) [px] moved by ``gain`` times the corrector's offsets; NaN rows stay NaN.

    The corrector runs on the CPU in ``precision`` (resolved, :func:`stemstrain.runtime.resolve_precision`),
    by ``run`` where given (the corrector in ONNX Runtime, :class:`~stemstrain.runtime.OnnxNetwork`, fp32).
    In bf16 it ran 2.2x faster than in fp32 on 2 Xeon cores with AMX, its offsets within 0.001 px
    (median; 0.006 px at most) of fp32's on the 21 214 validation disks of disks-v1.
    """
    patches, scalars = disk_patches(patterns, positions, radius_px, corrector.patch)
    # Only found disks go through the network: the NaN padding of a batch's spot lists would cost as much.
    found = torch.as_tensor(np.isfinite(positions).all(axis=-1).reshape(-1))
    offsets = torch.zeros(len(found), 2, dtype=torch.float64)
    with torch.inference_mode(), autocast("cpu", precision):
        offsets[found] = (run or corrector)(patches[found], scalars[found]).double()
    return positions + gain * offsets.numpy().reshape(positions.shape)


def save_disk_corrector(corrector: DiskCorrector, path: str | Path, metadata: dict) -> Path:
    """Write the corrector (weights, width, patch size, ``metadata`` with its ``gain``) atomically."""
    if "gain" not in metadata:
        raise StemstrainInputError("disk corrector metadata needs its 'gain' (fraction of the offset applied)")
    path = Path(path)
    with atomic_output(path) as tmp:
        shape = {"width": corrector.width, "patch": corrector.patch}
        torch.save({"format": FORMAT, **shape, "state": corrector.state_dict(), **metadata}, tmp)
    return path


def load_disk_corrector(path: str | Path) -> tuple[DiskCorrector, dict]:
    """The corrector of a file written by :func:`save_disk_corrector` and its metadata.

    Parameters
    ----------
    path : path or str
        The file, or the name of a shipped corrector (``disks-v1``: ``models/disks/disks-v1.pt``).

    Raises
    ------
    StemstrainInputError
        If the file is missing or is not a disk corrector.
    """
    path = Path(path)
    shipped = SHIPPED_CORRECTORS / f"{path.name}.pt"
    if not path.is_file() and path.suffix != ".pt" and shipped.is_file():
        path = shipped
    if not path.is_file():
        names = sorted(p.stem for p in SHIPPED_CORRECTORS.glob("*.pt"))
        raise StemstrainInputError(
            f"option disk_correction: file {path} does not exist (shipped correctors, by name: {', '.join(names)})"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file
        raise StemstrainInputError(f"option disk_correction: {path} is not a readable torch file ({err})") from err
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise StemstrainInputError(f"option disk_correction: {path} is not a disk corrector (format {FORMAT!r})")
    corrector = DiskCorrector(saved["width"], saved.get("patch", PATCH))
    corrector.load_state_dict(saved["state"])
    metadata = {key: value for key, value in saved.items() if key not in ("format", "width", "patch", "state")}
    # channels_last with in-place ReLUs: 2.1x faster on 2 Xeon cores (5120 disks: 214 -> 452 patterns of
    # 40 disks per second), the same offsets within 3e-7 px.
    return corrector.to(memory_format=torch.channels_last).eval(), metadata
