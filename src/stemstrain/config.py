"""Typed, validated configuration (one pydantic model per stage).

``config.yaml`` holds the science: optics, detector, crystals, sizes, the network and the loss
weight γ. The cluster lives in the Snakemake profile, except the dask clusters of the simulate
and strain stages (``simulate.cluster``, ``strain.cluster``: one :class:`Cluster` type).
``workflow/schemas/config.schema.yaml`` is generated from these models (``python -m stemstrain.config``)
so that Snakemake validates the same thing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from stemstrain.errors import StemstrainInputError
from stemstrain.runtime import ENGINES, PRECISIONS

SCHEMA_PATH = Path("workflow/schemas/config.schema.yaml")

# The methods of the strain run (their detectors: stemstrain.detect), the one list that the CLI,
# the config and the workflow accept.
NETWORK = "unet"
BASELINES = ("bragg", "cepstrum", "cepstrum-multi")  # the classical detectors the network is measured against
METHODS = (NETWORK, *BASELINES, "peaks")  # peaks: maxima of the raw patterns, no network (sharp spots, benchmarks)
# The network's subpixel read-out: its offset heads, or the probe template at each of its spots (detect/network.py)
REFINEMENTS = ("auto", "offsets", "template")


class _Section(BaseModel):
    # inf and NaN pass gt/lt bounds; a NaN strain amplitude or an infinite k-sampling hung or crashed a run
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Optics(_Section):
    """Electron-optical settings of the microscope."""

    energy_eV: float = Field(200e3, gt=0, description="Beam energy [eV].")
    semiangle_mrad: float = Field(1.5, gt=0, description="Probe convergence semiangle [mrad].")


class Detector(_Section):
    """Diffraction-pattern sampling; k = 0 lies at index ``pixels // 2`` on both axes."""

    pixels: int = Field(128, ge=16, description="Pattern size in pixels (square).")
    k_sampling: float = Field(0.025, gt=0, description="Reciprocal-space sampling [1/angstrom per pixel].")

    @property
    def max_k(self) -> float:
        """Largest |k| along an axis inside the detector [1/angstrom]."""
        return (self.pixels // 2) * self.k_sampling


class Noise(_Section):
    """Detector and dose model applied to simulated patterns (ranges are sampled per pattern)."""

    dose_range: tuple[float, float] = Field((1e4, 1e7), description="Electrons per pattern, log-uniform [e-].")
    background_range: tuple[float, float] = Field(
        (0.0, 0.05), description="Smooth diffuse background as a fraction of the total intensity [1]."
    )
    blur_px_range: tuple[float, float] = Field((0.0, 1.0), description="Gaussian detector blur sigma [px].")
    shift_px: float = Field(0.5, ge=0, description="Largest random pattern shift (descan) [px].")
    ellipticity: float = Field(0.005, ge=0, description="Largest projector ellipticity (axis ratio - 1) [1].")


class Precession(_Section):
    """Optional precession (beam tilts averaged incoherently)."""

    tilts: int = Field(0, ge=0, description="Number of tilts around the cone; 0 switches precession off.")
    angle_mrad: float = Field(0.0, ge=0, description="Precession semi-angle [mrad].")


class Cluster(_Section):
    """Where a dask stage (simulate, strain) runs: in-process, a LocalCluster or a dask-jobqueue SLURMCluster."""

    kind: Literal["local", "slurm", "none"] = Field("local", description="local, slurm or none (in-process).")
    workers: int | None = Field(
        None, ge=1, description="Workers (local) or jobs (slurm); default: CPU cores / threads_per_worker, 1 job."
    )
    threads_per_worker: int = Field(1, ge=1, description="Threads per dask worker.")
    queue: str | None = Field(None, description="Slurm partition.")
    account: str | None = Field(None, description="Slurm account.")
    cores: int | None = Field(None, ge=1, description="Cores per Slurm job; default: dask's jobqueue.yaml, else 1.")
    memory: str | None = Field(None, description="Memory per Slurm job; default: dask's jobqueue.yaml, else 4GB.")
    walltime: str = Field("01:00:00", description="Walltime per Slurm job (HH:MM:SS).")
    job_extra_directives: list[str] = Field(default_factory=list, description="Extra #SBATCH lines.")


class SimulateConfig(_Section):
    """Training-set simulation (real multislice with abTEM)."""

    crystals: list[str] = Field(["Si_110", "SrTiO3_001", "Au_001"], min_length=1, description="Crystal names.")
    thicknesses_nm: list[float] = Field([10.0, 20.0, 40.0], min_length=1, description="Thickness series [nm].")
    strain_max: float = Field(0.03, ge=0, lt=0.2, description="Largest |strain component| sampled [1].")
    rotation_max_rad: float = Field(0.03, ge=0, lt=0.5, description="Largest |rotation| sampled [rad].")
    n_samples: int = Field(256, ge=1, description="Number of strain states (each gives all thicknesses).")
    chunk_size: int = Field(32, ge=1, description="Patterns per Zarr chunk and per dask task.")
    seed: int = Field(0, description="Random seed; same seed gives the same store.")
    sampling_angstrom: float = Field(0.1, gt=0, description="Real-space sampling of the potential [angstrom].")
    box_scale_min: Literal[1.0, 1.5, 2.0] = Field(
        1.0,
        description="Smallest side of the simulation box [1/detector.k_sampling]; the box grows from it (1, 1.5, 2) "
        "until it holds the probe. The probe's Airy tails that a small box cuts off make every disk ring: at 1.5 mrad "
        "and 200 kV the 1x box (40 angstrom) gives a vacuum disk whose centre is 24 % dimmer than its neighbours and "
        "strain read-outs of thick crystals that move by up to 2e-3; 2 gives flat disks at about 4x the cost "
        "(bench/box_convergence.py).",
    )
    frozen_phonons: int = Field(0, ge=0, description="Frozen-phonon configurations; 0 for a static lattice.")
    positions_per_state: int = Field(
        1, ge=1, description="Probe positions per strain state (random in the unit cell), propagated together."
    )
    target_sigma_px: float = Field(1.0, gt=0, description="Gaussian sigma of the target spots [px].")
    tilt_max_mrad: float = Field(
        0.0, ge=0, description="Largest specimen mistilt per strain state, uniform in a disk [mrad]; 0: on axis."
    )
    orientation: Literal["fixed", "random"] = Field(
        "fixed",
        description="In-plane orientation of the crystal: fixed (cell x along k_x) or random (each strain state "
        "turns it about the zone axis by an angle uniform in [0, 2 pi); mirror images come from training's "
        "detector symmetries).",
    )
    thickness_jitter: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Each strain state scales thicknesses_nm by a factor log-uniform in [1/(1+j), 1+j] [1]; "
        "0: the listed thicknesses.",
    )
    frozen_phonon_fraction: float = Field(
        1.0, ge=0, le=1, description="Fraction of strain states with frozen_phonons configurations; the rest static."
    )
    energies_eV: list[PositiveFloat] | None = Field(
        None, description="Beam energies drawn uniformly per strain state [eV]; default: optics.energy_eV."
    )
    semiangle_range_mrad: tuple[PositiveFloat, PositiveFloat] | None = Field(
        None,
        description="Convergence semiangles drawn log-uniform per strain state [mrad], capped so that neighbouring "
        "disks do not overlap and the probe fits the simulation box; default: optics.semiangle_mrad.",
    )
    strain_series: int = Field(
        1,
        ge=1,
        description="Consecutive strain states that share crystal, orientation, mistilt, optics, thicknesses and "
        "frozen-phonon count and differ only in strain (and noise); 1: everything drawn per state. Training of the "
        "disk correction (stemstrain.train.disks) learns from such series what changes with strain.",
    )
    noise: Noise = Field(default_factory=Noise)
    precession: Precession = Field(default_factory=Precession)
    cluster: Cluster = Field(default_factory=Cluster)

    @property
    def states_per_chunk(self) -> int:
        """Strain states per chunk (and per task): whole states of chunk_size patterns, at least one."""
        return max(1, self.chunk_size // (self.positions_per_state * len(self.thicknesses_nm)))

    @model_validator(mode="after")
    def _consistent_options(self) -> SimulateConfig:
        bad = [t for t in self.thicknesses_nm if t <= 0]
        if bad:
            raise ValueError(f"thicknesses_nm must be positive, found {bad}")
        if self.semiangle_range_mrad is not None and self.semiangle_range_mrad[0] > self.semiangle_range_mrad[1]:
            raise ValueError(f"semiangle_range_mrad must be (low, high), found {list(self.semiangle_range_mrad)}")
        if self.n_samples % self.strain_series:
            raise ValueError(f"n_samples ({self.n_samples}) must be a multiple of strain_series ({self.strain_series})")
        if self.states_per_chunk % self.strain_series:
            raise ValueError(
                f"a chunk holds {self.states_per_chunk} strain states (chunk_size {self.chunk_size} / "
                f"(positions_per_state x {len(self.thicknesses_nm)} thicknesses)); strain_series "
                f"({self.strain_series}) must divide it, so that a series is simulated by one task"
            )
        return self


class ScanConfig(_Section):
    """A strained 4D test scan with known truth (``stemstrain simulate-scan``)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Scan name, used in output paths.")
    crystal: str = Field("Si_110", description="Crystal name.")
    thickness_nm: float = Field(30.0, gt=0, description="Specimen thickness [nm].")
    dose: float = Field(1e6, gt=0, description="Electrons per pattern [e-].")
    field: Literal["uniform", "gradient", "bump", "interface", "composite"] = Field(
        "gradient",
        description="Strain field; composite: a ramp of e_xx, a bump of e_yy, a shear changing sign along y and "
        "a ridge of rotation together.",
    )
    amplitude: float = Field(0.01, gt=-0.2, lt=0.2, description="Largest strain of the field [1].")
    scan_shape: tuple[PositiveInt, PositiveInt] = Field((16, 16), description="Scan positions (scan_y, scan_x).")
    step_nm: float = Field(0.5, gt=0, description="Scan step [nm].")
    reference_roi: tuple[int, int, int, int] | None = Field(
        None, description="[y0, y1, x0, x1] half-open scan indices of the unstrained reference region."
    )
    orientation_deg: float = Field(
        0.0,
        ge=-360,
        le=360,
        description="In-plane orientation of the unstrained crystal, counter-clockwise from the cell's x axis [deg]; "
        "the reference is that rotated crystal and the truth is relative to it.",
    )
    frozen_phonons: int = Field(0, ge=0, description="Frozen-phonon configurations.")
    seed: int = Field(1, description="Random seed of the noise.")


class ModelConfig(_Section):
    """U-Net mapping a diffraction pattern to its Bragg-spot target image."""

    base_channels: int = Field(8, ge=1, description="Channels of the first level (8: 0.29 GFLOP per 128² pattern).")
    depth: int = Field(4, ge=1, le=7, description="Number of resolution levels.")
    norm: Literal["batch", "group", "none"] = Field("batch", description="Normalisation layer.")
    offsets: bool = Field(
        False,
        description="Also predict, at every pixel near a spot, the sub-pixel offset to its centre [px] and the "
        "offset's uncertainty (three more output channels); the read-out then places each spot by them and "
        "weights the lattice fit by 1/(sigma^2 + r^2/N), N the counts of the disk of radius r there.",
    )


class Augment(_Section):
    """On-the-fly augmentation of training patterns; geometric ones move the target with the input."""

    shift_px: float = Field(2.0, ge=0, description="Largest random shift of pattern and target (descan) [px].")
    ellipticity: float = Field(0.01, ge=0, lt=0.5, description="Largest projector ellipticity (axis ratio - 1) [1].")
    dose_fraction: float = Field(
        0.5, ge=0, le=1, description="Fraction of patterns resampled to a lower dose by Poisson thinning."
    )
    min_dose: float = Field(1e3, gt=0, description="Lowest dose of the thinning, log-uniform up to the pattern's [e-].")
    symmetries: bool = Field(
        False,
        description="Apply one of the 8 symmetries of the detector grid about k = 0 (90-degree turns and mirrors, "
        "exact on the pixel grid) to each pattern and its target.",
    )
    strain: float = Field(
        0.0,
        ge=0,
        lt=0.2,
        description="Largest principal value of a random symmetric stretch (I + e, |e| <= strain, random axes) "
        "applied to pattern and target alike, so that no fixed spot position is a safe guess [1]; with spot lists "
        "in the training set the targets move exactly, the patterns by bilinear interpolation.",
    )
    halo: float = Field(
        0.0,
        ge=0,
        description="Largest diffuse halo added to a pattern (inelastic and amorphous scattering of a real specimen "
        "and its support), as a multiple of the pattern's counts; the halo's counts are Poisson, its shape a "
        "random broad Lorentzian around the beam; drawn for half of the patterns [1].",
    )
    psf_px: float = Field(
        0.0,
        ge=0,
        description="Largest extra point-spread σ of the camera (a Gaussian applied after the counting noise, as a "
        "scintillator does); drawn for half of the patterns [px].",
    )
    saturation: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of patterns clipped at a random level between 5 % and 50 % of their brightest pixel, "
        "as a saturating detector clips the undiffracted beam [1].",
    )
    disk_contrast: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Largest random contrast added inside each Bragg disk of half of the patterns: the disk's "
        "intensity is thinned by a smooth field 1 + a.u + b(|u|^2 - 1/2) of the position u in the disk (in disk "
        "radii), |a| <= disk_contrast, |b| <= disk_contrast / 2, drawn per disk; the disk's edge stays where it is, "
        "so the network cannot take the dynamical contrast inside a disk for its position. Needs spot lists and the "
        "disk radius (energy_eV, semiangle_mrad) in the training set [1].",
    )


class TrainConfig(_Section):
    """Training of the network."""

    epochs: int = Field(10, ge=1, description="Passes over the training set.")
    batch_size: int = Field(16, ge=1, description="Patterns per step and per process.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate.")
    schedule: Literal["onecycle", "cosine"] = Field("onecycle", description="Learning-rate schedule over all steps.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    gamma: float = Field(1.0, gt=0, description="Exponent γ of the MSE term: L = BCE + MSE^γ.")
    offset_weight: float = Field(
        1.0,
        ge=0,
        description="Weight λ of the offset term (L + λ NLL of the sub-pixel offsets) for a network with "
        "model.offsets; it needs spot lists in the training set.",
    )
    target_power: float = Field(
        0.5, gt=0, le=1, description="Targets are scaled to peak 1 and raised to this power (keeps weak spots) [1]."
    )
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of strain states (all their patterns) held out for validation."
    )
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    nproc: int = Field(2, ge=1, description="Processes per node for torchrun.")
    precision: Literal[PRECISIONS] = Field(
        "auto", description="Autocast precision; auto: bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs."
    )
    augment: Augment = Field(default_factory=Augment)
    init_model: str | None = Field(
        None,
        description="Start from the weights of this exported model (a path, or the name of a shipped model such "
        "as general-v2) instead of random ones: fine-tuning, e.g. on simulations of the user's own crystal. "
        "Its model section must equal model; default: random weights.",
    )
    checkpoint_every: int = Field(0, ge=0, description="Also checkpoint every this many steps; 0: each epoch only.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per training process.")
    cache_mb: float = Field(256.0, ge=0, description="Decoded Zarr chunks kept per process [MiB].")
    match_radius_px: float = Field(
        1.5, gt=0, description="Validation: a predicted spot within this distance of a true one is found [px]."
    )
    deterministic: bool = Field(False, description="Deterministic algorithms (slower; for tests).")
    seed: int = Field(0, description="Random seed.")


class StrainConfig(_Section):
    """The strain run (``stemstrain strain``): how the network runs and where the work units run."""

    batch_size: int | None = Field(
        None, ge=1, description="Patterns per network batch; default 128 on a CPU, 1024 on a GPU."
    )
    precision: Literal[PRECISIONS] = Field(
        "auto",
        description="Network precision; auto: bf16 where native (GPUs, AVX-512-BF16/AMX CPUs), else fp32 "
        "(fp16 on GPUs without bf16).",
    )
    engine: Literal[ENGINES] = Field(
        "auto",
        description="What runs the network: torch, onnxruntime (fp32 on a CPU only) or auto (onnxruntime for fp32 on "
        "a CPU, where it ran 1.15-1.3x faster end to end on an AVX2 CPU; torch for bf16 and on GPUs).",
    )
    refine: Literal[REFINEMENTS] = Field(
        "auto",
        description="The network's subpixel read-out: template (the probe template's correlation with the raw "
        "pattern at each network spot), offsets (the network's offset heads) or auto (template when the scan "
        "records its beam energy and semiangle and is resampled to the model's calibration or a disk "
        "correction is asked for, else offsets).",
    )
    methods: list[Literal[METHODS]] = Field(["unet"], min_length=1, description="Methods run by the workflow.")
    shipped_model: bool = Field(
        False,
        description="Workflow: also map each scan with the shipped pretrained model (models/), reported as "
        "'unet-shipped' beside the methods (unet there is the model the workflow trains).",
    )
    device: str = Field("auto", description="Where the network runs: auto (a GPU when there is one), cpu, cuda[:N].")
    compile: bool = Field(False, description="torch.compile the network on a GPU (ignored on the CPU: no gain there).")
    unit_patterns: int = Field(1024, ge=1, description="Patterns per work unit (whole input chunks); bounds memory.")
    cluster: Cluster = Field(
        default_factory=lambda: Cluster(kind="none"), description="Where the work units run; default: in-process."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", device):
            raise ValueError(f"expected auto, cpu or cuda[:N], found {device!r}")
        return device


class EvaluateConfig(_Section):
    """Evaluation grid of test scans over thickness and dose (all methods)."""

    crystal: str = Field("Si_110", description="Crystal of the grid scans.")
    thicknesses_nm: list[PositiveFloat] = Field([], description="Thicknesses of the grid [nm]; empty: no grid.")
    doses: list[PositiveFloat] = Field([], description="Doses of the grid [e- per pattern].")
    field: Literal["uniform", "gradient", "bump", "interface"] = Field("gradient", description="Strain field.")
    amplitude: float = Field(0.01, gt=-0.2, lt=0.2, description="Largest strain of the field [1].")
    scan_shape: tuple[PositiveInt, PositiveInt] = Field((12, 12), description="Scan positions of each grid scan.")
    step_nm: float = Field(0.5, gt=0, description="Scan step [nm].")
    reference_roi: tuple[int, int, int, int] | None = Field(
        None, description="[y0, y1, x0, x1] reference region of each grid scan; default: the left quarter of columns."
    )
    methods: list[Literal[METHODS]] = Field(
        [NETWORK, *BASELINES], min_length=1, description="Methods scored on every scan."
    )
    seed: int = Field(1, description="Random seed of the noise of the grid scans.")


class IngestFile(_Section):
    """A detector file converted by the workflow's ``ingest`` rule into ``results/ingest/{name}.zarr``."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Scan name, used in output paths.")
    file: str = Field(..., description="Detector file, e.g. raw/scan.mib (ARINA: the _master.h5, EMPAD: the .xml).")
    format: str | None = Field(None, description="Format name (merlin, arina, ...); default: detected.")
    scan_shape: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="Scan positions (scan_y, scan_x) of a flat stack."
    )
    energy_eV: float | None = Field(None, gt=0, description="Beam energy [eV]; default: from the file.")
    semiangle_mrad: float | None = Field(None, gt=0, description="Probe convergence semiangle [mrad].")
    k_sampling: float | None = Field(None, gt=0, description="Detector pixel size [1/angstrom]; default: file.")
    scan_step_nm: float | None = Field(None, gt=0, description="Scan step [nm]; default: from the file, else 1.")
    chunks: tuple[PositiveInt, PositiveInt] | None = Field(None, description="Zarr chunk (cy, cx) in scan positions.")
    centre: Literal["middle", "com"] = Field("middle", description="k = 0 at the detector middle or centre of mass.")
    probe: str | None = Field(
        None,
        description="Vacuum probe at the same optics and detector (.npy image or stack, or a vacuum scan), "
        "stored as the variable probe for the templates; default: none (an aperture disk is simulated).",
    )


class IngestConfig(_Section):
    """Measured detector files brought into the workflow (``stemstrain ingest``)."""

    files: list[IngestFile] = Field(default_factory=list, description="Detector files to convert; empty: none.")


class Config(_Section):
    """The whole stemstrain configuration."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name, used in output paths.")
    optics: Optics = Field(default_factory=Optics)
    detector: Detector = Field(default_factory=Detector)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scans: list[ScanConfig] = Field(default_factory=list)
    strain: StrainConfig = Field(default_factory=StrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)


def parse_config(raw: dict, source: str = "config") -> Config:
    """Validate a configuration mapping.

    Parameters
    ----------
    raw : dict
        Parsed YAML.
    source : str
        Name of the origin (file path) used in error messages.

    Raises
    ------
    StemstrainInputError
        Listing every invalid option as ``section.option: problem``.
    """
    try:
        return Config.model_validate(raw or {})
    except ValidationError as err:
        raise StemstrainInputError(f"{source}: invalid configuration: {_problems(err)}") from None


def updated(section: BaseModel, changes: dict, source: str | None = None, names: Callable[[tuple], str] | None = None):
    """A copy of a configuration section with some options changed, validated.

    Parameters
    ----------
    section : pydantic model
        E.g. the :class:`StrainConfig` of a configuration file.
    changes : dict
        Option -> new value; the changes of a nested section as a dict of its own options.
    source : str, optional
        Origin of the changes, put before the message.
    names : callable, optional
        Name of an option in messages from its location, e.g. the command-line flag that set it;
        default ``section.option``.

    Raises
    ------
    StemstrainInputError
        Naming every invalid option.
    """
    raw = section.model_dump()
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(raw.get(key), dict)
        raw[key] = {**raw[key], **value} if nested else value
    try:
        return type(section).model_validate(raw)
    except ValidationError as err:
        problems = _problems(err, names)
        raise StemstrainInputError(f"{source}: {problems}" if source else problems) from None


def _problems(err: ValidationError, names: Callable[[tuple], str] | None = None) -> str:
    names = names or (lambda loc: ".".join(str(p) for p in loc) or "(top level)")
    return "; ".join(f"{names(tuple(e['loc']))}: {e['msg']}" for e in err.errors())


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML configuration file.

    Raises
    ------
    StemstrainInputError
        If the file is missing, not YAML, or has invalid options.
    """
    path = Path(path)
    if not path.is_file():
        raise StemstrainInputError(f"{path}: configuration file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StemstrainInputError(f"{path}: not valid YAML ({err})") from None
    if raw is not None and not isinstance(raw, dict):
        raise StemstrainInputError(f"{path}: expected a mapping of options, found {type(raw).__name__}")
    return parse_config(raw, str(path))


def json_schema() -> dict:
    """JSON schema of :class:`Config`, as Snakemake's ``validate`` reads it."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()}


def schema_yaml() -> str:
    """The JSON schema as YAML text, the content of ``workflow/schemas/config.schema.yaml``."""
    header = "# Generated by `python -m stemstrain.config`; do not edit by hand.\n"
    return header + yaml.safe_dump(json_schema(), sort_keys=False)


if __name__ == "__main__":
    sys.stdout.write(schema_yaml())
