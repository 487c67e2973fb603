"""Train the disk-centre correction (stemstrain.model.disks) and measure it on an independent training set.

The corrector learns, on simulated training patterns, the offset from where the tilted template
read-out places each disk to the disk's true centre, or with ``--placement offsets`` (the correctors
of the network's own offsets, models/disks/disks-offsets-v1.md) from the true centre moved by a random
isotropic offset of ``--jitter`` px per axis. This script collects those offsets on
``--train``, fits the corrector, and reports on ``--validate`` (a set simulated with another seed)
the median distance to the true centre before and after the correction, per dose decade, for disks
whose kinematic amplitude is at least 0.2 of the strongest. The strain it gives is measured by
``bench/uniform_series.py`` (where ``--gain`` is chosen) and ``bench/accuracy.py``, both with
``--disk-correction FILE``.

With ``--series`` the training set holds strain series (``simulate.strain_series``, config/disks-series.yaml):
the corrector learns with the loss on each disk's error less the mean error of its reflection over the
series (``stemstrain.train.disks.series_cells``), one series in ``--hold-out`` is kept back, and the
report adds the median of that relative error before and after, the part of the bias a strain map sees.

Usage: ``python bench/disk_corrector.py --train TRAIN.zarr --validate VAL.zarr --out models/disks/disks-v1.pt
[--epochs 6] [--gain 0.5]``, or ``--train SERIES.zarr --series --out FILE [--start disks-v1 --epochs 3 --lr 1e-3]
[--absolute-weight 0.2] [--cache DISKS.pt]``; writes
``bench/results/disk_corrector.json`` (``disk_corrector_series.json`` with ``--series``,
``disk_corrector_offsets.json`` with ``--placement offsets``, ``_wWIDTH`` added for a width other than 8,
``_pPATCH`` for a ``--patch`` other than 13, ``_seedSEED`` for a ``--seed`` other than 0, ``_TRAIN`` (the
training set's name) with ``--start``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.model.disks import PATCH, RADIUS_SCALE, load_disk_corrector, save_disk_corrector  # noqa: E402
from stemstrain.train.disks import (  # noqa: E402
    PLACEMENTS,
    fit_disk_corrector,
    less_cell_mean,
    residual_pairs,
    series_cells,
    series_layout,
)

DOSES = (1e3, 1e4, 1e5, 1e6)


def median_distances(corrector, pairs: dict, strong: torch.Tensor, cells: torch.Tensor | None = None) -> list[dict]:
    """Median distance [px] to the true centre before and after the correction, per dose decade.

    With ``cells``, also the median of the error less its cell's mean error (disks of cells of two or more).
    """
    with torch.inference_mode():
        predicted = corrector(pairs["patches"], pairs["scalars"])
    if cells is not None:
        shared = torch.bincount(cells)[cells] >= 2
        relative_before = less_cell_mean(-pairs["offsets"], cells).norm(dim=1)
        relative_after = less_cell_mean(predicted - pairs["offsets"], cells).norm(dim=1)
    rows = []
    for low in DOSES:
        band = strong & (pairs["dose"] >= low) & (pairs["dose"] < 10 * low)
        before = pairs["offsets"][band].norm(dim=1)
        after = (pairs["offsets"][band] - predicted[band]).norm(dim=1)
        row = {
            "dose_from": low,
            "disks": int(band.sum()),
            "median_before_px": float(before.median()),
            "median_after_px": float(after.median()),
        }
        if cells is not None:
            row["median_relative_before_px"] = float(relative_before[band & shared].median())
            row["median_relative_after_px"] = float(relative_after[band & shared].median())
        rows.append(row)
    return rows


def _subset(pairs: dict, keep: torch.Tensor) -> dict:
    return {name: values[keep] for name, values in pairs.items()}


def result_name(args) -> str:
    """disk_corrector[_series | _offsets[_wWIDTH][_pPATCH][_seedSEED][_TRAIN]]: one file per kind of corrector.

    A fit that starts from another corrector (``--start``) carries its training set's name (``_TRAIN``).
    """
    if args.series:
        return "disk_corrector_series"
    if args.placement == "offsets":
        width = "" if args.width == 8 else f"_w{args.width}"
        patch = "" if args.patch == PATCH else f"_p{args.patch}"
        seed = f"_seed{args.seed}" if args.seed else ""
        tuned = f"_{Path(args.train).stem}" if args.start else ""
        return f"disk_corrector_offsets{width}{patch}{seed}{tuned}"
    return "disk_corrector"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training set (zarr) to learn from")
    parser.add_argument("--validate", help="independent training set (zarr) to measure on (not with --series)")
    parser.add_argument("--series", action="store_true", help="--train holds strain series: learn what changes")
    parser.add_argument("--hold-out", type=int, default=8, help="with --series: every n-th series is measured on")
    parser.add_argument("--absolute-weight", type=float, default=0.2, help="with --series: weight of the plain loss")
    parser.add_argument("--out", required=True, help="corrector file to write")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--gain", type=float, default=0.5, help="fraction of the offset applied (uniform series)")
    parser.add_argument("--width", type=int, default=32, help="channels of the corrector's first convolutions")
    parser.add_argument(
        "--patch", type=int, default=PATCH, help=f"samples per side of a disk's patch over ±1.6 radii (default {PATCH})"
    )
    parser.add_argument("--start", help="a corrector (file or shipped name) whose weights the fit starts from")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="template",
        help="read-out the corrector corrects: template (disks placed by the template read-out) or offsets "
        "(the network's own offsets: disks at their true centres moved by a random offset of --jitter px)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit (initial weights, batches)")
    parser.add_argument("--jitter", type=float, default=0.3, help="with --placement offsets: offset spread [px]")
    parser.add_argument("--cache", help="keep the collected disks in this file and read them back from it")
    args = parser.parse_args()
    if args.series == bool(args.validate):
        parser.error("give --validate (an independent set) or --series (held-out series of --train), not both")
    start = time.time()
    collect = {"progress": True, "placement": args.placement, "jitter_px": args.jitter, "patch": args.patch}
    if args.cache and Path(args.cache).is_file():
        train = torch.load(args.cache)
        if train["patches"].shape[1] != args.patch**2:
            found = train["patches"].shape[1]
            parser.error(f"--cache {args.cache} holds patches of {found} samples, not --patch {args.patch} squared")
    else:
        train = residual_pairs(args.train, **collect)
        if args.cache:
            torch.save(train, args.cache)
    cells = validate_cells = None
    if args.series:
        cells = series_cells(args.train, train)
        length, per_state = series_layout(args.train)
        held = (train["sample"] // (length * per_state)) % args.hold_out == args.hold_out - 1
        validate, validate_cells = _subset(train, held), cells[held]
        train, cells = _subset(train, ~held), cells[~held]
    else:
        validate = residual_pairs(args.validate, **collect)
    collected = time.time()
    start_from = load_disk_corrector(args.start)[0] if args.start else None
    corrector, losses = fit_disk_corrector(
        train,
        epochs=args.epochs,
        lr=args.lr,
        cells=cells,
        absolute_weight=args.absolute_weight,
        width=args.width,
        start=start_from,
        seed=args.seed,
    )
    radius = RADIUS_SCALE * train["scalars"][:, 1]  # the disk radii it learnt from [px]
    fitted = time.time()
    save_disk_corrector(
        corrector,
        args.out,
        {
            "gain": args.gain,
            "readout": args.placement,
            **({"jitter_px": args.jitter} if args.placement == "offsets" else {}),
            "radius_px": [float(radius.min()), float(radius.max())],
            "train": str(args.train),
            "disks": len(train["offsets"]),
            "epochs": args.epochs,
            **({"series": True, "absolute_weight": args.absolute_weight} if args.series else {}),
        },
    )
    strong = validate["amplitude"] >= 0.2
    rows = median_distances(corrector, validate, strong, validate_cells)
    for row in rows:
        relative = ""
        if args.series:
            relative = f"; less its series mean {row['median_relative_before_px']:.3f} -> "
            relative += f"{row['median_relative_after_px']:.3f} px"
        print(
            f"dose {row['dose_from']:.0e}: {row['disks']} disks, median {row['median_before_px']:.3f} -> "
            f"{row['median_after_px']:.3f} px{relative}"
        )
    write_result(
        result_name(args),
        {
            "train": str(args.train),
            "validate": f"every {args.hold_out}th series of --train" if args.series else str(args.validate),
            "absolute_weight": args.absolute_weight if args.series else None,
            "out": str(args.out),
            "disks_train": len(train["offsets"]),
            "disks_validate": len(validate["offsets"]),
            "epochs": args.epochs,
            "width": args.width,
            "patch": args.patch,
            "seed": args.seed,
            "start": args.start,
            "lr": args.lr,
            "gain": args.gain,
            "placement": args.placement,
            "jitter_px": args.jitter if args.placement == "offsets" else None,
            "losses": losses,
            "selection": "validation disks of kinematic amplitude >= 0.2 of the strongest",
            "validation": rows,
            "seconds_collect": collected - start,
            "seconds_fit": fitted - collected,
        },
    )


if __name__ == "__main__":
    main()
