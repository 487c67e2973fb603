"""The accuracy suite: every method, tuned py4DSTEM included, on held-out multislice scans; one table.

    python bench/accuracy.py                  # simulate what is missing (cached), then run and score
    python bench/accuracy.py --simulate-only  # build or complete the suite's scans
    python bench/accuracy.py --scans si110_t37_d1e6 --methods bragg unet
    python bench/accuracy.py --methods unet --refine offsets   # rows unet+offsets: the network's own read-out
    python bench/accuracy.py --methods unet --tilt-prior 0     # rows unet+tilt0: the plain template correlation
    python bench/accuracy.py --methods bragg --tilt-prior 0.14 # rows bragg+tilt0.14: bragg's disks, the tilted read-out
    python bench/accuracy.py --methods unet --disk-correction disks-v1  # rows unet+disks-v1
    python bench/accuracy.py --methods unet bragg --scatter-limit 0  # rows unet+scatter0: the fit's weights as given
    python bench/accuracy.py --draws 4        # each scan also with 3 more draws of its counting noise
    python bench/accuracy.py --suite bench/validation.yaml --box-scale 2 --methods unet  # choosing variants

The scans are the ``scans:`` of ``bench/suite.yaml`` (held out from every training config: turned
crystals, a composite strain field, thicknesses absent from training, a crystal absent from it),
simulated by ``stemstrain.simulate.simulate_scan`` into ``bench/work/suite/`` and kept there;
scans that differ only in dose share their multislice (the cache folder). Each method runs on the
same patterns in this process, one after the other, with both cores: ours through
``stemstrain.strainmap.strain_map``, py4DSTEM through ``bench/peers.py`` (one process per core, its
own venv). With ``--draws N`` every method also runs on N - 1 more draws of each scan's counting
noise (the same multislice, ``simulate_scan(..., noise_draw=k)``, ``<scan>.drawK.zarr``) and the
table gives the RMSE pooled over the draws with its spread from draw to draw: one draw of 256
patterns decides a ranking only where methods differ by more than that spread. Frozen phonons are
part of the multislice and are the same in every draw. Writes ``bench/results/accuracy.json``
(every row, the machine and its load) and ``bench/results/accuracy.md`` (the table); ``make bench``
copies the table into ``summary.md``.

``--suite bench/validation.yaml`` runs another set of scans (its own work folder and result files,
named by the file's ``name:``, ``validation_box2.json``): the scans on which variants of a read-out or
a model are chosen, so that the suite's scans judge the chosen one and are not used to choose it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, readout_variant, write_result  # noqa: E402

from stemstrain.config import BASELINES, NETWORK, REFINEMENTS, load_config  # noqa: E402
from stemstrain.errors import StemstrainInputError  # noqa: E402
from stemstrain.evaluate.suite import failed_row, score_row, suite_table, timed_row  # noqa: E402
from stemstrain.lattice import FitOptions  # noqa: E402
from stemstrain.model import default_model, resolve_model  # noqa: E402
from stemstrain.simulate import simulate_scan  # noqa: E402
from stemstrain.strainmap import strain_map  # noqa: E402

SUITE = HERE / "suite.yaml"
WORK = HERE / "work" / "suite"
PY4DSTEM = "py4dstem"
METHODS = [NETWORK, *BASELINES, PY4DSTEM]


def variant(box_scale: float, suite: str = "suite") -> tuple[Path, str]:
    """Work folder and result name of a suite simulated in a box of at least ``box_scale`` [1/k_sampling].

    The suite of the table (``bench/suite.yaml``, ``name: suite``) is simulated in the 1x box; a larger
    box is another suite (``work/suite-box2``, ``accuracy_box2.json``), so that its rows never mix with
    the table's. Another suite file (``name: validation``) has its own (``work/validation-box2``,
    ``validation_box2.json``).
    """
    stem = "accuracy" if suite == "suite" else suite
    if box_scale == 1.0:
        return WORK.with_name(suite), stem
    tag = f"box{box_scale:g}".replace(".", "p")
    return WORK.with_name(f"{suite}-{tag}"), f"{stem}_{tag}"


def stores(work: Path, scan: str, draw: int = 0) -> tuple[Path, Path]:
    """The 4D scan and truth stores of one draw of a suite scan's counting noise (0: the scan's own)."""
    name = scan if draw == 0 else f"{scan}.draw{draw}"
    return work / f"{name}.zarr", work / f"{name}.truth.zarr"


def simulate(config, work: Path, names: list[str], draws: int = 1) -> None:
    """Simulate the suite's scans and their other noise draws not there yet (resumable, cached multislice)."""
    for scan in config.scans:
        for draw in range(draws):
            scan_path, truth = stores(work, scan.name, draw)
            if scan.name in names and not truth.exists():
                simulate_scan(config, scan, scan_path, truth, cache=work / "cache", noise_draw=draw)


def run_method(
    work: Path,
    scan: str,
    method: str,
    model: Path | None,
    options: dict | None = None,
    label: str | None = None,
    draw: int = 0,
    fit_options: FitOptions = FitOptions(),
) -> dict:
    """One row of the table: ``method`` on ``scan`` (its noise draw ``draw``), timed end to end and scored.

    ``options`` set the detector's read-out (unet: ``refine``, ``tilt_prior``; bragg: ``tilt_prior``;
    default: the detector's own), ``fit_options`` the lattice fit of ours; the map is written under the
    row's ``label`` (default: the method).
    """
    scan_path, truth = stores(work, scan, draw)
    out = work / "maps" / f"{scan_path.stem}.{label or method}.zarr"
    if method == PY4DSTEM:
        from peers import run_py4dstem

        try:
            timing = run_py4dstem(scan_path, out, processes=2)
        except (StemstrainInputError, RuntimeError) as err:
            return failed_row(scan, method, str(err))
        return score_row(scan, method, out, truth, timing["seconds_total"])
    if method == NETWORK and model is None:
        return failed_row(scan, method, "no model (pass --model or ship models/)")

    def run() -> None:
        strain_map(
            scan_path,
            out,
            method,
            model=model,
            fresh=True,
            progress=False,
            detector_options=options,
            fit_options=fit_options,
        )

    return timed_row(scan, method, truth, out, run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate-only", action="store_true", help="build the suite's scans and stop")
    parser.add_argument(
        "--suite",
        type=Path,
        default=SUITE,
        help="the scans' file (default bench/suite.yaml; bench/validation.yaml: the scans variants are chosen on)",
    )
    parser.add_argument("--scans", nargs="*", help="scan names (default: all of the suite file)")
    parser.add_argument("--methods", nargs="*", default=METHODS, help=f"methods (default: {' '.join(METHODS)})")
    parser.add_argument(
        "--model",
        help="network model, a path or a shipped model's name (default: the shipped default; "
        "another model's rows are labelled unet@NAME)",
    )
    parser.add_argument(
        "--refine",
        choices=REFINEMENTS,
        help="the network's subpixel read-out (default: the detector's own); its rows are labelled unet+REFINE",
    )
    parser.add_argument(
        "--tilt-prior",
        type=float,
        help="the template read-out's tilt prior (0: the plain correlation; default: the detector's own), for "
        "unet and bragg; their rows are labelled unet+tiltVALUE and bragg+tiltVALUE",
    )
    parser.add_argument(
        "--disk-correction",
        type=Path,
        help="a disk-centre correction, a file (bench/disk_corrector.py) or a shipped name, for unet; its rows "
        "are labelled unet+NAME (the file's name without .pt)",
    )
    parser.add_argument(
        "--scatter-limit",
        type=float,
        help="the lattice fit's scatter_limit (stemstrain.lattice.FitOptions; 0: the weights as the detector "
        "gives them), for our methods; their rows are labelled METHOD+scatterVALUE",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=1,
        help="draws of each scan's counting noise to run (default 1: the scan's own); the table pools them",
    )
    parser.add_argument(
        "--box-scale",
        type=float,
        choices=[1.0, 1.5, 2.0],
        default=1.0,
        help="simulate the scans in a box of at least this side [1/k_sampling] (simulate.box_scale_min; default 1, "
        "the table's suite); another box is another suite: bench/work/suite-boxN, bench/results/accuracy_boxN.json",
    )
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1 (1: the scans' own noise), found {args.draws}")
    config = load_config(args.suite)
    config.simulate.box_scale_min = args.box_scale
    work, result = variant(args.box_scale, config.name)
    names = args.scans or [scan.name for scan in config.scans]
    unknown = sorted(set(names) - {scan.name for scan in config.scans})
    if unknown:
        parser.error(f"--scans: unknown {unknown}; {args.suite} has {[s.name for s in config.scans]}")
    simulate(config, work, names, args.draws)
    if args.simulate_only:
        return 0
    shipped = default_model()
    model, label = None, NETWORK
    if NETWORK in args.methods:
        model = resolve_model(args.model)
        label = NETWORK if model == shipped else f"{NETWORK}@{model.stem}"
    options, labels = readout_variant(label, args.refine, args.tilt_prior, args.disk_correction)
    fit_options = FitOptions()
    if args.scatter_limit is not None:
        fit_options = FitOptions(scatter_limit=args.scatter_limit)
        ours = [m for m in args.methods if m != PY4DSTEM]
        labels = {m: f"{labels.get(m, m)}+scatter{args.scatter_limit:g}" for m in ours}
    rows = []
    for scan in names:
        for draw in range(args.draws):
            for method in args.methods:
                load = os.getloadavg()
                row = run_method(work, scan, method, model, options.get(method), labels.get(method), draw, fit_options)
                if method in labels:
                    row = {**row, "method": labels[method]}
                if method == NETWORK:
                    row = {**row, "model": str(model)}
                date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                rows.append({**row, "draw": draw, "load_average_before": load, "date": date})
    rows = merged(rows, [scan.name for scan in config.scans], METHODS, RESULTS / f"{result}.json")
    table = suite_table(rows, list(dict.fromkeys(r["method"] for r in rows)))
    (RESULTS / f"{result}.md").write_text(table)
    write_result(
        result,
        {
            "box_scale_min": args.box_scale,
            "load_average": os.getloadavg(),
            "model": str(shipped),  # the unet column's; rows of other models name theirs
            "suite": os.path.relpath(args.suite, HERE.parent),
            "rows": rows,
        },
    )
    print(table)
    return 0


def merged(rows: list[dict], scans: list[str], methods: list[str], previous: Path) -> list[dict]:
    """This run's rows, and the ``previous`` result's rows of the (scan, method, draw) triples not re-run.

    A partial run (``--scans``/``--methods``/``--draws``) thus completes the table; each row keeps its
    own date and load average. Rows come in suite order, methods in ``methods`` order, then other
    models' rows (``unet@NAME``), draws in order (a row without ``draw`` is draw 0).
    """

    def key(row: dict) -> tuple[str, str, int]:
        return row["scan"], row["method"], int(row.get("draw", 0))

    by_key = {}
    if previous.exists():
        by_key = {key(r): r for r in json.loads(previous.read_text()).get("rows", [])}
    by_key |= {key(r): r for r in rows}
    others = sorted({m for _, m, _ in by_key} - set(methods))  # other models' rows (unet@NAME)
    draws = sorted({d for _, _, d in by_key})
    order = [(s, m, d) for s in scans for m in [*methods, *others] for d in draws]
    return [by_key[k] for k in order if k in by_key]


if __name__ == "__main__":
    sys.exit(main())
