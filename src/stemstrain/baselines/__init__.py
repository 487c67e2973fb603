"""Classical spot detectors that the network is measured against.

``make_detector(method, scan, **options)`` returns a detector in the sense of
:mod:`stemstrain.infer`: a callable ``detector(patterns (n, H, W)) -> (positions (n, m, 2),
weights (n, m))`` with ``space = "reciprocal"`` (Bragg disks, (x, y) [1/angstrom] relative to
k = 0) or ``space = "real"`` (cepstral peaks, (x, y) [angstrom]). Indexing, the lattice fit and
strain are the shared code of ``stemstrain.infer`` for every method.
"""

from __future__ import annotations

import xarray as xr

from stemstrain.errors import StemstrainInputError

__all__ = ["BASELINE_METHODS", "make_detector"]

BASELINE_METHODS = ("bragg", "cepstrum", "cepstrum-multi")


def make_detector(method: str, scan: xr.Dataset, **options):
    """Spot detector of a classical method, calibrated for a 4D scan.

    Parameters
    ----------
    method : {"bragg", "cepstrum", "cepstrum-multi"}
        ``bragg``: template-matched Bragg disks (:class:`~stemstrain.baselines.bragg.BraggDetector`,
        options ``template`` ("auto", "probe", "simulated", "mean"), ``hybrid``, ``max_peaks``,
        ``min_relative_height``, ``upsample``, ``batch_size``, ``device``); ``cepstrum`` / ``cepstrum-multi``:
        primary / all cepstral peaks (:class:`~stemstrain.baselines.cepstrum.CepstrumDetector`,
        options ``offset``, ``r_min``, ``r_max``, ``primary_height``, ``max_peaks``,
        ``min_relative_height``, ``upsample``, ``lattice_tolerance``, ``mask_radius_px``,
        ``batch_size``, ``device`` ("cpu", "cuda" or "auto")).
    scan : xr.Dataset
        4D data (contract of DESIGN.md): its k coords, ``energy_eV``, ``semiangle_mrad`` and
        optional ``probe`` variable calibrate the detector.
    **options
        Method options as above.

    Raises
    ------
    StemstrainInputError
        For an unknown method or option.
    """
    from stemstrain.baselines.bragg import make_bragg_detector
    from stemstrain.baselines.cepstrum import make_cepstrum_detector

    builders = {
        "bragg": make_bragg_detector,
        "cepstrum": lambda scan, **o: make_cepstrum_detector(scan, multi=False, **o),
        "cepstrum-multi": lambda scan, **o: make_cepstrum_detector(scan, multi=True, **o),
    }
    if method not in builders:
        raise StemstrainInputError(f"method {method!r} is not a baseline; expected one of {BASELINE_METHODS}")
    if options.get("device") == "auto":
        import torch

        options["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return builders[method](scan, **options)
    except TypeError as err:
        raise StemstrainInputError(f"method {method!r}: invalid option ({err})") from None
