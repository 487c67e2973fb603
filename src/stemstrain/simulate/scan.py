"""Strained 4D test scans with known truth: the data that evaluation and the demo run on.

A strain field (uniform, gradient, Gaussian bump, an interface with misfit, or a composite of a ramp, a bump,
a shear and a rotation) is laid over the scan and is zero in the reference region. The unstrained crystal
may be turned in-plane by ``orientation_deg``: the reference is then that rotated crystal, and the truth
is the field relative to it. Every scan position is simulated as a crystal under its local uniform
deformation ``F = R(θ)(I + ε) R(orientation)`` (a good model for a 1.5 mrad nanobeam probe, a few unit
cells wide); positions sharing one deformation are propagated together through one potential (with
frozen phonons each position has its own phonon configurations, so its own potential). The probe
sits at the position ``F⁻¹ s`` (modulo the projected cell) of the undeformed lattice for scan position s.
Counting noise at the scan's dose is drawn per position from ``(seed, y, x)``.

Resumable: each finished multislice task is kept in a task folder (``<out>.partial.tasks/``, or a
subfolder of a cache folder the caller names) stamped with a fingerprint of everything that makes the
clean patterns, which leaves out the scan's name and dose: scans that differ only in dose share their
multislice. The default folder is removed once both stores are written; a cache folder is kept.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np

from stemstrain.config import Config, ScanConfig
from stemstrain.errors import StemstrainInputError
from stemstrain.execute import run_tasks
from stemstrain.io import (
    atomic_output,
    check_reference_roi,
    make_4d_dataset,
    strain_map_dataset,
    write_strain_map,
)
from stemstrain.lattice import reciprocal_vectors
from stemstrain.simulate.crystals import get_crystal, projected_cell
from stemstrain.simulate.dataset import check_simulation
from stemstrain.simulate.multislice import (
    SimulationOptics,
    exit_plane_periods,
    phonon_seeds,
    simulate_patterns,
    vacuum_probe,
)
from stemstrain.simulate.noise import PatternNoise, apply_noise
from stemstrain.strain import STRAIN_COMPONENTS, deformation_from_strain, rotation_matrix

__all__ = ["clean_scan_patterns", "default_reference_roi", "simulate_scan", "strain_field"]

log = logging.getLogger(__name__)

MAX_POSITIONS_PER_TASK = 16
# Field shapes: strain components (e_xx, e_yy, e_xy, theta) per unit of the field's amplitude.
FIELD_COMPONENTS = {
    "uniform": (1.0, -0.5, 0.3, 0.4),
    "gradient": (1.0, -0.5, 0.3, 0.4),
    "bump": (1.0, 1.0, 0.0, 0.2),
    "interface": (1.0, 0.0, 0.0, 0.0),
    "composite": (1.0, -0.75, 0.5, 0.6),
}


def default_reference_roi(scan_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Reference region when the config names none: the left quarter of the scan (at least one column)."""
    n_y, n_x = scan_shape
    return (0, n_y, 0, max(1, n_x // 4))


def strain_field(
    field: str, scan_shape: tuple[int, int], reference_roi: tuple[int, int, int, int], amplitude: float
) -> dict[str, np.ndarray]:
    """Strain and rotation over the scan, exactly zero in the reference region.

    The shapes grow with the distance d (in scan steps, the larger of the y and x distances) from the
    reference region: ``uniform`` is constant outside it, ``gradient`` rises linearly with d to the amplitude
    at the farthest position, ``bump`` is a Gaussian (σ a quarter of the strained region's smaller side)
    centred in the strained region, ``interface`` a step to the amplitude halfway out (a misfitting layer).
    ``composite`` gives each component its own shape: e_xx the linear ramp in d, e_yy the bump (-0.75),
    e_xy the ramp times a factor going from +1 at the top row to -1 at the bottom (0.5), and θ a ridge
    4 r (1 - r) of the ramp r (0.6, largest halfway out).

    Parameters
    ----------
    field : str
        ``uniform``, ``gradient``, ``bump``, ``interface`` or ``composite``.
    scan_shape : (int, int)
        Scan positions (scan_y, scan_x).
    reference_roi : (int, int, int, int)
        ``[y0, y1, x0, x1]`` half-open scan indices of the unstrained region.
    amplitude : float
        Largest strain [1]; components scale with :data:`FIELD_COMPONENTS`.

    Returns
    -------
    dict of ndarray (scan_y, scan_x)
        ``e_xx``, ``e_yy``, ``e_xy`` [1] and ``theta`` [rad].
    """
    n_y, n_x = scan_shape
    y0, y1, x0, x1 = reference_roi
    iy, ix = np.mgrid[0:n_y, 0:n_x]
    distance = np.maximum(np.maximum(y0 - iy, iy - (y1 - 1)), np.maximum(x0 - ix, ix - (x1 - 1)))
    distance = np.maximum(distance, 0).astype(float)
    outside = distance > 0
    farthest = distance.max()
    if field == "uniform":
        profile = outside.astype(float)
    elif field == "gradient":
        profile = distance / farthest if farthest > 0 else np.zeros(scan_shape)
    elif field == "interface":
        profile = (distance > 0.5 * farthest).astype(float)
    elif field in ("bump", "composite"):
        profile = _bump(iy, ix, outside)
    else:
        raise ValueError(f"unknown strain field {field!r}")
    profiles = [profile] * len(STRAIN_COMPONENTS)
    if field == "composite":
        ramp = distance / farthest if farthest > 0 else np.zeros(scan_shape)
        sign_along_y = 1.0 - 2.0 * iy / max(n_y - 1, 1)
        profiles = [ramp, profile, ramp * sign_along_y, 4.0 * ramp * (1.0 - ramp)]
    return {
        name: amplitude * weight * shape
        for name, weight, shape in zip(STRAIN_COMPONENTS, FIELD_COMPONENTS[field], profiles, strict=True)
    }


def _bump(iy: np.ndarray, ix: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Gaussian of peak 1 centred in the strained region (σ a quarter of its smaller side), 0 in the reference."""
    if not outside.any():
        return np.zeros(iy.shape)
    cy, cx = iy[outside].mean(), ix[outside].mean()
    sides = (np.ptp(iy[outside]) + 1, np.ptp(ix[outside]) + 1)
    sigma = max(1.0, 0.25 * min(sides))
    profile = np.exp(-0.5 * ((iy - cy) ** 2 + (ix - cx) ** 2) / sigma**2) * outside
    return profile / profile.max()


def _probe_positions(crystal: str, deformation: np.ndarray, scan_xy: np.ndarray, box: float) -> np.ndarray:
    """Probe positions in the box for scan positions (x, y) [angstrom] under a local deformation F."""
    cell = projected_cell(crystal)
    fractions = scan_xy @ np.linalg.inv(deformation @ cell).T
    fractions -= np.floor(fractions)
    return 0.5 * box + fractions @ (deformation @ cell).T


def simulate_positions(
    crystal: str,
    strain: np.ndarray,
    scan_xy: np.ndarray,
    thickness_nm: float,
    optics: SimulationOptics,
    frozen_phonons: int,
    seed: int,
    orientation: float = 0.0,
) -> np.ndarray:
    """Clean patterns (m, pixels, pixels) of scan positions (m, 2) (x, y) [angstrom] sharing one strain state.

    ``strain`` (e_xx, e_yy, e_xy, θ) acts on the crystal turned in-plane by ``orientation`` [rad].
    """
    deformation = deformation_from_strain(*strain) @ rotation_matrix(orientation)
    positions = _probe_positions(crystal, deformation, np.asarray(scan_xy, dtype=float), optics.box)
    patterns, _ = simulate_patterns(
        crystal, deformation, [thickness_nm], positions, optics, frozen_phonons=frozen_phonons, seed=seed
    )
    return patterns[:, 0]


def _task_cache(cache: Path, fingerprint: str) -> Path:
    """A folder of finished tasks, emptied when it holds the tasks of other clean patterns."""
    stamp = cache / "fingerprint"
    if cache.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        shutil.rmtree(cache)
    if not cache.exists():
        with atomic_output(cache) as tmp:
            tmp.mkdir()
            (tmp / "fingerprint").write_text(fingerprint)
    return cache


def simulate_scan(
    config: Config, scan: ScanConfig, out: Path, truth: Path, cache: Path | None = None, noise_draw: int = 0
) -> tuple[Path, Path]:
    """Simulate a strained 4D scan and its ground-truth strain map.

    Parameters
    ----------
    config : Config
        Optics, detector, potential sampling and the dask cluster (``simulate.cluster``).
    scan : ScanConfig
        Crystal, thickness, dose, strain field and scan geometry.
    out : Path
        4D-data store to write (contract of DESIGN.md, with ``probe`` and ``reference_roi``).
    truth : Path
        Strain-map store of the imposed field (strain relative to the unstrained crystal at its orientation).
    cache : Path, optional
        Folder in which finished multislice tasks are kept, in a subfolder per set of clean patterns
        (scans differing only in name and dose share one); default: ``<out>.partial.tasks``, removed
        when the stores are written.
    noise_draw : int
        Which draw of the counting noise: 0 (the scan's own, seeded by ``(seed, position)``) or k > 0,
        another independent draw on the same clean patterns (seeded by ``(seed, position, k)``), so that a
        benchmark can average its scores over draws. Frozen phonons are part of the clean patterns and
        are the same in every draw.

    Returns
    -------
    (Path, Path)
        ``out`` and ``truth``.
    """
    if noise_draw < 0:
        raise StemstrainInputError(f"noise_draw must be >= 0 (0: the scan's own counting noise), found {noise_draw}")
    optics = check_simulation(config, [scan.crystal])
    roi, field = _scan_field(scan)
    keep_cache = cache is not None
    folder = Path(cache) if keep_cache else Path(out).with_name(Path(out).name + ".partial.tasks")
    clean, task_folder = _clean_patterns(config, scan, optics, field, folder, subfolder=keep_cache)
    draw = [noise_draw] if noise_draw else []
    counts = np.stack(
        [
            apply_noise(
                pattern, PatternNoise(dose=scan.dose), optics.k_sampling, np.random.default_rng([scan.seed, i, *draw])
            )
            for i, pattern in enumerate(clean)
        ]
    ).reshape(*scan.scan_shape, optics.pixels, optics.pixels)
    _write_scan(scan, optics, counts, roi, field, out, truth)
    if not keep_cache:
        shutil.rmtree(task_folder, ignore_errors=True)
    return Path(out), Path(truth)


def clean_scan_patterns(config: Config, scan: ScanConfig, cache: Path) -> np.ndarray:
    """The noise-free patterns of a scan, from its cached multislice tasks (simulating what is missing).

    Parameters
    ----------
    config, scan
        As for :func:`simulate_scan`.
    cache : Path
        The cache folder given to :func:`simulate_scan`.

    Returns
    -------
    ndarray (scan_y, scan_x, k_y, k_x) float32
        Intensity as a fraction of the incident beam (counts are this times the dose).
    """
    optics = check_simulation(config, [scan.crystal])
    _, field = _scan_field(scan)
    clean, _ = _clean_patterns(config, scan, optics, field, Path(cache), subfolder=True)
    return clean.reshape(*scan.scan_shape, optics.pixels, optics.pixels)


def _scan_field(scan: ScanConfig) -> tuple[tuple[int, int, int, int], dict[str, np.ndarray]]:
    """The scan's reference region (checked) and its strain field, zero there."""
    shape = tuple(scan.scan_shape)
    roi = check_reference_roi(
        scan.reference_roi or default_reference_roi(shape), shape, f"scans[{scan.name}].reference_roi"
    )
    return roi, strain_field(scan.field, shape, roi, scan.amplitude)


def _clean_patterns(config: Config, scan: ScanConfig, optics, field: dict, folder: Path, subfolder: bool):
    """Clean patterns (positions, k_y, k_x) of a scan, simulating the tasks not in ``folder``; and that folder.

    ``folder`` holds the finished tasks, in a subfolder named by the fingerprint of the clean patterns when
    ``subfolder`` is set (a shared cache), else directly.
    """
    shape = tuple(scan.scan_shape)
    orientation = np.radians(scan.orientation_deg)
    strain = np.stack([field[name] for name in STRAIN_COMPONENTS], axis=-1)
    iy, ix = np.mgrid[0 : shape[0], 0 : shape[1]]
    scan_xy = 10.0 * scan.step_nm * np.stack([ix, iy], axis=-1).astype(float)

    tasks, members, n_states = _scan_tasks(scan, strain, scan_xy, optics, orientation)
    clean = np.zeros((shape[0] * shape[1], optics.pixels, optics.pixels), dtype=np.float32)
    recipe = scan.model_dump(mode="json", exclude={"name", "dose"})  # what makes the clean patterns
    if scan.frozen_phonons:
        recipe["phonon_draws"] = "per position"  # tasks of one strain state shared one draw before stop 51
    fingerprint = hashlib.sha256(repr((recipe, optics)).encode()).hexdigest()
    cache = _task_cache(folder / fingerprint[:16] if subfolder else folder, fingerprint)
    finished = [key for key, _ in tasks if (cache / f"{key}.npy").is_file()]
    for key in finished:
        clean[members[key]] = np.load(cache / f"{key}.npy")
    tasks = [task for task in tasks if task[0] not in finished]

    def collect(key: str, patterns: np.ndarray) -> None:
        clean[members[key]] = patterns
        with atomic_output(cache / f"{key}.npy") as tmp, tmp.open("wb") as handle:
            np.save(handle, patterns)

    log.info(
        "simulate-scan %s: %d positions, %d strain states, %d tasks (%d to do)",
        scan.name,
        clean.shape[0],
        n_states,
        len(finished) + len(tasks),
        len(tasks),
    )
    run_tasks(
        simulate_positions,
        tasks,
        config.simulate.cluster,
        collect,
        f"simulate-scan {scan.name}",
        items_per_task=[len(members[k]) for k, _ in tasks],
    )
    return clean, cache


def _scan_tasks(scan: ScanConfig, strain: np.ndarray, scan_xy: np.ndarray, optics, orientation: float):
    """Multislice tasks of a scan: one per strain state (split into parts of ``MAX_POSITIONS_PER_TASK``).

    With frozen phonons every position is a task of its own with its own phonon configurations (the
    k-th draw of its strain state's seed), as a real probe averages its own thermal motion over its dwell
    time. Positions sharing one draw would share its unconverged thermal shift of the lattice (of the
    order of 1e-3 with 4 configurations, a probe a few cells wide): in the reference region that shift
    would bias the reference lattice and so every position of the map alike.

    Returns
    -------
    tasks : list of (key, args)
        Arguments of :func:`simulate_positions`.
    members : dict
        Flat scan indices that each task key fills.
    n_states : int
        Distinct strain states.
    """
    unique, group_of = np.unique(strain.reshape(-1, 4), axis=0, return_inverse=True)
    per_task = 1 if scan.frozen_phonons else MAX_POSITIONS_PER_TASK
    tasks, members = [], {}
    for group, state in enumerate(unique):
        flat = np.flatnonzero(group_of.ravel() == group)
        seeds = phonon_seeds(scan.seed, group, len(flat))
        for part, start in enumerate(range(0, len(flat), per_task)):
            indices = flat[start : start + per_task]
            key = f"{group}-{part}"
            members[key] = indices
            args = (scan.crystal, state, scan_xy.reshape(-1, 2)[indices], scan.thickness_nm, optics)
            tasks.append((key, (*args, scan.frozen_phonons, int(seeds[start]), orientation)))
    return tasks, members, len(unique)


def _write_scan(scan: ScanConfig, optics, counts: np.ndarray, roi, field: dict, out: Path, truth: Path) -> None:
    """The 4D-data store of the counts and the strain-map store of the imposed field (atomic writes)."""
    spec = get_crystal(scan.crystal)
    shape = counts.shape[:2]
    thickness = float(exit_plane_periods(scan.crystal, [scan.thickness_nm])[0] * spec.period / 10.0)
    dataset = make_4d_dataset(
        counts,
        scan.step_nm,
        optics.k_sampling,
        optics.energy_eV,
        optics.semiangle_mrad,
        probe=vacuum_probe(optics) * scan.dose,
        material=scan.crystal,
        zone_axis=spec.zone_axis,
        thickness_nm=thickness,
        dose_e_per_pattern=scan.dose,
        reference_roi=list(roi),
        strain_field=scan.field,
        strain_amplitude=scan.amplitude,
        frozen_phonons=scan.frozen_phonons,
        seed=scan.seed,
        orientation_deg=scan.orientation_deg,
    )
    chunk = {"scan_y": min(shape[0], 16), "scan_x": min(shape[1], 16), "k_y": -1, "k_x": -1}
    with atomic_output(out) as tmp:
        dataset.chunk(chunk).to_zarr(tmp, mode="w")
    reference = rotation_matrix(np.radians(scan.orientation_deg)) @ reciprocal_vectors(projected_cell(scan.crystal))
    truth_map = strain_map_dataset(
        field,
        dataset["scan_y"].values,
        dataset["scan_x"].values,
        method="truth",
        reference_roi=list(roi),
        g1=reference[:, 0],
        g2=reference[:, 1],
        material=scan.crystal,
        thickness_nm=thickness,
        strain_field=scan.field,
        orientation_deg=scan.orientation_deg,
    )
    write_strain_map(truth_map, truth)
