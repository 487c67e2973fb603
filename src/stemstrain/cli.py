"""The ``stemstrain`` command line: thin wrappers over the package functions.

Bad input raises :class:`~stemstrain.errors.StemstrainInputError` inside the package; here it
becomes one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core
from typer.core import TyperGroup

from stemstrain.errors import StemstrainInputError


class _OneLineUsageErrors(TyperGroup):
    """Usage errors (a missing argument, ``--batch 0``) as one line and exit 2, like bad input in the package.

    Typer prints them as a usage line, a hint and a framed box: five lines a log or a Snakemake
    rule can hardly quote.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # typer >= 0.16 raises the exceptions of its vendored copy of click
        exceptions = getattr(typer.core, "_click", click).exceptions
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except exceptions.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except exceptions.ClickException as err:
            where = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) is not None else ""
            typer.echo(f"stemstrain: error: {' '.join(f'{where}{err.format_message()}'.split())}", err=True)
            sys.exit(err.exit_code)
        except (typer.Abort, click.Abort):
            typer.echo("stemstrain: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    help="Nanoscale strain maps from 4D-STEM data with a supervised neural network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs are rewrapped to the terminal width
)


def _fail(message: str, code: int = 2) -> None:
    # one line whatever the message holds (YAML and zarr errors span several)
    typer.echo(f"stemstrain: error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


def handles_input_errors(command):
    """Turn StemstrainInputError (and a missing file) into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except StemstrainInputError as err:
            _fail(str(err))
        except FileNotFoundError as err:
            _fail(f"{err.filename}: file not found")
        except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as err:
            # an output path under a file, or a folder the user cannot write
            _fail(f"{err.filename}: cannot write the output there ({err.strerror})")

    return wrapper


@app.command()
@handles_input_errors
def simulate(
    config: Annotated[Path, typer.Argument(help="Configuration YAML (see config.yaml).")],
    out: Annotated[Path, typer.Argument(help="Training-set Zarr store to write.")],
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Discard a partial store of an interrupted run instead of resuming it; a complete OUT is "
            "simulated again (by default it is kept when made from the same settings).",
        ),
    ] = False,
) -> None:
    """Simulate a training set (abTEM multislice) into a chunked Zarr store.

    Strain states, thicknesses, crystals, noise, frozen phonons, precession and the dask cluster
    (`simulate.cluster.kind`: local, slurm or none) come from the config's `simulate` section. An
    interrupted run resumes from its finished chunks (`OUT.partial`); the result equals an
    uninterrupted run with the same seed. A complete OUT made from the same settings with a smaller
    `simulate.n_samples` is extended: its chunks are kept (each is a pure function of the seed and
    its index) and only the new strain states are simulated; OUT is replaced when the larger set is
    complete. Logs patterns/s at the end.
    """
    import logging

    from stemstrain.config import load_config

    settings = load_config(config)  # before importing abTEM (seconds), so that a bad config fails at once
    from stemstrain.simulate import simulate_training_set

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    typer.echo(f"wrote {simulate_training_set(settings, out, fresh=fresh)}")


@app.command("simulate-scan")
@handles_input_errors
def simulate_scan(
    config: Annotated[Path, typer.Argument(help="Configuration YAML.")],
    out: Annotated[Path, typer.Argument(help="4D scan Zarr store to write.")],
    truth: Annotated[Path, typer.Argument(help="Ground-truth strain-map Zarr store to write.")],
    scan: Annotated[
        str | None, typer.Option(help="Name of the scan in the config's `scans` list; default: the first.")
    ] = None,
) -> None:
    """Simulate a strained 4D scan with known strain (the test data of evaluation and the demo).

    Crystal, thickness, dose, strain field (uniform, gradient, bump, interface), amplitude, scan shape,
    step, reference region and frozen phonons come from the named entry of the config's `scans`;
    optics, detector and the dask cluster from the rest of the config.
    """
    import logging

    from stemstrain.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_config(config)
    if not settings.scans:
        raise StemstrainInputError(f"{config}: option 'scans' is empty; expected at least one scan to simulate")
    names = [s.name for s in settings.scans]
    if scan is not None and scan not in names:
        raise StemstrainInputError(f"{config}: scan {scan!r} not found in option 'scans' (found {names})")
    chosen = settings.scans[names.index(scan) if scan is not None else 0]
    from stemstrain.simulate import simulate_scan as run_scan

    data, truth_map = run_scan(settings, chosen, out, truth)
    typer.echo(f"wrote {data} and {truth_map}")


@app.command()
@handles_input_errors
def train(
    config: Annotated[Path, typer.Argument(help="Configuration YAML.")],
    data: Annotated[Path, typer.Argument(help="Training-set Zarr store.")],
    ckpt_dir: Annotated[Path, typer.Argument(help="Directory for checkpoints, metrics and the exported model.")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from CKPT_DIR/checkpoint.pt if it exists (else start fresh).")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1, help="Processes on this node (DDP via torchrun); default: train.nproc of the config, capped to CPUs."
        ),
    ] = None,
    data_checked: Annotated[bool, typer.Option("--data-checked", hidden=True)] = False,
) -> None:
    """Train the network with DDP; writes CKPT_DIR/model.pt (the exported model).

    With more than one process and outside torchrun, the command relaunches itself through
    `python -m torch.distributed.run --standalone`; under torchrun (RANK and WORLD_SIZE set, e.g.
    by slurm/train-ddp.sbatch across nodes) every process trains its share. CKPT_DIR also gets
    checkpoint.pt, metrics.csv (per epoch: losses, validation spot recall/precision, median
    spot-position error [px], samples/s), steps.csv and curves.png.
    """
    import os
    import subprocess

    from stemstrain.config import load_config
    from stemstrain.execute import available_cores

    settings = load_config(config)
    if "RANK" not in os.environ:
        processes = nproc or min(settings.train.nproc, _cuda_devices() or available_cores())
        if processes > 1:
            from stemstrain.train.data import check_training_set

            # Checked once, here: the processes torchrun starts do not read the whole set again.
            check_training_set(data, settings)
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            command += ["-m", "stemstrain.cli", "train", str(config), str(data), str(ckpt_dir), "--data-checked"]
            raise typer.Exit(subprocess.run(command + (["--resume"] if resume else [])).returncode)
    from stemstrain.train import train as run_training

    run_training(settings, data, ckpt_dir, resume=resume, check_data=not data_checked)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@app.command()
@handles_input_errors
def strain(
    scan: Annotated[Path, typer.Argument(help="4D-data Zarr store (contract of docs/DESIGN.md).")],
    out: Annotated[Path, typer.Argument(help="Strain-map Zarr store to write.")],
    method: Annotated[
        str,
        typer.Option(
            help="Spot detector: unet (the network), bragg (template-matched disks), "
            "cepstrum / cepstrum-multi (cepstral peaks, real space), peaks (maxima of the raw patterns)."
        ),
    ] = "unet",
    model: Annotated[
        Path | None,
        typer.Option(
            help="Exported network (CKPT_DIR/model.pt) or the name of a shipped model for --method unet; default "
            "($STEMSTRAIN_MODEL overrides it): the shipped fast-v1 for a scan at its calibration (128 px at 0.025 "
            "1/angstrom, k = 0 at the centre), see models/fast-v1.md; camera-v1, trained with a camera's diffuse "
            "halo, blur and saturated beam, for any other scan (a camera's, resampled), see models/camera-v1.md. "
            "general-v2 (four times fast-v1's compute, the default until 2026-12-02), see models/general-v2.md."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Configuration YAML whose `strain` section sets the options below that are not given "
            "(the workflow passes its resolved configuration)."
        ),
    ] = None,
    ref_roi: Annotated[
        tuple[int, int, int, int] | None,
        typer.Option(
            help="Reference region Y0 Y1 X0 X1 (half-open scan indices) whose median lattice is zero strain; "
            "default: the scan's reference_roi attribute, else the whole scan."
        ),
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="Patterns per network batch; default 128 on CPU, 1024 on CUDA.", min=1)
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda[:N] or auto (cuda when available; the default); per worker on a cluster."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Network precision: fp32, bf16, fp16 (CUDA) or auto (the default: bf16 on CUDA and on CPUs with "
            "native AVX-512-BF16/AMX, fp32 on other CPUs: emulated bf16 is several times slower)."
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="What runs the network: torch, onnxruntime (fp32 on a CPU only) or auto (the default: onnxruntime "
            "for fp32 on a CPU, torch for bf16 and on GPUs)."
        ),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option("--compile", help="torch.compile the network on a GPU (pays off on long runs; ignored on CPUs)."),
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="none (the default): this process, reading ahead in a thread; local: a dask LocalCluster; "
            "slurm: a dask-jobqueue SLURMCluster (one Slurm job per worker)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Dask workers for --scheduler local (default: CPU cores) or slurm (default 1).", min=1),
    ] = None,
    gpus_per_worker: Annotated[
        int, typer.Option(help="GPUs requested per Slurm worker job (--scheduler slurm).", min=0)
    ] = 0,
    cluster_option: Annotated[
        list[str] | None,
        typer.Option(
            "--cluster-option",
            help="Cluster option KEY=VALUE for --scheduler local or slurm, repeatable (typed like --detector-option): "
            "queue, account, cores, memory (e.g. 16GB), walltime (HH:MM:SS), threads_per_worker. Defaults: "
            "walltime=01:00:00, threads_per_worker=1; cores=1, memory=4GB unless set in dask's jobqueue.yaml.",
        ),
    ] = None,
    unit_patterns: Annotated[
        int | None,
        typer.Option(help="Patterns per work unit (whole input chunks); bounds the memory. Default 1024.", min=1),
    ] = None,
    allow_calibration_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-calibration-mismatch",
            help="Run the network on data sampled > 1.5x coarser than the model, "
            "or with a detector reaching < half its k range (with a warning).",
        ),
    ] = False,
    detector_option: Annotated[
        list[str] | None,
        typer.Option(
            "--detector-option",
            "-o",
            help="Detector option KEY=VALUE, repeatable; values typed (int, float, true/false, none, else text). "
            "unet: refine (auto, offsets, template: the network's offsets or the probe template's correlation "
            "with the raw pattern at each network spot), template (as bragg's), tilt_prior (the template "
            "read-out's prior on each disk's intensity tilt; default 0.14 = stemstrain.detect.bragg.TILT_PRIOR "
            "with a measured probe template, 0 with the aperture disk simulated from the optics; 0: the plain "
            "correlation), disk_correction (experimental: a learnt disk-centre correction after the read-out its "
            "file was trained for, which refine=auto then takes; a file or a shipped name: disks-v1 corrects the "
            "template read-out, models/disks/). "
            "unet/peaks: threshold_rel, min_distance, max_peaks. bragg: template (auto, probe, simulated, mean), "
            "hybrid, max_peaks, min_relative_height, upsample, tilt_prior (default 0: the plain correlation peak; "
            "above 0 each disk is placed by the unet's tilted template read-out), batch_size. "
            "cepstrum, cepstrum-multi: offset, r_min, r_max, primary_height, max_peaks, min_relative_height, "
            "upsample, lattice_tolerance, mask_radius_px, batch_size. Example: -o template=probe -o upsample=32.",
        ),
    ] = None,
    static_offsets: Annotated[
        bool,
        typer.Option(
            "--static-offsets",
            help="Measure each reflection's fixed displacement from the lattice in the reference region "
            "(detector distortion) and take it off every pattern before the fit. For real data: on the MgO "
            "nanocube scan it lowers the bragg spread 2.4x. Off by default (distortion-free simulations gain nothing).",
        ),
    ] = False,
    scatter_limit: Annotated[
        float | None,
        typer.Option(
            help="Weigh down a reflection whose spots scatter in the reference region more than this many times "
            "the median reflection does, measured against their own fit weights (faint outer disks under thermal "
            "diffuse scattering); 0 switches it off. Default: 2 for the network's offsets read-out, whose weights "
            "are inverse variances; 0 for the template read-out and the baselines, whose weights are not.",
            min=0.0,
        ),
    ] = None,
    correct_by_simulation: Annotated[
        bool,
        typer.Option(
            "--correct-by-simulation",
            help="Experimental: measure this read-out's systematic error (dynamical scattering) on multislice "
            "simulations of the crystal (--crystal) at the map's own strain states, its orientation fitted to the "
            "reference lattice and its thickness to the reference mean pattern, and take it off (the measured "
            "components are kept as e_xx_uncorrected, ...). Needs the scan's energy, semiangle and dose attrs; "
            "minutes of simulation. Holds as far as the simulation's physics holds for the sample.",
        ),
    ] = False,
    response_states: Annotated[
        int, typer.Option(help="Simulated states of --correct-by-simulation (k-means centres of the map's).", min=1)
    ] = 8,
    response_positions: Annotated[
        int,
        typer.Option(
            help="Probe positions per simulated state of --correct-by-simulation (noise draws: 2e7 e- a state).",
            min=1,
        ),
    ] = 8,
    crystal: Annotated[
        str | None,
        typer.Option(
            help="Crystal of --correct-by-simulation, a name of stemstrain.simulate.crystals (e.g. Si_110); "
            "default: the scan's material attr."
        ),
    ] = None,
    thickness_nm: Annotated[
        float | None,
        typer.Option(
            "--thickness-nm",
            help="Sample thickness [nm] of --correct-by-simulation where known (EELS log-ratio, CBED fringes); "
            "default: fitted to the reference region's mean pattern, and the orientation where the lattice allows two.",
        ),
    ] = None,
    frozen_phonons: Annotated[
        int | None,
        typer.Option(
            help="Frozen-phonon configurations of every pattern --correct-by-simulation simulates (thermal diffuse "
            "scattering; that many times the cost); default: the scan's frozen_phonons attr (a simulated scan's), "
            "else 0, a static lattice. A measured crystal vibrates: give 4 or more for measured data.",
            min=0,
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Discard OUT.partial of an interrupted run; default: resume.")
    ] = (False),
    progress: Annotated[bool, typer.Option(help="Show a progress bar with patterns/s.")] = True,
) -> None:
    """Measure a strain map from a 4D scan: spots, lattice fit per pattern, strain vs the reference region.

    Data with another k-sampling or detector size than the model's are resampled from their k
    coordinates. Work is written by region to OUT.partial; an interrupted run resumes from the
    chunks it finished. The result follows the strain-map contract (e_xx, e_yy, e_xy, theta,
    fit_error, n_peaks, mask, plus the fitted lattice per position).
    """
    from stemstrain.io import open_store, read_values
    from stemstrain.lattice import FitOptions
    from stemstrain.strainmap import describe_fit, describe_readout, strain_map

    _check_response_options(correct_by_simulation, crystal, thickness_nm, frozen_phonons)
    flags = {
        "batch_size": batch,
        "device": device,
        "precision": precision,
        "engine": engine,
        "unit_patterns": unit_patterns,
    }
    cluster = parse_detector_options(cluster_option, "--cluster-option")
    cluster |= {k: v for k, v in {"kind": scheduler, "workers": workers}.items() if v is not None}
    settings = _strain_config(config, flags | {"compile": compile or None}, cluster, gpus_per_worker)
    options = parse_detector_options(detector_option)
    if allow_calibration_mismatch:
        options["allow_calibration_mismatch"] = True
    fit_options = FitOptions(static_offsets=static_offsets, scatter_limit=scatter_limit)
    strain_map(
        scan,
        out,
        method,
        model,
        settings,
        reference_roi=ref_roi,
        detector_options=options,
        fit_options=fit_options,
        fresh=fresh,
        progress=progress,
    )
    if correct_by_simulation:
        from stemstrain.response import ResponseOptions, correct_strain_map

        typer.echo("simulating the read-out's response at the map's states (minutes) ...")
        correct_strain_map(
            scan,
            out,
            method,
            model,
            ResponseOptions(
                crystal, response_states, response_positions, thickness_nm=thickness_nm, frozen_phonons=frozen_phonons
            ),
            progress=progress,
            config=settings,
            detector_options=options,
            fit_options=fit_options,
        )
    written = open_store(out, "strain-map store")
    valid = read_values(written["mask"], str(out))  # the mask alone: maps can be large
    for line in (describe_readout(written.attrs), describe_fit(written.attrs)):
        if line:
            typer.echo(line)
    if correct_by_simulation:
        attrs = written.attrs
        correlation = attrs["response_thickness_correlation"]
        how = "given" if correlation is None else f"reference pattern correlation {correlation:.3f}"
        states = len(attrs["response_states"]) - 1
        typer.echo(
            f"corrected by simulation: {attrs['response_crystal']} turned {attrs['response_orientation_deg']:.1f} deg, "
            f"{attrs['response_thickness_nm']:.1f} nm thick ({how}), {states} simulated states"
        )
    typer.echo(f"wrote {out}: {int(valid.sum())} of {valid.size} positions have a valid lattice fit")


# The flag of each strain option, for messages; the other cluster options come from --cluster-option.
_STRAIN_FLAGS = {
    ("batch_size",): "--batch",
    ("device",): "--device",
    ("precision",): "--precision",
    ("engine",): "--engine",
    ("unit_patterns",): "--unit-patterns",
    ("cluster", "kind"): "--scheduler",
    ("cluster", "workers"): "--workers",
}


def _strain_config(path: Path | None, flags: dict, cluster: dict, gpus_per_worker: int):
    """The `strain` section of the configuration file (or the defaults), changed by the flags given."""
    from stemstrain.config import StrainConfig, load_config, updated

    base = load_config(path).strain if path is not None else StrainConfig()
    changes = {key: value for key, value in flags.items() if value is not None}
    if gpus_per_worker:
        cluster["job_extra_directives"] = [*base.cluster.job_extra_directives, f"--gpus={gpus_per_worker}"]
    if cluster:
        changes["cluster"] = cluster
    return updated(base, changes, names=lambda loc: _STRAIN_FLAGS.get(loc, f"--cluster-option {loc[-1]}"))


def _check_response_options(
    correct_by_simulation: bool, crystal: str | None, thickness_nm: float | None, frozen_phonons: int | None
) -> None:
    """Refuse --crystal / --thickness-nm / --frozen-phonons that cannot be used, before any work is done."""
    if not correct_by_simulation and (crystal is not None or thickness_nm is not None or frozen_phonons is not None):
        raise StemstrainInputError(
            "--crystal, --thickness-nm and --frozen-phonons are options of --correct-by-simulation: add it"
        )
    if correct_by_simulation:
        from stemstrain.response import check_thickness
        from stemstrain.simulate.crystals import get_crystal

        check_thickness(thickness_nm, "--thickness-nm")
        if crystal is not None:
            get_crystal(crystal)


def parse_detector_options(items: list[str] | tuple[str, ...] | None, flag: str = "--detector-option") -> dict:
    """Options from ``KEY=VALUE`` strings (the repeated ``--detector-option`` or ``--cluster-option``).

    Values are typed: ``true``/``false`` -> bool, ``none`` -> None, integers -> int, other numbers
    -> float, anything else stays a string (e.g. ``template=probe``).

    Parameters
    ----------
    items : list of str
        ``KEY=VALUE`` strings; dashes in keys become underscores.
    flag : str
        Option named in error messages.

    Raises
    ------
    StemstrainInputError
        For an item without ``=`` or with an empty key, or a key given twice.
    """
    options: dict = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise StemstrainInputError(f"{flag}: expected KEY=VALUE (e.g. upsample=32), found {item!r}")
        if key in options:
            raise StemstrainInputError(f"{flag}: {key} given twice")
        options[key] = _typed(text.strip())
    return options


def _typed(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@app.command()
@handles_input_errors
def ingest(
    raw: Annotated[
        Path,
        typer.Argument(
            help="Detector file: .mib, ARINA *_master.h5, EMPAD .xml, DE .mrc, .blo, py4DSTEM/EMD .h5, .npy, .h5."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="4D-data Zarr store to write (contract of docs/DESIGN.md).")],
    scan_shape: Annotated[
        tuple[int, int] | None,
        typer.Option(metavar="Y X", help="Scan positions (rows, columns); needed for flat frame stacks without one."),
    ] = None,
    energy_ev: Annotated[
        float | None, typer.Option("--energy-ev", metavar="E", help="Beam energy \\[eV]; overrides the file.")
    ] = None,
    semiangle_mrad: Annotated[
        float | None,
        typer.Option(metavar="A", help="Probe convergence semiangle \\[mrad]; no supported format records it."),
    ] = None,
    k_sampling: Annotated[
        float | None, typer.Option(metavar="S", help="Detector pixel size \\[1/angstrom]; overrides the file.")
    ] = None,
    scan_step: Annotated[
        float | None,
        typer.Option(metavar="NM", help="Scan step \\[nm]; overrides the file (default from the file, else 1 nm)."),
    ] = None,
    chunks: Annotated[
        tuple[int, int] | None,
        typer.Option(metavar="CY CX", help="Zarr chunk in scan positions; default about 16 MiB of whole patterns."),
    ] = None,
    centre: Annotated[
        str,
        typer.Option(
            help="k = 0 at the detector middle (index n//2) or at the centre of mass of the mean pattern "
            "('com', one extra pass over the file).",
            metavar="middle|com",
        ),
    ] = "middle",
    format_name: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="NAME",
            help="merlin, arina, empad, mrc, blockfile, emd, npy or hdf5; default: from the suffix and HDF5 layout.",
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(metavar="PATH", help="Dataset path inside an HDF5 file (hdf5 and emd formats).")
    ] = None,
    probe: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Vacuum probe at the same optics and detector: a .npy image (k_y, k_x) or stack (its mean), or "
            "a vacuum scan in a format ingest reads (its mean frame). Stored as the variable probe: bragg's "
            "template and the network's read-out (which then fits each disk's intensity tilt) use it.",
        ),
    ] = None,
) -> None:
    """Convert a detector file into the 4D-data contract, streaming (memory bounded by a few blocks).

    Orientation: every pattern keeps the detector's file row order; k_y grows with the row index
    (downwards with the origin at the top left) and k_x with the column, as the strain convention
    expects. rosettasciio flips Merlin frames vertically: ingest flips them back, so a .mib and its
    py4DSTEM .h5 give the same store (Merlin hot pixel "52x_39y" at row 39, column 52). py4DSTEM's
    array axes (Rx, Ry, Qx, Qy) are our (scan_y, scan_x, k_y, k_x). The first frame is scan (0, 0),
    scan_x runs fastest.
    Calibration: options win over file metadata. Energy is read from ARINA, EMPAD, DE MRC and
    blockfile headers; the k-sampling from py4DSTEM/EMD reciprocal axes and EMPAD's calibrated
    diffraction angle. What is missing is listed in one error. uint8/uint16 are stored as uint16,
    other types as float32. A truncated or corrupt file leaves no store; an interrupted run resumes.
    """
    from stemstrain.ingest import ingest as ingest_file

    written = ingest_file(
        raw,
        out,
        fmt=format_name,
        scan_shape=scan_shape,
        energy_eV=energy_ev,
        semiangle_mrad=semiangle_mrad,
        k_sampling=k_sampling,
        scan_step_nm=scan_step,
        chunks=chunks,
        centre=centre,
        dataset=dataset,
        probe=probe,
        progress=sys.stderr.isatty(),
    )
    typer.echo(f"wrote {written}")


@app.command()
@handles_input_errors
def evaluate(
    prediction: Annotated[Path, typer.Argument(help="Predicted strain-map Zarr store.")],
    truth: Annotated[Path, typer.Argument(help="Ground-truth strain-map Zarr store.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")] = None,
    include_reference: Annotated[
        bool, typer.Option("--include-reference", help="Score the reference region too.")
    ] = False,
) -> None:
    """Score a strain map against truth: RMSE and median absolute error per component.

    Scored positions are valid in the prediction, finite in the truth and outside the reference
    region. The last line reads ``rmse_strain=<max of e_xx, e_yy, e_xy> rmse_theta=<theta>``.
    """
    from stemstrain.evaluate import evaluate_strain, summary_line
    from stemstrain.io import atomic_output, open_strain_map

    scores = evaluate_strain(open_strain_map(prediction), open_strain_map(truth), not include_reference)
    typer.echo(f"{'component':<10}{'rmse':>12}{'median_abs':>12}")
    for name in ("e_xx", "e_yy", "e_xy", "theta"):
        typer.echo(f"{name:<10}{scores[name]['rmse']:>12.3e}{scores[name]['median_abs_error']:>12.3e}")
    typer.echo(f"scored {scores['n_scored']} of {scores['n_total']} positions ({scores['n_valid']} valid)")
    if json_out is not None:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps(scores, indent=2) + "\n")
    typer.echo(summary_line(scores))


@app.command("evaluate-grid")
@handles_input_errors
def evaluate_grid(
    config: Annotated[Path, typer.Argument(help="Configuration YAML with an evaluate section.")],
    model: Annotated[
        Path | None,
        typer.Option(help="Exported network (CKPT_DIR/model.pt) for the unet method; without it unet is skipped."),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Directory for table.csv, table.md and rmse_vs_thickness.png.")] = Path(
        "results/evaluation"
    ),
    work_dir: Annotated[
        Path, typer.Option(help="Directory for the grid's scans, strain maps and scores (reused when present).")
    ] = Path("results/grid"),
    method: Annotated[
        list[str] | None, typer.Option(help="Method to run (repeatable); default: the config's evaluate.methods.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars of the strain runs.")] = False,
) -> None:
    """Run every method on a thickness × dose grid of test scans and tabulate errors.

    The grid is the config's evaluate section (crystal, thicknesses_nm, doses, field, amplitude,
    scan_shape, reference_roi, methods). Each scan is simulated as by `stemstrain simulate-scan`,
    each method runs as `stemstrain strain`, and each map is scored as by `stemstrain evaluate`.
    """
    from stemstrain.config import load_config
    from stemstrain.evaluate.grid import evaluate_grid as run_grid

    table = run_grid(load_config(config), work_dir, out_dir, model=model, methods=method, progress=progress)
    typer.echo((out_dir / "table.md").read_text())
    typer.echo(
        f"wrote {out_dir / 'table.csv'} ({len(table)} rows), {out_dir / 'table.md'}, "
        f"{out_dir / 'rmse_vs_thickness.png'}"
    )


@app.command()
@handles_input_errors
def plot(
    strain_map: Annotated[Path, typer.Argument(help="Strain-map Zarr store.")],
    out: Annotated[Path, typer.Argument(help="PNG file to write.")],
    truth: Annotated[Path | None, typer.Option(help="Ground-truth strain map: adds truth and error rows.")] = None,
) -> None:
    """Plot e_xx, e_yy, e_xy and θ with colour bars and units (symmetric colour limits)."""
    from stemstrain.io import open_strain_map
    from stemstrain.plot import plot_strain

    if out.suffix.lower() != ".png":
        raise StemstrainInputError(f"{out}: output must be a .png file")
    prediction = open_strain_map(strain_map)
    reference = open_strain_map(truth) if truth is not None else None
    plot_strain(prediction, out, truth=reference)
    typer.echo(f"wrote {out}")


def main() -> None:  # pragma: no cover - console entry for `python -m stemstrain.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
