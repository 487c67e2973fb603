"""Training set: strained crystals through real multislice, with noisy inputs and kinematic spot targets.

Layout of the store (the training-set contract of DESIGN.md): ``inputs`` and ``targets`` (sample, k_y,
k_x) float32, labels ``strain`` (sample, component = e_xx, e_yy, e_xy, theta), ``thickness_nm``,
``material``, ``orientation_rad`` (the in-plane orientation of the unstrained crystal), the optics,
``dose`` and the other noise parameters per sample, and the target spots themselves (``spots``
(sample, spot, xy) [px] and ``spot_amplitudes``), so that training can move them exactly with any
geometric augmentation. Sample order: strain state, then probe position, then thickness. Each chunk
holds whole strain states and is simulated by one task with a random generator seeded by
``(seed, chunk index)``, so the store does not depend on the executor, on the order in which
chunks finish or on interruptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from stemstrain import __version__
from stemstrain.config import Config
from stemstrain.errors import StemstrainInputError
from stemstrain.execute import run_tasks
from stemstrain.io import ResumableStore, reference_k
from stemstrain.lattice import reciprocal_vectors
from stemstrain.simulate.crystals import get_crystal, projected_cell
from stemstrain.simulate.multislice import (
    BOX_SCALES,
    PROBE_MARGIN,
    SimulationOptics,
    probe_positions_in_cell,
    simulate_patterns,
)
from stemstrain.simulate.noise import apply_noise, distort_points, sample_noise
from stemstrain.simulate.targets import kinematic_spots, pixels_from_k, spot_weights, target_image
from stemstrain.strain import STRAIN_COMPONENTS, deformation_from_strain, rotation_matrix

__all__ = ["check_simulation", "optics_from_config", "simulate_chunk", "simulate_training_set", "training_layout"]

log = logging.getLogger(__name__)

MATERIAL_DTYPE = "<U16"
MAX_SPOTS = 256  # target spots stored per pattern, the strongest first (rutile [001] has ~200 in the detector)


@contextlib.contextmanager
def _fixed_width_strings() -> Iterator[None]:
    """Silence zarr's warning that fixed-width strings lack a Zarr v3 spec (zarr-python reads them back)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FixedLengthUTF32.*")
        yield


def optics_from_config(config: Config) -> SimulationOptics:
    """Simulation optics of a configuration (optics, detector and potential sampling)."""
    return SimulationOptics(
        energy_eV=config.optics.energy_eV,
        semiangle_mrad=config.optics.semiangle_mrad,
        pixels=config.detector.pixels,
        k_sampling=config.detector.k_sampling,
        sampling=config.simulate.sampling_angstrom,
    )


def check_simulation(config: Config, crystals: list[str]) -> SimulationOptics:
    """Validate what the simulation needs beyond the schema; return its optics.

    Raises
    ------
    StemstrainInputError
        For an unknown crystal or a detector reaching beyond the simulated scattering angles.
    """
    for name in crystals:
        get_crystal(name)
    optics = optics_from_config(config).fitted(config.simulate.box_scale_min)
    optics.check()
    return optics


def training_layout(config: Config) -> tuple[int, int, int]:
    """Patterns per strain state, strain states per chunk and number of chunks."""
    sim = config.simulate
    per_state = sim.positions_per_state * len(sim.thicknesses_nm)
    return per_state, sim.states_per_chunk, math.ceil(sim.n_samples / sim.states_per_chunk)


@dataclasses.dataclass(frozen=True)
class StrainState:
    """Everything drawn for one strain state: the crystal, its deformation and the microscope.

    Attributes
    ----------
    crystal : str
        Crystal name.
    strain : ndarray (4,)
        e_xx, e_yy, e_xy [1] and rotation theta [rad] relative to the crystal at ``orientation``.
    orientation : float
        In-plane orientation of the unstrained crystal, counter-clockwise from the cell's x axis [rad].
    tilt_mrad : ndarray (2,)
        Specimen mistilt (x, y) [mrad].
    optics : SimulationOptics
        Beam energy, convergence semiangle and the simulation box that holds the probe.
    thicknesses_nm : ndarray
        Exit-plane thicknesses [nm].
    frozen_phonons : int
        Frozen-phonon configurations (0: static lattice).
    """

    crystal: str
    strain: np.ndarray
    orientation: float
    tilt_mrad: np.ndarray
    optics: SimulationOptics
    thicknesses_nm: np.ndarray
    frozen_phonons: int

    @property
    def deformation(self) -> np.ndarray:
        """F = R(θ)(I + ε) R(orientation): the strained crystal at its orientation, on (x, y) [1]."""
        return deformation_from_strain(*self.strain) @ rotation_matrix(self.orientation)


def _draw_strain(rng: np.random.Generator, strain_max: float, rotation_max: float) -> np.ndarray:
    strain = rng.uniform(-strain_max, strain_max, 3) if strain_max > 0 else np.zeros(3)
    theta = rng.uniform(-rotation_max, rotation_max) if rotation_max > 0 else 0.0
    return np.array([*strain, theta])


def _draw_tilt(rng: np.random.Generator, tilt_max: float) -> np.ndarray:
    """Mistilt uniform in a disk of radius ``tilt_max`` [mrad]."""
    if tilt_max <= 0:
        return np.zeros(2)
    radius, angle = tilt_max * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    return radius * np.array([np.cos(angle), np.sin(angle)])


def _draw_optics(rng: np.random.Generator, config: Config, crystal: str) -> SimulationOptics:
    """Beam energy and convergence semiangle of a strain state, in the smallest box that holds the probe.

    The semiangle is log-uniform in ``simulate.semiangle_range_mrad``, capped so that disks stay apart
    (diameter at most 0.8 of the shortest reciprocal lattice vector) and raised so that the probe fits
    the largest box; with neither option the configuration's optics are used.
    """
    sim, optics = config.simulate, optics_from_config(config)
    energy = float(rng.choice(sim.energies_eV)) if sim.energies_eV else optics.energy_eV
    optics = dataclasses.replace(optics, energy_eV=energy)
    if sim.semiangle_range_mrad is not None:
        low, high = sim.semiangle_range_mrad
        g_min = np.min(np.linalg.norm(reciprocal_vectors(projected_cell(crystal)), axis=0))
        high = min(high, 1e3 * 0.4 * g_min * optics.wavelength)
        widest = dataclasses.replace(optics, box_scale=BOX_SCALES[-1])
        low = max(low, 1e3 * 1.22 * optics.wavelength * PROBE_MARGIN / (widest.box - 2 * optics.taper - 4.0))
        semiangle = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if low < high else high
        optics = dataclasses.replace(optics, semiangle_mrad=semiangle)
    return optics.fitted(sim.box_scale_min)


def draw_state(rng: np.random.Generator, config: Config, state: int) -> StrainState:
    """Draw strain state ``state`` of the training set (crystals in turn).

    Options left at their defaults draw nothing, so a configuration without them gives the same
    store as before they existed.
    """
    sim = config.simulate
    crystal = sim.crystals[state % len(sim.crystals)]
    strain = _draw_strain(rng, sim.strain_max, sim.rotation_max_rad)
    tilt = _draw_tilt(rng, sim.tilt_max_mrad)
    orientation = float(rng.uniform(0, 2 * np.pi)) if sim.orientation == "random" else 0.0
    scale = float(np.exp(rng.uniform(-1, 1) * np.log1p(sim.thickness_jitter))) if sim.thickness_jitter else 1.0
    frozen = sim.frozen_phonons
    if frozen and sim.frozen_phonon_fraction < 1:
        frozen = frozen if rng.uniform() < sim.frozen_phonon_fraction else 0
    optics = _draw_optics(rng, config, crystal) if sim.energies_eV or sim.semiangle_range_mrad else None
    return StrainState(
        crystal=crystal,
        strain=strain,
        orientation=orientation,
        tilt_mrad=tilt,
        optics=optics or optics_from_config(config),
        thicknesses_nm=scale * np.asarray(sim.thicknesses_nm, dtype=float),
        frozen_phonons=frozen,
    )


def simulate_chunk(config: Config, chunk: int) -> dict[str, np.ndarray]:
    """Simulate the strain states of one chunk (a pure function of the config and the chunk index).

    Returns
    -------
    dict of ndarray
        ``inputs``, ``targets`` (n, pixels, pixels) float32, ``spots`` (n, MAX_SPOTS, 2) and
        ``spot_amplitudes`` (n, MAX_SPOTS), and the per-sample labels.
    """
    sim = config.simulate
    _, states_per_chunk, _ = training_layout(config)
    first = chunk * states_per_chunk
    states = range(first, min(first + states_per_chunk, sim.n_samples))
    rng = np.random.default_rng([sim.seed, chunk])
    columns: dict[str, list] = {name: [] for name in ("inputs", "targets", "spots", "spot_amplitudes", *_LABELS)}
    series = None
    for index in states:
        if index % sim.strain_series == 0:
            state = series = draw_state(rng, config, index)
        else:  # the next state of a strain series: its first state's crystal and microscope, a new strain
            state = dataclasses.replace(series, strain=_draw_strain(rng, sim.strain_max, sim.rotation_max_rad))
        optics = state.optics
        k_max = (optics.pixels // 2 - 1) * optics.k_sampling
        positions = probe_positions_in_cell(
            state.crystal, state.deformation, rng.uniform(0, 1, (sim.positions_per_state, 2)), optics.box
        )
        patterns, thickness = simulate_patterns(
            state.crystal,
            state.deformation,
            state.thicknesses_nm,
            positions,
            optics,
            frozen_phonons=state.frozen_phonons,
            precession=(sim.precession.tilts, sim.precession.angle_mrad),
            seed=int(rng.integers(2**31)),
            tilt_mrad=tuple(state.tilt_mrad),
        )
        g_xy, intensity, _ = kinematic_spots(state.crystal, state.deformation, k_max, optics.energy_eV)
        weights = spot_weights(intensity, g_xy)
        order = np.argsort(-weights)[: min(MAX_SPOTS, int((weights > 0).sum()))]
        spots_px, amplitudes = pixels_from_k(g_xy[order], optics.pixels, optics.k_sampling), weights[order]
        for pattern, t in zip(
            patterns.reshape(-1, optics.pixels, optics.pixels), np.tile(thickness, len(positions)), strict=True
        ):
            noise = sample_noise(rng, sim.noise)
            columns["inputs"].append(apply_noise(pattern, noise, optics.k_sampling, rng))
            moved = distort_points(spots_px, noise, optics.pixels)
            columns["targets"].append(target_image(moved, amplitudes, optics.pixels, sim.target_sigma_px))
            columns["spots"].append(_padded(moved, (MAX_SPOTS, 2)))
            columns["spot_amplitudes"].append(_padded(amplitudes, (MAX_SPOTS,), fill=0.0))
            labels = {
                "strain": state.strain,
                "thickness_nm": t,
                "material": state.crystal,
                "orientation_rad": state.orientation,
                "energy_eV": optics.energy_eV,
                "semiangle_mrad": optics.semiangle_mrad,
                "frozen_phonons": state.frozen_phonons,
                "dose": noise.dose,
                "background": noise.background,
                "blur_px": noise.blur_px,
                "shift_px": noise.shift_px,
                "ellipticity": noise.ellipticity,
                "tilt_mrad": state.tilt_mrad,
            }
            for name, value in labels.items():
                columns[name].append(value)
    result = {name: np.asarray(values) for name, values in columns.items()}
    result["material"] = result["material"].astype(MATERIAL_DTYPE)
    for name in ("spots", "spot_amplitudes"):
        result[name] = result[name].astype(np.float32)
    return result


def _padded(values: np.ndarray, shape: tuple[int, ...], fill: float = np.nan) -> np.ndarray:
    out = np.full(shape, fill, dtype=np.float32)
    out[: len(values)] = values
    return out


_LABELS = {
    "strain": (("sample", "component"), "float64", "1", "strain e_xx, e_yy, e_xy [1] and rotation theta [rad]"),
    "thickness_nm": (("sample",), "float64", "nm", "specimen thickness"),
    "material": (("sample",), MATERIAL_DTYPE, "", "crystal name"),
    "orientation_rad": (("sample",), "float64", "rad", "in-plane orientation of the unstrained crystal"),
    "energy_eV": (("sample",), "float64", "eV", "beam energy"),
    "semiangle_mrad": (("sample",), "float64", "mrad", "probe convergence semiangle"),
    "frozen_phonons": (("sample",), "int64", "1", "frozen-phonon configurations (0: static lattice)"),
    "dose": (("sample",), "float64", "e-", "incident electrons per pattern"),
    "background": (("sample",), "float64", "1", "diffuse background fraction"),
    "blur_px": (("sample",), "float64", "px", "detector blur sigma"),
    "shift_px": (("sample", "xy"), "float64", "px", "pattern shift (x, y)"),
    "ellipticity": (("sample",), "float64", "1", "elliptical distortion (axis ratio - 1)"),
    "tilt_mrad": (("sample", "xy"), "float64", "mrad", "specimen mistilt (x, y)"),
    "spots": (("sample", "spot", "xy"), "float32", "px", "target spot centres (x, y), strongest first, NaN-padded"),
    "spot_amplitudes": (("sample", "spot"), "float32", "1", "target spot amplitudes, 0 for padding"),
}
_LABEL_SIZES = {"component": len(STRAIN_COMPONENTS), "spot": MAX_SPOTS, "xy": 2}


def _template(config: Config, n_patterns: int, chunk_patterns: int) -> xr.Dataset:
    pixels, k_sampling = config.detector.pixels, config.detector.k_sampling
    image_chunks = (chunk_patterns, pixels, pixels)
    k = reference_k(pixels, k_sampling)
    variables = {
        "inputs": (
            ("sample", "k_y", "k_x"),
            da.zeros((n_patterns, pixels, pixels), dtype=np.float32, chunks=image_chunks),
            {"units": "counts", "long_name": "noisy diffraction pattern"},
        ),
        "targets": (
            ("sample", "k_y", "k_x"),
            da.zeros((n_patterns, pixels, pixels), dtype=np.float32, chunks=image_chunks),
            {"units": "1", "long_name": "Gaussian Bragg-spot target image (target > 0 is the spot mask)"},
        ),
    }
    for name, (dims, dtype, units, long_name) in _LABELS.items():
        shape = (n_patterns, *(_LABEL_SIZES[dim] for dim in dims[1:]))
        chunks = (chunk_patterns, *shape[1:])
        fill = "" if dtype == MATERIAL_DTYPE else np.nan if name == "spots" else 0
        variables[name] = (
            dims,
            da.full(shape, fill, dtype=dtype, chunks=chunks),
            {"units": units, "long_name": long_name},
        )
    sim = config.simulate
    return xr.Dataset(
        variables,
        coords={
            "sample": ("sample", np.arange(n_patterns)),
            "k_y": ("k_y", k, {"units": "1/angstrom", "long_name": "scattering vector y"}),
            "k_x": ("k_x", k, {"units": "1/angstrom", "long_name": "scattering vector x"}),
            "component": ("component", list(STRAIN_COMPONENTS)),
            "xy": ("xy", ["x", "y"]),
            "spot": ("spot", np.arange(MAX_SPOTS)),
        },
        attrs={
            **_optics_attrs(config),
            "k_sampling": k_sampling,
            "pixels": pixels,
            "crystals": list(sim.crystals),
            "target_sigma_px": sim.target_sigma_px,
            "target_weighting": "sqrt of kinematic intensity relative to the strongest g != 0 reflection, clipped at 1",
            "seed": sim.seed,
            "simulate_config": json.dumps(sim.model_dump(mode="json")),
            "software_version": __version__,
        },
    )


def _finished_settings(out: Path, attrs: dict) -> tuple[dict, dict]:
    """The settings of the finished store ``out`` and those in ``attrs``, flat (``simulate.<option>``).

    Where the simulation ran (``simulate.cluster``) and the software version do not count.
    """

    def settings(values: dict) -> dict:
        flat = json.loads(json.dumps({k: v for k, v in values.items() if k != "software_version"}))
        simulate = flat.pop("simulate_config", None)
        simulate = json.loads(simulate) if isinstance(simulate, str) else {}
        simulate.pop("cluster", None)
        return flat | {f"simulate.{k}": v for k, v in simulate.items()}

    try:
        found = settings(dict(xr.open_zarr(out).attrs))
    except Exception as err:  # zarr and xarray raise many types for unreadable stores
        raise StemstrainInputError(
            f"{out}: exists but is not a readable training set ({err}); remove it or pass --fresh"
        ) from err
    return found, settings(attrs)


def _chunks_to_keep(out: Path, attrs: dict, states_per_chunk: int) -> int | None:
    """How many chunks of the finished store ``out`` the set of ``attrs`` can take over.

    None when ``out`` was made from the same settings (nothing to do). A set that differs only in a
    larger ``simulate.n_samples`` keeps the whole chunks of ``out``: each chunk is a pure function of
    (seed, chunk index), so they are the first chunks of the larger set.

    Raises
    ------
    StemstrainInputError
        When ``out`` was made from other settings, or from more strain states.
    """
    found, wanted = _finished_settings(out, attrs)
    differ = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
    if not differ:
        return None
    grows = differ == ["simulate.n_samples"] and found["simulate.n_samples"] < wanted["simulate.n_samples"]
    if not grows:
        raise StemstrainInputError(
            f"{out}: a complete training set made from other settings is there (they differ in "
            f"{', '.join(differ)}); write to another path, remove it, or pass --fresh to simulate it again "
            "(only a larger simulate.n_samples extends a finished set)"
        )
    return found["simulate.n_samples"] // states_per_chunk


def _copy_chunks(source: Path, store: ResumableStore, n_chunks: int, chunk_patterns: int) -> None:
    """Copy the first ``n_chunks`` chunks of the finished set ``source`` into ``store`` (skipping done ones)."""
    finished = xr.open_zarr(source)
    names = list(finished.data_vars)
    for chunk in range(n_chunks):
        key = f"chunk-{chunk}"
        if store.is_done(key):
            continue
        region = {"sample": slice(chunk * chunk_patterns, (chunk + 1) * chunk_patterns)}
        part = finished[names].isel(region).load()
        part = part.drop_vars([name for name in part.coords if "sample" not in part[name].dims])
        with _fixed_width_strings():
            store.write_region(part, region, key)


def _optics_attrs(config: Config) -> dict:
    """Beam energy and semiangle of the set: one value each, or the ranges drawn per strain state."""
    sim = config.simulate
    if not (sim.energies_eV or sim.semiangle_range_mrad):
        return {"energy_eV": config.optics.energy_eV, "semiangle_mrad": config.optics.semiangle_mrad}
    energies = sim.energies_eV or [config.optics.energy_eV]
    semiangles = sim.semiangle_range_mrad or (config.optics.semiangle_mrad,) * 2
    return {"energy_eV_range": [min(energies), max(energies)], "semiangle_mrad_range": list(semiangles)}


def simulate_training_set(config: Config, out: Path, fresh: bool = False) -> Path:
    """Simulate the training set of a configuration into a chunked, resumable Zarr store.

    Parameters
    ----------
    config : Config
        Whole configuration (optics, detector and the ``simulate`` section).
    out : Path
        Final store path; a run interrupted earlier resumes from ``<out>.partial``.
    fresh : bool
        Discard a partial store of an earlier run instead of resuming it, and simulate a complete
        ``out`` again (it is replaced when the new one is complete).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    StemstrainInputError
        ``out`` is a complete training set simulated from other settings (and ``fresh`` is not set).
    """
    sim = config.simulate
    check_simulation(config, sim.crystals)
    per_state, states_per_chunk, n_chunks = training_layout(config)
    n_patterns = sim.n_samples * per_state
    chunk_patterns = states_per_chunk * per_state
    template = _template(config, n_patterns, chunk_patterns)
    kept = 0
    if Path(out).exists() and not fresh:
        # A complete set is hours of multislice: never redo it unasked, and keep it when it grows.
        kept = _chunks_to_keep(Path(out), template.attrs, states_per_chunk)
        if kept is None:
            log.info("simulate: %s is complete and made from these settings; nothing to do (--fresh redoes it)", out)
            return Path(out)
    store = ResumableStore(out)
    with _fixed_width_strings():
        store.start(template, fresh=fresh)
    if kept:
        # The finished set stays where it is until the larger one replaces it (finalize).
        log.info("simulate: extending %s: its %d whole chunks are copied, the new strain states simulated", out, kept)
        _copy_chunks(Path(out), store, kept, chunk_patterns)
    todo = [(f"chunk-{c}", (config, c)) for c in range(n_chunks) if not store.is_done(f"chunk-{c}")]
    log.info(
        "simulate: %d strain states x %d patterns in %d chunks (%d to do), crystals %s, thicknesses %s nm",
        sim.n_samples,
        per_state,
        n_chunks,
        len(todo),
        sim.crystals,
        sim.thicknesses_nm,
    )

    def write(key: str, result: dict) -> None:
        start = int(key.split("-")[1]) * chunk_patterns
        region = {"sample": slice(start, start + len(result["inputs"]))}
        variables = {"inputs": (("sample", "k_y", "k_x"), result["inputs"])}
        variables["targets"] = (("sample", "k_y", "k_x"), result["targets"])
        variables.update({name: (dims, result[name]) for name, (dims, *_) in _LABELS.items()})
        with _fixed_width_strings():
            store.write_region(xr.Dataset(variables), region, key)

    sizes = [chunk_patterns] * len(todo)
    if todo and todo[-1][0] == f"chunk-{n_chunks - 1}":
        sizes[-1] = n_patterns - (n_chunks - 1) * chunk_patterns
    run_tasks(simulate_chunk, todo, sim.cluster, write, "simulate", items_per_task=sizes)
    return store.finalize()
