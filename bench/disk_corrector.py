"""Train the disk-centre correction (stemstrain.model.disks) and measure it on an independent training set.

The corrector learns, on simulated training patterns, the offset from where the tilted template
read-out places each disk to the disk's true centre. This script collects those offsets on
``--train``, fits the corrector, and reports on ``--validate`` (a set simulated with another seed)
the median distance to the true centre before and after the correction, per dose decade, for disks
whose kinematic amplitude is at least 0.2 of the strongest. The strain it gives is measured by
``bench/uniform_series.py`` (where ``--gain`` is chosen) and ``bench/accuracy.py``, both with
``--disk-correction FILE``.

Usage: ``python bench/disk_corrector.py --train TRAIN.zarr --validate VAL.zarr --out models/disks/disks-v1.pt
[--epochs 6] [--gain 0.5]``; writes ``bench/results/disk_corrector.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from stemstrain.model.disks import RADIUS_SCALE, save_disk_corrector  # noqa: E402
from stemstrain.train.disks import fit_disk_corrector, residual_pairs  # noqa: E402

DOSES = (1e3, 1e4, 1e5, 1e6)


def median_distances(corrector, pairs: dict, strong: torch.Tensor) -> list[dict]:
    """Median distance [px] to the true centre before and after the correction, per dose decade."""
    with torch.inference_mode():
        predicted = corrector(pairs["patches"], pairs["scalars"])
    rows = []
    for low in DOSES:
        band = strong & (pairs["dose"] >= low) & (pairs["dose"] < 10 * low)
        before = pairs["offsets"][band].norm(dim=1)
        after = (pairs["offsets"][band] - predicted[band]).norm(dim=1)
        rows.append(
            {
                "dose_from": low,
                "disks": int(band.sum()),
                "median_before_px": float(before.median()),
                "median_after_px": float(after.median()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training set (zarr) to learn from")
    parser.add_argument("--validate", required=True, help="independent training set (zarr) to measure on")
    parser.add_argument("--out", required=True, help="corrector file to write")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--gain", type=float, default=0.5, help="fraction of the offset applied (uniform series)")
    args = parser.parse_args()
    start = time.time()
    train = residual_pairs(args.train, progress=True)
    validate = residual_pairs(args.validate, progress=True)
    collected = time.time()
    corrector, losses = fit_disk_corrector(train, epochs=args.epochs)
    radius = RADIUS_SCALE * train["scalars"][:, 1]  # the disk radii it learnt from [px]
    fitted = time.time()
    save_disk_corrector(
        corrector,
        args.out,
        {
            "gain": args.gain,
            "radius_px": [float(radius.min()), float(radius.max())],
            "train": str(args.train),
            "disks": len(train["offsets"]),
            "epochs": args.epochs,
        },
    )
    strong = validate["amplitude"] >= 0.2
    rows = median_distances(corrector, validate, strong)
    for row in rows:
        print(
            f"dose {row['dose_from']:.0e}: {row['disks']} disks, median {row['median_before_px']:.3f} -> "
            f"{row['median_after_px']:.3f} px"
        )
    write_result(
        "disk_corrector",
        {
            "train": str(args.train),
            "validate": str(args.validate),
            "disks_train": len(train["offsets"]),
            "disks_validate": len(validate["offsets"]),
            "epochs": args.epochs,
            "gain": args.gain,
            "losses": losses,
            "selection": "validation disks of kinematic amplitude >= 0.2 of the strongest",
            "validation": rows,
            "seconds_collect": collected - start,
            "seconds_fit": fitted - collected,
        },
    )


if __name__ == "__main__":
    main()
