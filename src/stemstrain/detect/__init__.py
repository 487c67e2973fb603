"""Spot detectors: the network and the classical methods it is measured against.

A detector is calibrated for one scan and maps a batch of patterns to spots (:class:`Detector`);
indexing, the lattice fit and strain are the shared code of :mod:`stemstrain.lattice` and
:mod:`stemstrain.strainmap` for every method. :func:`make_detector` builds the detector of a
method; :data:`METHODS` lists them.

- ``unet``: the network's spot image (:mod:`stemstrain.detect.network`);
- ``bragg``: template-matched Bragg disks (:mod:`stemstrain.detect.bragg`);
- ``cepstrum``, ``cepstrum-multi``: primary / all cepstral peaks, real space (:mod:`stemstrain.detect.cepstrum`);
- ``peaks``: local maxima of the raw patterns (:mod:`stemstrain.detect.maxima`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from stemstrain.config import BASELINES, METHODS, NETWORK
from stemstrain.errors import StemstrainInputError
from stemstrain.runtime import resolve_device

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

__all__ = ["BASELINES", "METHODS", "NETWORK", "NETWORK_OPTIONS", "Detector", "make_detector"]

# Options of the network alone; the other methods ignore them (the baselines batch on their own).
NETWORK_OPTIONS = {"precision", "engine", "compile", "allow_calibration_mismatch"}


class Detector(Protocol):
    """Spots of a batch of patterns, calibrated for one scan.

    ``detector(patterns (n, H, W)) -> (positions (n, m, 2), weights (n, m))``, NaN-padded (weight
    0). With ``space = "reciprocal"`` positions are (x, y) [1/angstrom] relative to k = 0 (the
    lattice is fitted with the (0, 0) spot's position free); with ``space = "real"`` they are
    cepstral peaks (x, y) [angstrom] (the lattice goes through r = 0).
    """

    space: str

    def __call__(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def make_detector(method: str, scan: xr.Dataset, model=None, **options) -> Detector:
    """Spot detector of a method, calibrated for a scan.

    Parameters
    ----------
    method : {"unet", "bragg", "cepstrum", "cepstrum-multi", "peaks"}
        One of :data:`METHODS`; ``unet`` needs ``model``.
    scan : xr.Dataset
        4D data (contract of docs/DESIGN.md): its k coords, ``energy_eV``, ``semiangle_mrad`` and
        optional ``probe`` calibrate the detector.
    model : path or (torch.nn.Module, dict), optional
        The exported network, for ``unet``.
    **options
        Options of the method's detector: unet: device, precision, engine, compile, batch_size,
        threshold_rel, min_distance, max_peaks, allow_calibration_mismatch, refine ("auto",
        "offsets", "template"), template, tilt_prior, disk_correction (a file of
        :mod:`stemstrain.model.disks`) (:class:`~stemstrain.detect.network.UNetDetector`);
        bragg: template ("auto", "probe", "simulated", "mean"), hybrid, max_peaks,
        min_relative_height, upsample, tilt_prior, batch_size, device (:class:`~stemstrain.detect.bragg.BraggDetector`);
        cepstrum, cepstrum-multi: offset, r_min, r_max, primary_height, max_peaks,
        min_relative_height, upsample, lattice_tolerance, mask_radius_px, batch_size, device
        (:class:`~stemstrain.detect.cepstrum.CepstrumDetector`); peaks: threshold_rel, min_distance,
        max_peaks (:class:`~stemstrain.detect.maxima.PeakDetector`).
        A device ``auto`` is the GPU when there is one.

    Raises
    ------
    StemstrainInputError
        Unknown method or option, a missing model, or a device that is not there.
    """
    if method == NETWORK:
        from stemstrain.detect.network import UNetDetector

        if model is None:
            raise StemstrainInputError("--model: the unet method needs a model checkpoint (CKPT_DIR/model.pt)")
        _check_options(method, UNetDetector, options)
        return UNetDetector(model, scan, **options)
    if method == "peaks":
        from stemstrain.detect.maxima import PeakDetector

        options = {k: v for k, v in options.items() if k not in NETWORK_OPTIONS | {"device", "batch_size"}}
        _check_options(method, PeakDetector, options)
        return PeakDetector(scan, **options)
    if method in BASELINES:
        options = {k: v for k, v in options.items() if k not in NETWORK_OPTIONS}
        if "device" in options:
            options["device"] = resolve_device(options["device"])
        try:
            return _baseline_builder(method)(scan, **options)
        except TypeError as err:
            raise StemstrainInputError(f"method {method!r}: invalid option ({err})") from None
    raise StemstrainInputError(
        f"--method: expected one of {METHODS}, found {method!r} (not a baseline nor the network)"
    )


def _baseline_builder(method: str) -> Callable:
    from stemstrain.detect.bragg import make_bragg_detector
    from stemstrain.detect.cepstrum import make_cepstrum_detector

    return {
        "bragg": make_bragg_detector,
        "cepstrum": lambda scan, **o: make_cepstrum_detector(scan, multi=False, **o),
        "cepstrum-multi": lambda scan, **o: make_cepstrum_detector(scan, multi=True, **o),
    }[method]


def _check_options(method: str, detector: type, options: dict) -> None:
    known = set(inspect.signature(detector.__init__).parameters) - {"self", "model", "scan"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise StemstrainInputError(
            f"--detector-option: method {method!r} has no option(s) {unknown}; it takes {sorted(known)}"
        )
