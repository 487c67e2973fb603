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

import typer

from stemstrain.errors import StemstrainInputError

app = typer.Typer(
    help="Nanoscale strain maps from 4D-STEM data with a supervised neural network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"stemstrain: error: {message}", err=True)
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

    return wrapper


def _not_built(name: str) -> None:
    _fail(f"`stemstrain {name}` is not built yet in this version", code=1)


@app.command()
@handles_input_errors
def simulate(
    config: Annotated[Path, typer.Argument(help="Configuration YAML (see config.yaml).")],
    out: Annotated[Path, typer.Argument(help="Training-set Zarr store to write.")],
) -> None:
    """Simulate a training set (abTEM multislice) into a chunked Zarr store."""
    _not_built("simulate")


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
    """Simulate a strained 4D scan with known strain (the test data of evaluation and the demo)."""
    _not_built("simulate-scan")


@app.command()
@handles_input_errors
def train(
    config: Annotated[Path, typer.Argument(help="Configuration YAML.")],
    data: Annotated[Path, typer.Argument(help="Training-set Zarr store.")],
    ckpt_dir: Annotated[Path, typer.Argument(help="Directory for checkpoints, metrics and the exported model.")],
) -> None:
    """Train the network (DDP through torchrun)."""
    _not_built("train")


@app.command()
@handles_input_errors
def strain(
    scan: Annotated[Path, typer.Argument(help="4D-data Zarr store (contract of DESIGN.md).")],
    out: Annotated[Path, typer.Argument(help="Strain-map Zarr store to write.")],
) -> None:
    """Measure a strain map from a 4D scan."""
    _not_built("strain")


@app.command()
@handles_input_errors
def ingest(
    raw: Annotated[
        Path,
        typer.Argument(
            help="Detector file: .mib, ARINA *_master.h5, EMPAD .xml, DE .mrc, .blo, py4DSTEM/EMD .h5, .npy, .h5."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="4D-data Zarr store to write (contract of DESIGN.md).")],
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
) -> None:
    """Run every method on a thickness × dose grid of test scans and tabulate errors."""
    _not_built("evaluate-grid")


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
