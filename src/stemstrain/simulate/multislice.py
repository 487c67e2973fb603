"""Real multislice (abTEM) of a strained crystal, recorded in the reference calibration.

A strained crystal is made by deforming a crystal larger than the simulation box with the
deformation gradient F (about the box centre) and cutting an orthogonal box of side ``L = 1/k_sampling``
(1.5 or 2 times that for the wide probes of small convergence angles, :meth:`SimulationOptics.fitted`).
abTEM propagates the probe through one repeated period (``CrystalPotential``) and returns the exit
waves at the requested thicknesses (exit planes), so a whole thickness series costs one propagation.

The detector is exact, without interpolation: the exit wave is tapered over a few angstrom at the box
edges (the cut-out strained crystal is not periodic there), Fourier transformed at s fine frequencies
per detector pixel (s = 3 for L = 1/k_sampling: the discrete transform of the wave zero-padded to 3L;
s = 5 for the larger boxes) and s × s fine pixels are summed into one detector pixel. The odd s keeps
k = 0 at the centre of pixel
``pixels // 2``. The transform is a pair of matrix products restricted to the detector's frequencies,
which is exact and much cheaper than a padded FFT. Precession averages patterns over beam tilts
around a cone; abTEM applies a tilt in the propagator (the specimen tilted against the beam), so the
undiffracted beam stays at k = 0: the patterns come out de-scanned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import abtem
import ase
import dask
import numpy as np
from abtem.antialias import AntialiasAperture
from abtem.core.energy import Accelerator
from abtem.potentials.iam import PotentialArray, TransmissionFunction
from threadpoolctl import threadpool_limits

from stemstrain.errors import StemstrainInputError
from stemstrain.optics import electron_wavelength
from stemstrain.simulate.crystals import crystal_unit, get_crystal, projected_cell

__all__ = [
    "SimulationOptics",
    "exit_plane_periods",
    "phonon_seeds",
    "probe_positions_in_cell",
    "simulate_patterns",
    "strained_box",
    "vacuum_probe",
]

# FFTW_MEASURE picks plans by timing, so round-off (and a rare Poisson count) would differ between runs;
# estimated plans are as fast here and make a chunk's result independent of the process that made it.
abtem.config.set({"diagnostics.progress_bar": False, "fftw.planning_effort": "FFTW_ESTIMATE"})

# Box sides in units of 1/k_sampling: the smallest that holds the probe is used (wider probes of small
# convergence angles need more than 1/k_sampling).
BOX_SCALES = (1.0, 1.5, 2.0)
# The box holds this many Airy-disk diameters of the probe: the tails beyond the first zero carry ~16 % of
# the intensity, and where the taper cuts them the pattern grows a cross of streaks through each disk.
PROBE_MARGIN = 1.3


@dataclass(frozen=True)
class SimulationOptics:
    """Everything about the microscope and detector that the multislice needs.

    Attributes
    ----------
    energy_eV : float
        Beam energy [eV].
    semiangle_mrad : float
        Probe convergence semiangle [mrad].
    pixels : int
        Detector pixels along each axis; k = 0 at index ``pixels // 2``.
    k_sampling : float
        Detector pixel size [1/angstrom].
    box_scale : float
        Side of the simulation box in units of ``1 / k_sampling`` (1: the box of the reference
        calibration, 40 angstrom; 1.5 or 2 for the wide probes of small convergence angles).
    sampling : float
        Requested real-space sampling of the potential [angstrom]; the grid is rounded to a fast FFT size.
    taper : float
        Width of the cosine taper of the exit wave at the box edges [angstrom].
    """

    energy_eV: float = 200e3
    semiangle_mrad: float = 1.5
    pixels: int = 128
    k_sampling: float = 0.025
    box_scale: float = 1.0
    sampling: float = 0.1
    taper: float = 4.0

    @property
    def box(self) -> float:
        """Side of the square simulation box [angstrom]."""
        return self.box_scale / self.k_sampling

    @property
    def oversampling(self) -> int:
        """Fine frequencies per detector pixel along each axis (odd: k = 0 stays at a pixel centre).

        The intensity of a wave confined to the box varies on the scale 1 / (2 box) in k; the fine
        frequencies sample it at least that finely, 3 per pixel for the 1 / k_sampling box.
        """
        return 2 * int(np.ceil(self.box_scale - 1e-9)) + 1

    @property
    def probe_diameter(self) -> float:
        """Diameter of the probe to the first zero of its Airy disk, 1.22 λ / α [angstrom]."""
        return 1.22 * self.wavelength / (1e-3 * self.semiangle_mrad)

    @property
    def gpts(self) -> int:
        """Grid points along each axis (a product of 2, 3, 5 at least as fine as ``sampling``)."""
        # a k_sampling read back from float coords (0.02499999999999991) must not add grid points
        return _fast_size(int(np.ceil(self.box / self.sampling - 1e-6)))

    @property
    def wavelength(self) -> float:
        """Relativistic electron wavelength [angstrom]."""
        return electron_wavelength(self.energy_eV)

    @property
    def max_simulated_k(self) -> float:
        """Largest scattering vector that the multislice carries (abTEM's 2/3 antialiasing) [1/angstrom]."""
        return (2.0 / 3.0) * 0.5 * self.gpts / self.box

    def check(self) -> None:
        """Raise StemstrainInputError when the detector reaches beyond what the multislice simulates."""
        detector_k = (self.pixels // 2) * self.k_sampling * np.sqrt(2.0)
        if detector_k > self.max_simulated_k:
            raise StemstrainInputError(
                f"detector corner at {1e3 * detector_k * self.wavelength:.1f} mrad ({detector_k:.3f} 1/angstrom, "
                f"detector.pixels={self.pixels}, detector.k_sampling={self.k_sampling}) lies beyond the simulated "
                f"range {self.max_simulated_k:.3f} 1/angstrom of simulate.sampling_angstrom={self.sampling}: "
                f"expected sampling_angstrom <= {1.0 / (3.0 * detector_k):.4f}"
            )
        if not self.holds_probe():
            needed = PROBE_MARGIN * self.probe_diameter + 2 * self.taper + 4.0
            raise StemstrainInputError(
                f"simulation box {self.box_scale:g}/k_sampling = {self.box:.1f} angstrom (detector.k_sampling="
                f"{self.k_sampling}) is too small for a {self.probe_diameter:.1f} angstrom probe "
                f"(optics.semiangle_mrad={self.semiangle_mrad:g} at {self.energy_eV:g} eV) and {self.taper} angstrom "
                f"tapers: expected at least {needed:.1f} angstrom (a larger convergence semiangle)"
            )

    def holds_probe(self) -> bool:
        """Whether the box holds the probe with its Airy tails, the tapers and a margin."""
        return self.box >= PROBE_MARGIN * self.probe_diameter + 2 * self.taper + 4.0

    def fitted(self, minimum: float = 1.0) -> SimulationOptics:
        """The same optics in the smallest box of :data:`BOX_SCALES` that holds the probe (the largest if none).

        Parameters
        ----------
        minimum : float
            Smallest box side considered [1/k_sampling] (``simulate.box_scale_min``).
        """
        for scale in (s for s in BOX_SCALES if s >= minimum):
            candidate = dataclasses.replace(self, box_scale=scale)
            if candidate.holds_probe():
                return candidate
        return dataclasses.replace(self, box_scale=BOX_SCALES[-1])


def _fast_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def exit_plane_periods(crystal: str, thicknesses_nm) -> np.ndarray:
    """Number of crystal periods along the zone axis closest to each thickness (at least one)."""
    period = get_crystal(crystal).period
    thicknesses = np.asarray(thicknesses_nm, dtype=float)
    if np.any(~np.isfinite(thicknesses)) or np.any(thicknesses <= 0):
        raise StemstrainInputError(f"thicknesses must be positive [nm], found {thicknesses.tolist()}")
    return np.maximum(1, np.rint(10.0 * thicknesses / period)).astype(int)


def strained_box(crystal: str, deformation: np.ndarray, box: float) -> ase.Atoms:
    """Cut an orthogonal box from a crystal deformed by F about the box centre.

    Parameters
    ----------
    crystal : str
        Crystal name.
    deformation : ndarray (2, 2)
        In-plane deformation gradient F acting on (x, y) column vectors.
    box : float
        Side of the square box [angstrom].

    Returns
    -------
    ase.Atoms
        One period along z; a lattice point of the unstrained crystal sits at the box centre.
    """
    unit = crystal_unit(crystal)
    lengths = unit.cell.lengths()
    deformation = np.asarray(deformation, dtype=float)
    half = 0.5 * box + 2.0
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    reach = np.abs(corners @ np.linalg.inv(deformation).T).max(axis=0)
    n_x, n_y = (np.ceil(reach / lengths[:2]).astype(int) + 1).tolist()
    i, j = np.meshgrid(np.arange(-n_x, n_x + 1), np.arange(-n_y, n_y + 1), indexing="ij")
    offsets = np.stack([i.ravel() * lengths[0], j.ravel() * lengths[1]], axis=1)
    xy = (offsets[:, None, :] + unit.positions[None, :, :2]).reshape(-1, 2)
    xy = xy @ deformation.T + 0.5 * box
    z = np.tile(unit.positions[:, 2], len(offsets))
    symbols = np.tile(unit.get_chemical_symbols(), len(offsets))
    inside = np.all((xy >= 0) & (xy < box), axis=1)
    positions = np.column_stack([xy[inside], z[inside]])
    return ase.Atoms(symbols[inside].tolist(), positions=positions, cell=[box, box, lengths[2]], pbc=True)


def probe_positions_in_cell(crystal: str, deformation: np.ndarray, fractions: np.ndarray, box: float) -> np.ndarray:
    """Probe positions at fractional coordinates of the strained projected cell next to the box centre.

    Parameters
    ----------
    fractions : ndarray (m, 2)
        Fractional coordinates in the projected primitive cell.

    Returns
    -------
    ndarray (m, 2)
        Positions (x, y) in box coordinates [angstrom].
    """
    cell = np.asarray(deformation, dtype=float) @ projected_cell(crystal)
    return 0.5 * box + np.asarray(fractions, dtype=float) @ cell.T


def phonon_seeds(seed: int, state: int, positions: int) -> np.ndarray:
    """Seeds of the thermal displacements of the probe positions of one strain state, one per position.

    A probe averages its own thermal motion over its dwell time, so each position gets a draw of its own
    (the k-th of the state's sequence). One draw shared by the positions of a state (a reference region
    among them) would put its unconverged thermal shift of the lattice into all of them alike: up to a
    few 1e-3 with 4 configurations (docs/results.md, stop 51).

    Parameters
    ----------
    seed : int
        Seed of the scan or state scan.
    state : int
        Index of the strain state.
    positions : int
        Probe positions of the state.

    Returns
    -------
    ndarray (positions,) int
        Seeds for :func:`simulate_patterns`, one per position.
    """
    return np.random.default_rng([seed, state]).integers(2**31, size=positions)


def _taper_window(optics: SimulationOptics) -> np.ndarray:
    x = (np.arange(optics.gpts) + 0.5) * optics.box / optics.gpts
    edge = np.minimum(x, optics.box - x) / optics.taper
    ramp = np.where(edge >= 1.0, 1.0, np.sin(0.5 * np.pi * np.clip(edge, 0.0, 1.0)) ** 2)
    return ramp.astype(np.float32)


def _detector_matrix(optics: SimulationOptics) -> np.ndarray:
    """Rows of the Fourier transform at the detector's fine frequencies (s per pixel) [shape (s P, gpts)]."""
    s = optics.oversampling
    fine = s * (np.arange(optics.pixels) - optics.pixels // 2)
    fine = (fine[:, None] + np.arange(s) - s // 2).ravel()
    k = fine * optics.k_sampling / s
    x = np.arange(optics.gpts) * optics.box / optics.gpts
    return np.exp(-2j * np.pi * np.outer(k, x)).astype(np.complex64)


def diffraction_patterns(exit_waves: np.ndarray, optics: SimulationOptics) -> np.ndarray:
    """Detector images of exit waves, each pixel integrating its area.

    Parameters
    ----------
    exit_waves : ndarray (..., gpts_x, gpts_y) complex
        Exit waves in abTEM's axis order (x first).
    optics : SimulationOptics
        Detector calibration.

    Returns
    -------
    ndarray (..., pixels, pixels) float32
        Intensity (k_y, k_x) as a fraction of the exit-wave intensity.
    """
    window = _taper_window(optics)
    norm = np.sum(np.abs(exit_waves) ** 2, axis=(-2, -1), keepdims=True)
    waves = exit_waves * (window[:, None] * window[None, :])
    rows = _detector_matrix(optics)
    # psi[x, y] -> A[k_x, k_y] = sum_x E[k_x, x] sum_y psi[x, y] E[k_y, y]; contiguous operands keep BLAS in use.
    # One BLAS thread: the round-off (and so a rare Poisson count) must not depend on the process's thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        amplitude = rows @ (np.ascontiguousarray(waves, dtype=np.complex64) @ rows.T)
    # Parseval for the wave zero-padded to the fine period s / k_sampling (s gpts / box_scale points).
    padded_points = optics.oversampling * optics.gpts / optics.box_scale
    fine = np.abs(amplitude) ** 2 / (padded_points**2 * norm)
    p, s = optics.pixels, optics.oversampling
    binned = fine.reshape(*fine.shape[:-2], p, s, p, s).sum(axis=(-3, -1))
    return np.ascontiguousarray(np.swapaxes(binned, -1, -2), dtype=np.float32)


def _precession_tilts(tilts: int, angle_mrad: float) -> np.ndarray:
    if tilts <= 0 or angle_mrad <= 0:
        return np.zeros((1, 2))
    phi = 2 * np.pi * np.arange(tilts) / tilts
    return angle_mrad * np.column_stack([np.cos(phi), np.sin(phi)])


WAVE_BYTES = 2 * 2**30
"""Most exit-wave memory :func:`simulate_patterns` holds at once [bytes]: more positions are run in parts."""


def simulate_patterns(
    crystal: str,
    deformation: np.ndarray,
    thicknesses_nm,
    positions: np.ndarray,
    optics: SimulationOptics,
    frozen_phonons: int = 0,
    precession: tuple[int, float] = (0, 0.0),
    seed: int = 0,
    tilt_mrad: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Multislice diffraction patterns of a strained crystal for a thickness series.

    Parameters
    ----------
    crystal : str
        Crystal name.
    deformation : ndarray (2, 2)
        Deformation gradient F = R(θ)(I + ε) on (x, y).
    thicknesses_nm : sequence of float
        Thicknesses [nm]; each is rounded to a whole number of periods along the zone axis.
    positions : ndarray (m, 2)
        Probe positions (x, y) in the box [angstrom].
    optics : SimulationOptics
        Optics and detector.
    frozen_phonons : int
        Frozen-phonon configurations averaged incoherently; 0 for a static lattice.
    precession : (int, float)
        Tilts around the cone and precession semi-angle [mrad]; (0, 0) switches precession off.
    seed : int
        Seed of the thermal displacements.
    tilt_mrad : (float, float)
        Specimen mistilt (x, y) against the beam [mrad]; the precession cone is centred on it.

    Returns
    -------
    patterns : ndarray (m, n_thickness, pixels, pixels) float32
        Intensity (k_y, k_x), summing to the fraction of electrons inside the detector.
    thickness_nm : ndarray (n_thickness,)
        Simulated thicknesses [nm].
    """
    spec = get_crystal(crystal)
    periods = exit_plane_periods(crystal, thicknesses_nm)
    atoms = strained_box(crystal, deformation, optics.box)
    slice_thickness = spec.period / spec.slices_per_period
    exit_planes = tuple(int(p) * spec.slices_per_period - 1 for p in np.unique(periods))

    def crystal_potential(member_seed: int | None) -> abtem.CrystalPotential:
        """The crystal, static (``None``) or one frozen-phonon member: its periods drawn from a pool of
        displaced ones seeded by ``member_seed``, as abTEM's ensemble reseeds each member's pool."""
        displaced = atoms
        if member_seed is not None:
            pool = min(16, int(periods.max()))
            displaced = abtem.FrozenPhonons(
                atoms, num_configs=pool, sigmas=dict(spec.rms_displacement), seed=member_seed
            )
        unit = abtem.Potential(displaced, gpts=optics.gpts, slice_thickness=slice_thickness, projection="infinite")
        return abtem.CrystalPotential(
            _transmission(unit, optics.energy_eV),
            repetitions=(1, 1, int(periods.max())),
            exit_planes=exit_planes,
            seeds=None if member_seed is None else (member_seed,),
            ensemble_mean=False,
        )

    members = [int(s) for s in np.random.default_rng(seed).integers(0, 2**31, frozen_phonons)] or [None]
    crystals = [crystal_potential(member) for member in members]
    positions = np.atleast_2d(np.asarray(positions, dtype=float))
    # The exit waves of every frozen phonon and exit plane are held at once: positions go in chunks that
    # keep them within WAVE_BYTES (a thickness fit to 120 nm with 4 frozen phonons in the 2x box held 24 GB).
    per_position = max(1, frozen_phonons) * len(exit_planes) * optics.gpts**2 * np.dtype(np.complex64).itemsize
    chunk = max(1, int(WAVE_BYTES // per_position))
    total = 0.0
    tilts = _precession_tilts(*precession) + np.asarray(tilt_mrad, dtype=float)
    # Nested dask inside a worker task would submit to the cluster; the task itself is the unit of parallelism.
    with dask.config.set(scheduler="synchronous"):
        for tilt in tilts:
            probe = abtem.Probe(
                energy=optics.energy_eV, semiangle_cutoff=optics.semiangle_mrad, tilt=tuple(tilt), gpts=optics.gpts
            )
            probe.grid.match(crystals[0])
            parts = []
            for start in range(0, len(positions), chunk):
                part = positions[start : start + chunk]
                waves = np.concatenate(
                    [
                        probe.multislice(crystal, scan=abtem.CustomScan(part), lazy=False).array.reshape(
                            -1, len(exit_planes), len(part), optics.gpts, optics.gpts
                        )
                        for crystal in crystals
                    ]
                )
                parts.append(diffraction_patterns(waves, optics).mean(axis=0))
            total = total + np.concatenate(parts, axis=1)
    patterns = np.swapaxes(total / len(tilts), 0, 1)
    plane_of = {p: i for i, p in enumerate(np.unique(periods))}
    patterns = patterns[:, [plane_of[p] for p in periods]]
    return patterns.astype(np.float32), periods * spec.period / 10.0


class _Transmission(TransmissionFunction):
    """abTEM's TransmissionFunction that ``CrystalPotential`` can give an ensemble axis.

    ``CrystalPotential`` adds a frozen-phonon axis to its unit with ``expand_dims``, which rebuilds the
    object with ``exit_planes``, ``ensemble_axes_metadata`` and ``metadata``; abTEM 1.0.11's
    TransmissionFunction does not take them.
    """

    def __init__(
        self,
        array,
        slice_thickness,
        extent=None,
        sampling=None,
        energy=None,
        exit_planes=None,
        ensemble_axes_metadata=None,
        metadata=None,
    ):
        self._accelerator = Accelerator(energy=energy)
        PotentialArray.__init__(
            self, array, slice_thickness, extent, sampling, exit_planes, ensemble_axes_metadata, metadata
        )


def _transmission(unit: abtem.Potential, energy: float) -> _Transmission:
    """The band-limited transmission functions of one period (each frozen-phonon configuration), computed once.

    abTEM's multislice computes exp(iσV) and band-limits it (two FFTs) at every slice of every
    repetition of a ``CrystalPotential``, though each repetition draws its slices from the same period
    (or pool of displaced periods). Given the unit's transmission functions, band-limited as the
    multislice step does, it only transmits and propagates: the same patterns to the bit in 0.6-0.8
    of the time (measured in the 2x box: 0.61 for a Si [110] scan position at 37 and 75 nm, 0.75-0.77
    for a training state of four positions and 14 exit planes, static or with 2 frozen phonons).
    """
    built = unit.build(lazy=False)
    array = PotentialArray._transmission_function(built.array, energy=energy)
    transmission = _Transmission(
        array,
        built.slice_thickness,
        extent=built.extent,
        energy=energy,
        ensemble_axes_metadata=built.ensemble_axes_metadata,
    )
    return AntialiasAperture().bandlimit(transmission)


def vacuum_probe(optics: SimulationOptics) -> np.ndarray:
    """Detector image of the probe without specimen, (pixels, pixels) float32 summing to ~1."""
    probe = abtem.Probe(energy=optics.energy_eV, semiangle_cutoff=optics.semiangle_mrad, gpts=optics.gpts)
    probe.grid.extent = optics.box
    with dask.config.set(scheduler="synchronous"):
        wave = probe.build((0.5 * optics.box, 0.5 * optics.box), lazy=False).array
    return diffraction_patterns(wave, optics)
