"""py4DSTEM side of the peer benchmark: runs in py4DSTEM's own venv (numpy < 2), not in ours.

Reads ``patterns.npy`` (scan_y, scan_x, k_y, k_x), ``probe.npy`` and ``params.json`` from a work
folder, runs py4DSTEM 0.14's template cross-correlation disk detection and its StrainMap
(indexing, lattice fit per position, strain against the reference region), and writes
``py4dstem_out.npz`` (the fitted g1, g2 per position in py4DSTEM's (qx, qy) = (row, column) axes,
its strain maps) and ``py4dstem_timing.json``. Called by ``bench/py4dstem_compare.py``.
"""

import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import py4DSTEM  # noqa: E402


def main(work: Path) -> None:
    params = json.loads((work / "params.json").read_text())
    patterns = np.load(work / "patterns.npy")
    probe_image = np.load(work / "probe.npy")
    n_y, n_x = patterns.shape[:2]
    centre = params["centre_px"]

    start = time.perf_counter()
    datacube = py4DSTEM.DataCube(data=patterns)
    probe = py4DSTEM.Probe(data=probe_image)
    radius, q0x, q0y = probe.measure_disk(returncalc=True, plot=False)
    kernel = probe.get_kernel(mode="sigmoid", origin=(q0x, q0y), radii=(radius, 2 * radius))
    t_template = time.perf_counter()

    bragg = datacube.find_Bragg_disks(
        template=kernel,
        corrPower=params.get("corr_power", 1.0),
        sigma_cc=params.get("sigma_cc", 1.0),
        subpixel="multicorr",
        upsample_factor=params.get("upsample_factor", 16),
        minRelativeIntensity=params.get("min_relative_intensity", 0.0005),
        minPeakSpacing=params.get("min_peak_spacing", 4),
        edgeBoundary=params.get("edge_boundary", 2),
        maxNumPeaks=params.get("max_peaks", 100),
    )
    t_disks = time.perf_counter()

    bragg.calibration.set_origin((centre, centre))
    bragg.calibration.set_Q_pixel_size(params["k_sampling"])
    bragg.calibration.set_Q_pixel_units("A^-1")
    bragg.setcal(center=True, ellipse=False, pixel=False, rotate=False)
    strain_map = py4DSTEM.StrainMap(braggvectors=bragg)
    strain_map.choose_basis_vectors(minSpacing=3, maxNumPeaks=params.get("max_peaks", 100))
    strain_map.set_max_peak_spacing(params.get("max_peak_spacing_px", 2.0))  # in pixels
    strain_map.fit_basis_vectors()
    y0, y1, x0, x1 = params["reference_roi"]
    roi = np.zeros((n_y, n_x), bool)
    roi[y0:y1, x0:x1] = True
    strain_map.get_strain(gvects=roi)
    t_strain = time.perf_counter()

    g1g2 = strain_map.g1g2_map
    np.savez(
        work / "py4dstem_out.npz",
        **{name: np.asarray(g1g2[name].data) for name in ("g1x", "g1y", "g2x", "g2y", "mask")},
        strain=np.asarray(strain_map.data),
    )
    n = n_y * n_x
    timing = {
        "patterns": n,
        "seconds_template": t_template - start,
        "seconds_disk_detection": t_disks - t_template,
        "seconds_strain": t_strain - t_disks,
        "seconds_total": t_strain - start,
        "patterns_per_s_disk_detection": n / (t_disks - t_template),
        "patterns_per_s_end_to_end": n / (t_strain - start),
        "py4dstem_version": py4DSTEM.__version__,
        "numpy_version": np.__version__,
    }
    (work / "py4dstem_timing.json").write_text(json.dumps(timing, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
