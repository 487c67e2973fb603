"""A read-out's systematic error, measured on simulated crystals at a map's own strain states, and taken off.

Dynamical scattering moves the disks of a thick crystal by amounts that depend on its local state
(strain, rotation, thickness, orientation): every read-out, ours and the classical ones, turns a
state ``s`` into a measured state ``f(s) = s + Δ(s)`` with a systematic ``Δ`` of up to a few 1e-3.
Where the crystal is known, ``Δ`` can be measured: simulate uniformly strained crystals at states
like those of the map (:func:`state_clusters`), at the scan's orientation (:func:`crystal_orientation`,
from the reference lattice), thickness (:func:`fitted_thickness`, from the reference region's mean
pattern), optics and dose (:func:`state_scan`); run the same read-out on them; and take the
interpolated ``Δ`` off the map (:func:`corrected_strain`). The simulation shares the physics of
abTEM's multislice; on measured data it holds as far as that physics does (absorption, tilt,
thickness changes over the map and the detector are not in it).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from stemstrain.errors import StemstrainInputError
from stemstrain.io import k_calibration, make_4d_dataset, open_4d, open_strain_map, write_strain_map
from stemstrain.lattice import reciprocal_vectors
from stemstrain.simulate.crystals import crystal_unit, get_crystal, projected_cell
from stemstrain.simulate.multislice import (
    SimulationOptics,
    phonon_seeds,
    probe_positions_in_cell,
    simulate_patterns,
    vacuum_probe,
)
from stemstrain.simulate.noise import PatternNoise, apply_noise
from stemstrain.strain import STRAIN_COMPONENTS, deformation_from_strain, rotation_matrix

__all__ = [
    "ResponseOptions",
    "correct_strain_map",
    "corrected_strain",
    "simulate_states",
    "check_thickness",
    "crystal_orientation",
    "distinct_turns",
    "fitted_thickness",
    "state_clusters",
    "state_errors",
    "state_scan",
]

SUBLATTICES = (1, 2, 3)
"""Finer lattices tried when the spots are not on the projected cell's reciprocal lattice (Al [111]: 1/3 {422})."""
MATCH_TOLERANCE = 0.03
"""Largest residual of an orientation match after its best common scale, as a fraction of |g1| [1]: a thick
crystal's disks sit up to ~1 px off their spots, so a measured reference lattice is a few % off the crystal's."""
ELECTRONS_PER_STATE = 2e7
"""Electrons read per simulated state at least (noise draws are added at low doses, they cost no multislice):
the mean of a state's patterns then scatters ~1e-4 or less at any dose."""
SCALE_TOLERANCE = 0.1
"""Largest difference of the measured lattice's scale from the crystal's [1]."""


@dataclass(frozen=True)
class ResponseOptions:
    """How a map's response is simulated (:func:`simulate_states`).

    Attributes
    ----------
    crystal : str, optional
        Crystal name of :mod:`stemstrain.simulate.crystals`; default the scan's ``material`` attr.
    states : int
        Simulated states, k-means centres of the map's (:func:`state_clusters`).
    positions : int
        Probe positions per state (:func:`state_scan`).
    draws : int, optional
        Noise draws per position; default: enough for :data:`ELECTRONS_PER_STATE` per state (at least 2).
    box_scale_min : float
        Smallest simulation box [1/k_sampling] (:meth:`SimulationOptics.fitted`).
    thickness_nm : float, optional
        The sample's thickness [nm] where known (e.g. from EELS); default: fitted to the reference
        region's mean pattern (:func:`fitted_thickness`).
    frozen_phonons : int, optional
        Frozen-phonon configurations of every simulated pattern (thermal diffuse scattering; 0: a static
        lattice), at ``frozen_phonons`` times the cost; default: the scan's ``frozen_phonons`` attr (a
        simulated scan's), else 0. A measured crystal vibrates: its thermal diffuse scattering is
        simulated with 4 or more.
    """

    crystal: str | None = None
    states: int = 8
    positions: int = 8
    draws: int | None = None
    box_scale_min: float = 2.0
    thickness_nm: float | None = None
    frozen_phonons: int | None = None

    def __post_init__(self) -> None:
        check_thickness(self.thickness_nm)
        if self.frozen_phonons is not None and (
            int(self.frozen_phonons) != self.frozen_phonons or self.frozen_phonons < 0
        ):
            raise StemstrainInputError(
                f"frozen phonons: expected a whole number of configurations >= 0, found {self.frozen_phonons!r}"
            )


def crystal_orientation(reference: np.ndarray, crystal: str) -> tuple[float, float]:
    """In-plane orientation of a crystal whose reciprocal lattice the measured reference basis spans.

    Parameters
    ----------
    reference : ndarray (2, 2)
        Measured reference basis g1, g2 as columns [1/angstrom] (a strain map's ``g1``, ``g2`` attrs).
    crystal : str
        Crystal name of :mod:`stemstrain.simulate.crystals`.

    Returns
    -------
    orientation : float
        Angle [deg] turning the crystal (``rotation_matrix`` convention of the simulation) onto the
        measured lattice; turns that keep the lattice are not told apart (:func:`distinct_turns`).
    residual : float
        Distance between the measured basis and the turned crystal's, scaled to it [1/angstrom].

    Raises
    ------
    StemstrainInputError
        If no orientation of the crystal, or of its lattices 2 or 3 times finer, matches within
        :data:`MATCH_TOLERANCE` and :data:`SCALE_TOLERANCE`.
    """
    reference = np.asarray(reference, dtype=float)
    base = reciprocal_vectors(projected_cell(crystal))
    for n in SUBLATTICES:
        orientation, residual = _best_rotation(reference, base / n)
        if residual < MATCH_TOLERANCE * np.linalg.norm(reference[:, 0]):
            return orientation, residual
    raise StemstrainInputError(
        f"reference lattice g1 = {reference[:, 0].round(4).tolist()}, g2 = {reference[:, 1].round(4).tolist()} "
        f"[1/angstrom] is no turned lattice of {crystal} (|g| of its projected cell: "
        f"{np.linalg.norm(base, axis=0).round(4).tolist()}): expected the crystal of the scan (--crystal)"
    )


def _best_rotation(reference: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Rotation [deg] and residual of the best match of ``reference`` to integer combinations of ``base``."""
    hk = np.array([(h, k) for h in range(-6, 7) for k in range(-6, 7) if (h, k) != (0, 0)])
    vectors = hk @ base.T
    best = (0.0, np.inf)
    for g in reference.T:
        lengths = np.linalg.norm(vectors, axis=1) / np.linalg.norm(g)
        for v in vectors[np.abs(lengths - 1) < SCALE_TOLERANCE]:
            angle = np.arctan2(g[1], g[0]) - np.arctan2(v[1], v[0])
            model = base @ np.round(np.linalg.solve(rotation_matrix(angle) @ base, reference))
            if abs(np.linalg.det(model)) < 1e-9:
                continue
            u, _, vt = np.linalg.svd(reference @ model.T)  # the rotation closest to model -> reference
            turn = u @ vt
            scale = np.trace(reference.T @ turn @ model) / np.sum(model**2)
            residual = float(np.linalg.norm(scale * turn @ model - reference))
            if np.linalg.det(turn) > 0 and abs(scale - 1) < SCALE_TOLERANCE and residual < best[1]:
                best = (float(np.degrees(np.arctan2(turn[1, 0], turn[0, 0])) % 360.0), residual)
    return best


def check_thickness(thickness_nm: float | None, name: str = "thickness") -> None:
    """Refuse a given sample thickness [nm] that is not positive and finite (None: not given)."""
    if thickness_nm is not None and not (np.isfinite(thickness_nm) and thickness_nm > 0):
        raise StemstrainInputError(f"{name} {thickness_nm}: expected a positive sample thickness [nm]")


def distinct_turns(crystal: str) -> np.ndarray:
    """In-plane turns [deg] that keep a crystal's projected lattice but not its structure, one per distinct pattern.

    A measured reference lattice fixes the orientation only up to the turns that keep the lattice (180 deg
    always, 90 deg for a square one, 60 deg for a hexagonal one); those that are no symmetry of the
    crystal about its zone axis (a 2-fold axis along GaAs [110] is missing: its dumbbells are polar) give
    other dynamical patterns, so they are told apart on the measured patterns (:func:`fitted_thickness`).

    Parameters
    ----------
    crystal : str
        Crystal name.

    Returns
    -------
    ndarray
        Turns [deg], 0 first, one per class of turns that give the same structure.
    """
    base = projected_cell(crystal)
    in_cell = [np.linalg.solve(base, rotation_matrix(np.radians(angle)) @ base) for angle in range(0, 360, 30)]
    keeps_lattice = [30 * i for i, m in enumerate(in_cell) if np.allclose(m, np.round(m), atol=1e-6)]
    atoms = crystal_unit(crystal)
    cell = np.diag(atoms.cell)
    positions, symbols = atoms.positions, np.array(atoms.get_chemical_symbols())

    def symmetry(angle: float) -> bool:
        turned = positions.copy()
        turned[:, :2] = positions[:, :2] @ rotation_matrix(np.radians(angle)).T
        for shift in positions[symbols == symbols[0]] - turned[0]:
            offsets = (turned + shift)[:, None, :] - positions[None, :, :]
            offsets -= np.round(offsets / cell) * cell
            same = (np.linalg.norm(offsets, axis=-1) < 1e-3) & (symbols[:, None] == symbols[None, :])
            if same.any(axis=1).all():
                return True
        return False

    distinct: list[int] = []
    for angle in keeps_lattice:
        if not any(symmetry(angle - other) for other in distinct):
            distinct.append(angle)
    return np.array(distinct, dtype=float)


def _fractions(positions: int, seed: int) -> np.ndarray:
    """Probe positions as fractions of the projected cell, spread over it."""
    return np.random.default_rng(seed).random((positions, 2))


def fitted_thickness(
    reference_mean: np.ndarray,
    crystal: str,
    orientations_deg,
    optics: SimulationOptics,
    max_nm: float = 120.0,
    positions: int = 6,
    seed: int = 0,
    thickness_nm: float | None = None,
    frozen_phonons: int = 0,
    progress: bool = False,
) -> tuple[float, float, float]:
    """The thickness, and orientation among candidates, whose unstrained pattern best matches a reference
    region's mean pattern.

    One multislice of ``max_nm`` per orientation gives every exit plane; each is averaged over
    ``positions`` probe positions in the cell (a reference region's mean averages over them too) and
    compared to the measured mean by the correlation of the square roots of both (the faint disks count).

    Parameters
    ----------
    reference_mean : ndarray (pixels, pixels)
        Mean pattern of the reference region, on the detector of ``optics`` [counts].
    crystal : str
        Crystal name.
    orientations_deg : sequence of float
        Candidate in-plane orientations [deg] (:func:`crystal_orientation` plus :func:`distinct_turns`).
    optics : SimulationOptics
        Optics and detector of the scan.
    max_nm : float
        Thickest crystal considered [nm].
    positions : int
        Probe positions averaged.
    seed : int
        Seed of the positions.
    thickness_nm : float, optional
        A known thickness [nm]: only the orientation is chosen.
    frozen_phonons : int
        Frozen-phonon configurations of each pattern (0: a static lattice).
    progress : bool
        Show a progress bar over the orientations.

    Returns
    -------
    orientation : float
        Best orientation [deg].
    thickness : float
        Best thickness [nm] (a whole number of periods along the zone axis).
    correlation : float
        Its correlation with the measured mean [1].
    """
    period_nm = get_crystal(crystal).period / 10.0
    if thickness_nm is None:
        thicknesses = np.arange(period_nm, max_nm, max(period_nm, 1.0))
    else:
        thicknesses = np.array([thickness_nm])
    measured = np.sqrt(np.clip(reference_mean / reference_mean.sum(), 0, None)).ravel()
    best = (np.nan, np.nan, -np.inf)
    for orientation in tqdm(orientations_deg, desc="thickness fit", unit="orientation", disable=not progress):
        deformation = rotation_matrix(np.radians(orientation))
        xy = probe_positions_in_cell(crystal, deformation, _fractions(positions, seed), optics.box)
        series, simulated = simulate_patterns(crystal, deformation, thicknesses, xy, optics, frozen_phonons, seed=seed)
        for thickness, mean in zip(simulated, series.mean(axis=0), strict=True):
            score = np.corrcoef(measured, np.sqrt(np.clip(mean / mean.sum(), 0, None)).ravel())[0, 1]
            if score > best[2]:
                best = (float(orientation % 360.0), float(thickness), float(score))
    return best


def state_clusters(states: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A few states that stand for many: k-means centres of measured states, each component scaled by its spread.

    Parameters
    ----------
    states : ndarray (n, 4)
        e_xx, e_yy, e_xy [1] and θ [rad] of the map's valid positions.
    count : int
        Centres wanted (fewer when fewer distinct states exist).

    Returns
    -------
    ndarray (m, 4)
        The centres, in the units of ``states``.
    """
    from scipy.cluster.vq import kmeans2

    states = np.asarray(states, dtype=float)
    states = states[np.all(np.isfinite(states), axis=1)]
    distinct = np.unique(states, axis=0)
    if len(distinct) <= count:
        return distinct
    scale = states.std(axis=0) + 1e-9
    centres, labels = kmeans2(states / scale, count, seed=seed, minit="++")
    return centres[np.unique(labels)] * scale


def state_scan(
    crystal: str,
    states: np.ndarray,
    orientation_deg: float,
    thickness_nm: float,
    optics: SimulationOptics,
    dose: float,
    positions: int = 8,
    draws: int = 2,
    seed: int = 0,
    frozen_phonons: int = 0,
    progress: bool = False,
) -> xr.Dataset:
    """A simulated 4D scan of uniformly strained crystals: row 0 unstrained (the reference), row i state i.

    Each row holds ``positions`` probe positions in the cell (the same in every row) times ``draws``
    draws of the counting noise at ``dose``. With frozen phonons each probe position has its own thermal
    displacements (:func:`~stemstrain.simulate.multislice.phonon_seeds`, as in a simulated scan), so
    that a state's mean averages ``positions`` draws: rows cannot share one draw (each state's box holds
    other atoms: 1214-1224 in the 2x box of Si [110] for strains of 0-2 %), and one draw per state put
    its unconverged thermal shift of the lattice (a few 1e-4 to 4e-3 with 4 configurations, larger for
    the network than for bragg: docs/results.md, stop 51) into that state's error.

    Parameters
    ----------
    crystal : str
        Crystal name.
    states : ndarray (m, 4)
        e_xx, e_yy, e_xy [1] and θ [rad] acting on the turned crystal.
    orientation_deg : float
        In-plane orientation [deg].
    thickness_nm : float
        Thickness [nm].
    optics : SimulationOptics
        Optics, detector and box.
    dose : float
        Electrons per pattern [e-].
    positions, draws : int
        Probe positions per state and noise draws per position.
    seed : int
        Seed of the positions, the thermal displacements and the noise.
    frozen_phonons : int
        Frozen-phonon configurations of each pattern (0: a static lattice).
    progress : bool
        Show a progress bar over the states.

    Returns
    -------
    xr.Dataset
        In the 4D-data contract, (1 + m, positions * draws) patterns, ``reference_roi`` the first row,
        with ``states`` (state, component) including the unstrained row 0.
    """
    states = np.vstack([np.zeros((1, 4)), np.asarray(states, dtype=float)])
    fractions = _fractions(positions, seed)
    rows = []
    for row, state in enumerate(tqdm(states, desc="simulated states", unit="state", disable=not progress)):
        deformation = deformation_from_strain(*state) @ rotation_matrix(np.radians(orientation_deg))
        xy = probe_positions_in_cell(crystal, deformation, fractions, optics.box)
        if frozen_phonons:  # each position its own potential, so its own thermal draw
            seeds = phonon_seeds(seed, row, positions)
            clean = np.concatenate(
                [
                    simulate_patterns(
                        crystal, deformation, [thickness_nm], xy[i : i + 1], optics, frozen_phonons, seed=s
                    )[0]
                    for i, s in enumerate(seeds.tolist())
                ]
            )
        else:
            clean, _ = simulate_patterns(crystal, deformation, [thickness_nm], xy, optics)
        noise = PatternNoise(dose=dose)
        rows.append(
            [
                apply_noise(pattern, noise, optics.k_sampling, np.random.default_rng([seed, row, i, draw]))
                for draw in range(draws)
                for i, pattern in enumerate(clean[:, 0])
            ]
        )
    spec = get_crystal(crystal)
    scan = make_4d_dataset(
        np.asarray(rows, dtype=np.float32),
        1.0,
        optics.k_sampling,
        optics.energy_eV,
        optics.semiangle_mrad,
        probe=vacuum_probe(optics) * dose,
        material=crystal,
        zone_axis=spec.zone_axis,
        thickness_nm=thickness_nm,
        dose_e_per_pattern=dose,
        reference_roi=[0, 1, 0, positions * draws],
        orientation_deg=orientation_deg,
        frozen_phonons=frozen_phonons,
    )
    # no string coordinate for the components: zarr v3 has no specification for fixed-length strings yet
    scan["states"] = (("state", "component"), states, {"long_name": "simulated e_xx, e_yy, e_xy [1], theta [rad]"})
    return scan


def simulate_states(
    scan: xr.Dataset,
    reference: np.ndarray,
    measured: np.ndarray,
    reference_roi: tuple[int, int, int, int],
    options: ResponseOptions = ResponseOptions(),
    progress: bool = False,
) -> xr.Dataset:
    """The state scan of a strain map: its crystal turned as its reference lattice, as thick as its reference
    region's mean pattern says, at ``options.states`` states that stand for the measured ones.

    Parameters
    ----------
    scan : xr.Dataset
        The measured 4D scan (contract of docs/DESIGN.md) with ``energy_eV``, ``semiangle_mrad`` and
        ``dose_e_per_pattern`` attrs.
    reference : ndarray (2, 2)
        The map's reference basis g1, g2 as columns [1/angstrom].
    measured : ndarray (n, 4)
        Measured e_xx, e_yy, e_xy [1] and θ [rad] of the positions the states stand for.
    reference_roi : (y0, y1, x0, x1)
        The map's reference region (half-open scan indices).
    options : ResponseOptions
        Crystal, states, probe positions, noise draws, box and thickness of the simulation.
    progress : bool
        Show progress bars of the multislice runs.

    Returns
    -------
    xr.Dataset
        :func:`state_scan`'s, with attrs ``orientation_deg``, ``orientation_residual``, ``thickness_nm``,
        ``thickness_correlation`` (None for a given thickness).

    Raises
    ------
    StemstrainInputError
        Without a crystal, dose or optics, or when the crystal does not match the reference lattice.
    """
    attrs = scan.attrs
    crystal = options.crystal or attrs.get("material")
    needed = {"crystal (--crystal, or the scan's material attr)": crystal} | {
        f"scan attr {name}": attrs.get(name) for name in ("energy_eV", "semiangle_mrad", "dose_e_per_pattern")
    }
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise StemstrainInputError(f"simulating the read-out's response needs {', '.join(missing)}")
    k_sampling, _ = k_calibration(scan)
    optics = SimulationOptics(attrs["energy_eV"], attrs["semiangle_mrad"], scan.sizes["k_x"], k_sampling)
    optics = optics.fitted(options.box_scale_min)
    orientation, residual = crystal_orientation(reference, crystal)
    candidates = orientation + distinct_turns(crystal)
    phonons = int(options.frozen_phonons if options.frozen_phonons is not None else attrs.get("frozen_phonons") or 0)
    if options.thickness_nm is not None and len(candidates) == 1:
        thickness, correlation = float(options.thickness_nm), None  # nothing to choose
    else:
        from stemstrain.strainmap.run import reference_mean  # the mean the strain run's initial lattice is found on

        mean = np.asarray(reference_mean(scan, reference_roi), dtype=float)
        averaged = min(options.positions, 6)  # 6 positions match a reference region's mean well
        orientation, thickness, correlation = fitted_thickness(
            mean,
            crystal,
            candidates,
            optics,
            positions=averaged,
            thickness_nm=options.thickness_nm,
            frozen_phonons=phonons,
            progress=progress,
        )
    states = state_clusters(measured, options.states, seed=7)
    dose = float(attrs["dose_e_per_pattern"])
    positions = options.positions
    draws = options.draws or max(2, int(np.ceil(ELECTRONS_PER_STATE / (positions * dose))))
    simulated = state_scan(
        crystal,
        states,
        orientation,
        thickness,
        optics,
        dose,
        positions,
        draws,
        frozen_phonons=phonons,
        progress=progress,
    )
    simulated.attrs |= {
        "orientation_residual": residual,
        "thickness_correlation": correlation,
    }
    return simulated


def state_errors(states: np.ndarray, measured: xr.Dataset) -> np.ndarray:
    """Systematic error Δ of each simulated state: the mean measured state of its row minus the state.

    Parameters
    ----------
    states : ndarray (m, 4)
        The simulated states, row 0 unstrained (``state_scan(...)["states"]``).
    measured : xr.Dataset
        The strain map of the state scan (rows as states).

    Returns
    -------
    ndarray (m, 4)
        Δ per state [1, rad]; row 0 is the scatter of the reference itself.

    Raises
    ------
    StemstrainInputError
        If a row holds no valid fit.
    """
    mean = np.stack(
        [np.nanmean(np.where(measured["mask"].values, measured[c].values, np.nan), axis=1) for c in STRAIN_COMPONENTS],
        axis=-1,
    )
    if not np.all(np.isfinite(mean)):
        bad = np.flatnonzero(~np.all(np.isfinite(mean), axis=1)).tolist()
        raise StemstrainInputError(f"simulated state rows {bad} hold no valid lattice fit: the read-out fails on them")
    return mean - np.asarray(states, dtype=float)


def corrected_strain(strain: xr.Dataset, states: np.ndarray, errors: np.ndarray, iterations: int = 3) -> xr.Dataset:
    """A strain map with the systematic error of its read-out taken off.

    Solves ``m = s + Δ(s)`` for the state ``s`` of each position by fixed-point iteration
    ``s <- m - Δ(s)``, with Δ interpolated between the simulated states (a linear radial-basis
    interpolation in components scaled by their spread over the states).

    Parameters
    ----------
    strain : xr.Dataset
        A strain map (e_xx, e_yy, e_xy, theta, mask).
    states : ndarray (m, 4)
        Simulated states [1, rad] (:func:`state_scan`).
    errors : ndarray (m, 4)
        Their systematic errors (:func:`state_errors`).
    iterations : int
        Fixed-point iterations.

    Returns
    -------
    xr.Dataset
        The map with corrected e_xx, e_yy, e_xy, theta, the measured ones as ``<name>_uncorrected``, and attrs
        ``response_states`` and ``response_errors``.
    """
    from scipy.interpolate import RBFInterpolator

    states = np.asarray(states, dtype=float)
    scale = np.abs(states).max(axis=0) + 1e-6
    interpolate = RBFInterpolator(states / scale, np.asarray(errors, dtype=float), kernel="linear")
    measured = np.stack([strain[c].values for c in STRAIN_COMPONENTS], axis=-1)
    flat = measured.reshape(-1, 4)
    finite = np.all(np.isfinite(flat), axis=1)
    solved = flat.copy()
    for _ in range(iterations):
        solved[finite] = flat[finite] - interpolate(solved[finite] / scale)
    out = strain.copy()
    for i, name in enumerate(STRAIN_COMPONENTS):
        out[f"{name}_uncorrected"] = strain[name].assign_attrs(long_name=f"{name} before the response correction")
        out[name] = (strain[name].dims, solved[:, i].reshape(measured.shape[:-1]), strain[name].attrs)
    out.attrs.update({"response_states": states.tolist(), "response_errors": np.asarray(errors).tolist()})
    return out


def correct_strain_map(
    scan_path: str | Path,
    strain_path: str | Path,
    method: str,
    model=None,
    options: ResponseOptions = ResponseOptions(),
    progress: bool = False,
    **strain_options,
) -> Path:
    """Take a strain map's systematic error off it, measured by the same read-out on simulated crystals.

    The map's valid positions give the states (:func:`simulate_states`); the state scan is read by
    :func:`~stemstrain.strainmap.strain_map` with ``method``, ``model`` and ``strain_options`` (the
    options of the map's own run); the map is rewritten with the corrected components (atomically).

    Parameters
    ----------
    scan_path, strain_path : path
        The measured 4D scan and its strain map.
    method, model
        The read-out of the map.
    options, progress
        As :func:`simulate_states`.
    **strain_options
        Further options of :func:`~stemstrain.strainmap.strain_map` (``config``, ``detector_options``,
        ``fit_options``).

    Returns
    -------
    Path
        ``strain_path``.
    """
    from stemstrain.strainmap import strain_map

    strain_path = Path(strain_path)
    strain = open_strain_map(strain_path)
    measured = np.stack([strain[name].values for name in STRAIN_COMPONENTS], axis=-1)
    valid = strain["mask"].values & np.all(np.isfinite(measured), axis=-1)
    reference = np.stack([strain.attrs["g1"], strain.attrs["g2"]], axis=-1)
    simulated = simulate_states(
        open_4d(scan_path),
        reference,
        measured[valid],
        tuple(strain.attrs["reference_roi"]),
        options,
        progress,
    )
    with tempfile.TemporaryDirectory(dir=strain_path.parent, prefix=f".{strain_path.name}.states-") as folder:
        states_scan, states_map = Path(folder) / "states.zarr", Path(folder) / "states-map.zarr"
        simulated.to_zarr(states_scan)
        strain_map(states_scan, states_map, method, model, progress=progress, **strain_options)
        errors = state_errors(simulated["states"].values, open_strain_map(states_map, require_valid=False))
    corrected = corrected_strain(strain, simulated["states"].values, errors)
    corrected.attrs |= {
        "response_crystal": simulated.attrs["material"],
        "response_orientation_deg": simulated.attrs["orientation_deg"],
        "response_thickness_nm": simulated.attrs["thickness_nm"],
        "response_thickness_correlation": simulated.attrs["thickness_correlation"],
    }
    return write_strain_map(corrected, strain_path)
