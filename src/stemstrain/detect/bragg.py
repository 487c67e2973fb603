"""Bragg-disk detection by template matching (Pekin et al., Ultramicroscopy 176, 170 (2017)).

Each pattern is correlated with a vacuum-probe template through the FFT. The hybrid correlation
keeps the phase of the cross-power spectrum and raises its magnitude to ``hybrid`` (1: cross-
correlation, robust to noise; 0: phase correlation, sharp peaks, sensitive to noise). Coarse
peaks of the correlation map come from :func:`stemstrain.peaks.find_peaks` (the same peak finder
as the network path); each is then refined by evaluating the correlation on a fine grid around it.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from stemstrain.detect.fourier import fine_grid, fine_grid_maximum, in_batches, local_fourier_sum
from stemstrain.errors import StemstrainInputError
from stemstrain.io import k_calibration
from stemstrain.optics import electron_wavelength
from stemstrain.peaks import find_peaks

__all__ = ["TILT_PRIOR", "BraggDetector", "TemplateRefiner", "aperture_disk", "disk_radius", "probe_template"]

TEMPLATE_SOURCES = ("auto", "probe", "simulated", "mean")


def disk_radius(energy_eV: float, semiangle_mrad: float) -> float:
    """Radius of the probe-forming aperture in the diffraction plane [1/angstrom].

    Parameters
    ----------
    energy_eV : float
        Beam energy [eV].
    semiangle_mrad : float
        Convergence semiangle [mrad].
    """
    return semiangle_mrad * 1e-3 / electron_wavelength(energy_eV)


def aperture_disk(
    shape: tuple[int, int], k_sampling: float, centre: tuple[float, float], radius: float, supersample: int = 8
) -> np.ndarray:
    """Simulated vacuum probe: the aperture disk integrated over each detector pixel.

    Parameters
    ----------
    shape : (int, int)
        Pattern shape (k_y, k_x) [px].
    k_sampling : float
        Pixel size [1/angstrom].
    centre : (float, float)
        Fractional pixel index (y, x) of k = 0.
    radius : float
        Aperture radius [1/angstrom].
    supersample : int
        Sub-pixels per pixel and axis used to integrate the disk edge.

    Returns
    -------
    ndarray, shape ``shape``, float32
        Fraction of each pixel inside the disk (1 inside, 0 outside).
    """
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    k_y = ((np.arange(shape[0])[:, None] + sub) - centre[0]) * k_sampling
    k_x = ((np.arange(shape[1])[:, None] + sub) - centre[1]) * k_sampling
    inside = (k_y[:, :, None, None] ** 2 + k_x[None, None, :, :] ** 2) <= radius**2  # (H, s, W, s)
    return inside.mean(axis=(1, 3)).astype(np.float32)


def probe_template(scan: xr.Dataset, source: str = "auto", n_mean: int = 256) -> tuple[np.ndarray, str]:
    """Vacuum-probe template of a 4D scan.

    Parameters
    ----------
    scan : xr.Dataset
        4D data (contract of docs/DESIGN.md).
    source : {"auto", "probe", "simulated", "mean"}
        ``probe``: the scan's ``probe`` variable; ``simulated``: the aperture disk at the scan's
        energy, semiangle and detector calibration; ``mean``: the central disk cut from the mean
        of the first ``n_mean`` patterns. ``auto`` takes the first that the scan supports, in
        this order.
    n_mean : int
        Patterns averaged for the ``mean`` template.

    Returns
    -------
    template : ndarray (k_y, k_x), float32
        Template at the scan's detector calibration, centred on k = 0 of the scan.
    source : str
        The source used.

    Raises
    ------
    StemstrainInputError
        If the requested source is unknown or the scan lacks what it needs.
    """
    if source not in TEMPLATE_SOURCES:
        raise StemstrainInputError(f"template source {source!r} is unknown; expected one of {TEMPLATE_SOURCES}")
    shape = (scan.sizes["k_y"], scan.sizes["k_x"])
    if source in ("auto", "probe") and "probe" in scan.data_vars:
        probe = np.asarray(scan["probe"].values, dtype=np.float32)
        if probe.shape != shape or not np.isfinite(probe).all() or probe.sum() <= 0:
            raise StemstrainInputError(
                f"variable 'probe' must be a finite, non-negative image of shape {shape}; found shape {probe.shape}"
            )
        return probe, "probe"
    if source == "probe":
        raise StemstrainInputError(
            f"template source 'probe' needs a variable 'probe' in the scan; found variables {sorted(scan.data_vars)}"
        )
    k_sampling, centre = k_calibration(scan)
    energy, semiangle = scan.attrs.get("energy_eV"), scan.attrs.get("semiangle_mrad")
    if source in ("auto", "simulated") and energy and semiangle:
        radius = disk_radius(float(energy), float(semiangle))
        return aperture_disk(shape, k_sampling, centre, radius), "simulated"
    if source == "simulated":
        raise StemstrainInputError("template source 'simulated' needs the attributes 'energy_eV' and 'semiangle_mrad'")
    return _mean_central_disk(scan, centre, n_mean), "mean"


def _mean_central_disk(scan: xr.Dataset, centre: tuple[float, float], n_mean: int) -> np.ndarray:
    """The undiffracted disk cut from the mean pattern with a soft mask at its measured edge."""
    data = scan["data"]
    n_x = data.sizes["scan_x"]
    rows = max(1, min(data.sizes["scan_y"], -(-n_mean // n_x)))
    mean = np.asarray(data.isel(scan_y=slice(0, rows)).mean(dim=("scan_y", "scan_x")).values, dtype=np.float64)
    y, x = np.indices(mean.shape)
    distance = np.hypot(y - centre[0], x - centre[1])
    # The disk edge is where the intensity falls to half of the disk's centre value.
    central = mean[int(round(centre[0])), int(round(centre[1]))]
    radial = np.array([mean[(distance >= r) & (distance < r + 1)].mean() for r in range(int(distance.max()))])
    below = np.nonzero(radial < 0.5 * central)[0]
    edge = float(below[0]) if below.size else 4.0
    mask = np.clip(edge + 1.5 - distance, 0.0, 1.0)
    return (mean * mask).astype(np.float32)


def centred_template_ft(template: np.ndarray) -> np.ndarray:
    """FT of the template moved (by a Fourier phase ramp) so that its centre of mass is at pixel 0.

    Raises
    ------
    StemstrainInputError
        If the template has no positive intensity.
    """
    template = np.asarray(template, dtype=np.float64)
    if template.sum() <= 0:
        raise StemstrainInputError("the probe template has no positive intensity")
    y, x = np.indices(template.shape)
    com_y, com_x = (template * y).sum() / template.sum(), (template * x).sum() / template.sum()
    freq_y = np.fft.fftfreq(template.shape[0])[:, None]
    freq_x = np.fft.fftfreq(template.shape[1])[None, :]
    return np.fft.fft2(template) * np.exp(2j * np.pi * (freq_y * com_y + freq_x * com_x))


class BraggDetector:
    """Bragg-disk positions by hybrid template correlation.

    Parameters
    ----------
    template : ndarray (k_y, k_x)
        Vacuum-probe image at the patterns' calibration; it is centred on its centre of mass.
    k_sampling : float
        Pixel size [1/angstrom].
    centre : (float, float)
        Fractional pixel index (y, x) of k = 0.
    disk_radius_px : float
        Disk radius [px]; disks closer than this plus one pixel to the detector edge are dropped.
    hybrid : float
        Exponent of the cross-power magnitude, 0 (phase correlation) to 1 (cross-correlation, the
        default: on noise-free disks the hybrid 0.5 pulled subpixel positions by up to 0.5 px towards
        the pixel grid, 0.13 px on average, and compressed e_xx by 12 % on a rotated Si [110] scan).
    max_peaks : int
        Largest number of disks returned per pattern.
    min_relative_height : float
        Disks whose correlation height is under this fraction of the strongest *diffracted*
        disk's are dropped. The undiffracted disk does not set the scale: in thick heavy crystals
        (Au [001], 30 nm) it holds 80 % of the beam and every Bragg disk is under 0.1 % of it.
        The defaults of ``max_peaks``, ``min_relative_height`` and ``upsample`` are those of the
        tuned py4DSTEM (``maxNumPeaks`` 100, ``minRelativeIntensity`` 0.005, upsampling 32): from
        64, 0.02 and 16 they lowered the error on the suite's Si [110] 75 nm scan from 13.6e-4 to
        11.0e-4 (more faint high-order disks) and made no other suite scan worse.
    upsample : int
        Subpixel refinement grid: ``1/upsample`` px over ±1 px around each coarse peak.
    tilt_prior : float
        0 (the default): the plain correlation peak, the method as its users run it. Above 0, each
        disk found is placed again by the network's read-out, the template fitted with the disk's
        intensity tilt (:class:`TemplateRefiner`, prior spread ``tilt_prior``, :data:`TILT_PRIOR`):
        the same read-out on the classical detection, so that the network's part can be told apart.
    batch_size : int
        Patterns per internal batch (bounds the memory of the refinement).
    device : str
        Torch device (``cpu``, ``cuda``).

    Attributes
    ----------
    space : str
        ``"reciprocal"``: positions are (x, y) [1/angstrom] relative to k = 0.
    """

    space = "reciprocal"

    def __init__(
        self,
        template: np.ndarray,
        k_sampling: float,
        centre: tuple[float, float],
        disk_radius_px: float,
        hybrid: float = 1.0,
        max_peaks: int = 100,
        min_relative_height: float = 0.005,
        upsample: int = 32,
        tilt_prior: float = 0.0,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        if not 0.0 <= hybrid <= 1.0:
            raise StemstrainInputError(f"option hybrid must lie in [0, 1] (1: cross-correlation), found {hybrid}")
        self.k_sampling = float(k_sampling)
        self.centre = (float(centre[0]), float(centre[1]))
        self.disk_radius_px = float(disk_radius_px)
        self.hybrid = float(hybrid)
        self.max_peaks = int(max_peaks)
        self.min_relative_height = float(min_relative_height)
        self.upsample = int(upsample)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.shape = template.shape
        self._template_ft = self._centred_template_ft(np.asarray(template, dtype=np.float64))
        self._beyond_direct_beam = self._off_direct_beam(*np.indices(self.shape)[::-1])
        self.tilt_prior = float(tilt_prior)
        self._refiner = TemplateRefiner(template, disk_radius_px, tilt_prior=tilt_prior) if tilt_prior else None

    def _off_direct_beam(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Pixels (x, y) [px] farther from k = 0 than the undiffracted disk and its neighbours' edges."""
        return np.hypot(y - self.centre[0], x - self.centre[1]) > 2 * self.disk_radius_px + 1

    def _centred_template_ft(self, template: np.ndarray) -> torch.Tensor:
        """Conjugate FT of the template moved so its centre of mass is at pixel 0."""
        return torch.as_tensor(np.conj(centred_template_ft(template)), dtype=torch.complex64, device=self.device)

    def correlation_spectrum(self, patterns: torch.Tensor) -> torch.Tensor:
        """Hybrid cross-power spectrum (n, H, W) of patterns with the template."""
        product = torch.fft.fft2(patterns) * self._template_ft
        if self.hybrid == 1.0:
            return product
        magnitude = product.abs()
        scale = torch.where(magnitude > 0, magnitude.clamp_min(1e-30) ** (self.hybrid - 1.0), 0.0)
        return product * scale

    def __call__(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Disk positions of a batch of patterns.

        Parameters
        ----------
        patterns : ndarray, shape (n, k_y, k_x)
            Diffraction patterns [counts].

        Returns
        -------
        positions : ndarray, shape (n, m, 2)
            Disk centres (x, y) [1/angstrom] relative to k = 0, NaN-padded.
        weights : ndarray, shape (n, m)
            Correlation height of each disk relative to the strongest diffracted disk of the
            pattern (0 for padding; the undiffracted disk is usually above 1).
        """
        return in_batches(self._detect, patterns, self.batch_size, self.shape)

    def _detect(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            spectrum = self.correlation_spectrum(torch.as_tensor(patterns, device=self.device))
            correlation = torch.fft.ifft2(spectrum).real.cpu().numpy()
            diffracted = np.where(self._beyond_direct_beam, correlation, -np.inf).reshape(len(correlation), -1)
            coarse, _ = find_peaks(
                correlation,
                threshold=self.min_relative_height * np.maximum(diffracted.max(axis=-1), 0.0),
                threshold_rel=0.0,
                min_distance=max(2, int(self.disk_radius_px)),
                max_peaks=self.max_peaks,
            )
            coarse = torch.as_tensor(coarse, dtype=torch.float32, device=self.device)
            positions, heights = self._locate(spectrum, coarse)
        positions = positions.cpu().numpy().astype(np.float64)
        if self._refiner is not None:
            positions, _ = self._refiner(patterns, positions)
        heights = np.clip(np.nan_to_num(heights.cpu().numpy().astype(np.float64)), 0.0, None)
        return self._select(positions, heights)

    def _locate(self, spectrum: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Correlation peaks (x, y) [px] and heights on the fine grid around the coarse peaks."""
        device = spectrum.device
        freq_y = torch.fft.fftfreq(self.shape[0], device=device)
        freq_x = torch.fft.fftfreq(self.shape[1], device=device)
        offsets, step = fine_grid(1.0, self.upsample, device)
        centres = torch.round(coarse)
        values = local_fourier_sum(spectrum, freq_y, freq_x, centres, offsets, sign=+1.0).real / spectrum[0].numel()
        return fine_grid_maximum(values, centres, step)

    def _select(self, positions_px: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop weak disks and disks cut by the detector edge; convert pixels to 1/angstrom.

        ``intensity`` is the correlation height at each disk: the template-weighted sum of the disk,
        as py4DSTEM weights its fit. (The 3×3 px mean at the centre, used before, is noisier and gave
        6 % more error on Si [110] 75 nm, 1e6 e-: 11.0e-4 against 10.3e-4.) With ``hybrid`` < 1 the
        heights are compressed and faint disks weigh relatively more.
        """
        margin = self.disk_radius_px + 1.0
        x, y = positions_px[..., 0], positions_px[..., 1]
        inside = (x >= margin) & (x <= self.shape[1] - 1 - margin) & (y >= margin) & (y <= self.shape[0] - 1 - margin)
        diffracted = inside & self._off_direct_beam(x, y)
        strongest = np.max(np.where(diffracted, intensity, 0.0), axis=-1, keepdims=True)
        relative = intensity / np.where(strongest > 0, strongest, 1.0)
        keep = inside & np.isfinite(x) & (relative >= self.min_relative_height)
        k = np.stack([(x - self.centre[1]) * self.k_sampling, (y - self.centre[0]) * self.k_sampling], axis=-1)
        return np.where(keep[..., None], k, np.nan), np.where(keep, relative, 0.0)


def make_bragg_detector(scan: xr.Dataset, template: str = "auto", **options) -> BraggDetector:
    """Bragg-disk detector for a scan.

    Parameters
    ----------
    scan : xr.Dataset
        4D data; its k coords, ``energy_eV`` and ``semiangle_mrad`` calibrate the detector.
    template : {"auto", "probe", "simulated", "mean"}
        Source of the probe template (:func:`probe_template`).
    **options
        Further :class:`BraggDetector` parameters (hybrid, max_peaks, min_relative_height,
        upsample, tilt_prior, batch_size, device).
    """
    image, source = probe_template(scan, template)
    k_sampling, centre = k_calibration(scan)
    radius_px = disk_radius(float(scan.attrs["energy_eV"]), float(scan.attrs["semiangle_mrad"])) / k_sampling
    detector = BraggDetector(image, k_sampling, centre, radius_px, **options)
    detector.template_source = source
    return detector


TILT_PRIOR = 0.14
"""Prior spread of a disk's relative intensity tilt, centre to edge (:class:`TemplateRefiner`).

Chosen on the uniform series (``bench/uniform_series.py``; static 1e6 and 1e4 e-, 4 frozen phonons at
1e6 e-), not on the accuracy suite: 0.14 (a ridge κ = 1/τ² = 300 px² at the suite's 2.4 px disks) was
the best of the values tried in each of the three (static 1e6: no prior, 0.44, 0.14; 1e4: 0.14,
0.076, 0.044; 4 frozen phonons: 0.24, 0.14, 0.076). Checked again on 2026-12-02 (stop 36, AMD EPYC
Zen 4, bf16) with 4 frozen phonons at 1e5 e-, a set not used for the choice: 0.08, 0.14, 0.24 give
9.62, 9.29, 9.50e-4 (static 1e6: 4.18, 4.28, 4.52; 1e4: 16.89, 16.69, 16.99;
``bench/results/uniform_series*_zen4-tilt*.json``)."""


class TemplateRefiner:
    """Disk positions refined by fitting the probe template, tilted, near given positions.

    Each disk is modelled as the template T moved by a subpixel shift s and multiplied by a plane:
    ``w(q) ≈ a T(q - s) + b·(q - s) T(q - s)``. Dynamical scattering tilts the intensity across a
    disk, and a plain correlation ``Σ_q w(q) T(q - s)`` is pulled towards the disk's bright side while
    the disk's edge, the only part that moves exactly with the lattice, stays put. The tilt b is fitted
    jointly with the amplitude a at each shift, and the disk is placed at the shift whose fit leaves the
    least residual. A Gaussian prior on the relative tilt (spread ``tilt_prior`` from the disk's
    centre to its edge) turns the tilt's least squares into a ridge whose weight grows as the disk's
    counts fall (Poisson variance a per pixel): faint disks return to the plain correlation, whose
    noise is lower, and bright ones get the edge's unbiased position. (Uniform series, general-v2's
    spots, static 1e6 e-: geometric mean 7.65e-4 plain, 4.31e-4 tilted; 4 frozen phonons 9.88e-4,
    5.55e-4; 1e4 e- 17.2e-4, 16.7e-4. Without the prior, the suite's Si [110] 37 nm at 1e4 e- went
    from 10.7e-4 to 23.9e-4.) The prior assumes the patterns are in counts (electrons); data scaled
    down from counts get the plain correlation, data scaled up a weaker prior. The model assumes the
    template has the disks' shape (the scan's vacuum probe, or the aperture disk at its optics): a spot
    of another shape lets the tilt mimic a shift (Gaussian spots narrower than the template moved by up
    to 1 px and fitted no lattice), so the network's detector fits the tilt by default only with a
    measured template (:class:`~stemstrain.detect.network.UNetDetector`). A hard switch to the plain
    correlation where the two fits disagree by more than 0.25 px was tried and dropped: disks that
    switched from pattern to pattern tripled the error on the uniform series.

    The fit is evaluated only within ±1 px of positions found elsewhere (the network's spots) and
    only over the template's support, so it costs a few small matrix products per pattern instead of
    a full-frame FFT and a Fourier sum per disk. The search is coarse to fine: shifts on a
    ``1/coarse`` px grid over ±1 px, then a ``1/fine`` px grid over ±1/``coarse`` px around the best,
    then a three-point parabola along each axis
    (:func:`~stemstrain.detect.fourier.fine_grid_maximum`). With ``fine=16, cross=True`` the fine
    step takes 81 shifts per disk in place of 289 and ends in the quadratic fitted to the 3×3 around
    the best, xy term included: it lands nearer the score's maximum (median 0.8-1.1 mpx against
    1.2-1.5 at 1e6 e-; ``bench/readout_search.py``), the refiner runs 1.5-1.9 times as fast and the
    uniform series gives the same strain (4.285e-4 against 4.284e-4 static at 1e6 e-, 16.68 against
    16.69e-4 at 1e4 e-, 9.295 against 9.288e-4 with 4 frozen phonons at 1e5 e-;
    ``bench/results/uniform_series*_zen4-*.json``), but on the held-out accuracy suite the geometric
    mean went from 7.92e-4 to 8.07e-4 (Si [110] 75 nm at 1e6 e- 5.8 → 6.8e-4, through the e_xx
    offset against the reference, -3.6 → -4.6e-4; SrTiO3 16.2 → 15.7e-4): not the default.

    Parameters
    ----------
    template : ndarray (k_y, k_x)
        Vacuum-probe image at the patterns' calibration (:func:`probe_template`).
    disk_radius_px : float
        Disk radius [px]; the template is cut ``disk_radius_px + 2.5`` px around its centre.
    coarse, fine : int
        Steps per pixel of the two search grids (``fine`` a multiple of ``coarse``).
    tilt_prior : float
        Prior spread of the relative intensity change from a disk's centre to its edge (:data:`TILT_PRIOR`);
        0 fits no tilt: the plain correlation, as :class:`BraggDetector` has it.
    cross : bool
        The final step fits the quadratic with its xy term (see above); False: a parabola along each axis.
    """

    def __init__(
        self,
        template: np.ndarray,
        disk_radius_px: float,
        coarse: int = 4,
        fine: int = 32,
        tilt_prior: float = TILT_PRIOR,
        cross: bool = False,
    ):
        if tilt_prior < 0:
            raise StemstrainInputError(f"option tilt_prior must be >= 0 (0: no tilt), found {tilt_prior}")
        self.shape = tuple(template.shape)
        self.half = int(np.ceil(disk_radius_px + 2.5))
        self.coarse, self.fine, self.cross = int(coarse), int(fine), bool(cross)
        # Prior spread of the relative tilt per pixel [1/px].
        self.tilt_per_px = float(tilt_prior) / float(disk_radius_px)
        ratio = self.fine // self.coarse
        if self.fine % self.coarse:
            raise StemstrainInputError(f"fine ({fine}) must be a multiple of coarse ({coarse})")
        # Templates on the fine grid over ±(1 + 1/coarse) px: index i is the shift (i - reach) / fine.
        reach = self.fine + ratio
        shifts = (np.arange(2 * reach + 1) - reach) / self.fine
        spectrum = centred_template_ft(template)
        freq_y = np.fft.fftfreq(self.shape[0])
        freq_x = np.fft.fftfreq(self.shape[1])
        side = np.arange(-self.half, self.half + 1)
        # Separable Fourier shift of the centred template to (shift_y, shift_x), cut to its support:
        # T_s[i, j] = Σ_fy Σ_fx F[fy, fx] e^{2πi fy (i - s_y)} e^{2πi fx (j - s_x)} / (H W).
        rows = np.exp(2j * np.pi * (side[None, :, None] - shifts[:, None, None]) * freq_y)  # (u, w, H)
        cols = np.exp(2j * np.pi * (side[None, :, None] - shifts[:, None, None]) * freq_x)  # (u, w, W)
        moved = np.einsum("aiy,yx,bjx->abij", rows, spectrum, cols, optimize=True).real / spectrum.size
        moved /= moved.max()  # a is then the disk's counts per pixel at its centre
        # The tilt's basis images, centred on each shift: (x - s_x) T_s and (y - s_y) T_s.
        from_y = (side[None, :] - shifts[:, None])[:, None, :, None]  # (u, 1, w, 1)
        from_x = (side[None, :] - shifts[:, None])[None, :, None, :]  # (1, u, 1, w)
        basis = np.stack([moved, moved * from_x, moved * from_y], axis=2)  # (u, u, 3, w, w)
        # Each image normalised at each shift: the projections v̂ then give the least squares directly.
        # The tilt images are nearly orthogonal to the template (T is symmetric), so the fit separates.
        norms = (basis**2).sum(axis=(-2, -1), keepdims=True)
        u, w = len(shifts), len(side)
        self._basis = torch.as_tensor((basis / np.sqrt(norms)).reshape(u, u, 3, w * w), dtype=torch.float32)
        self._amplitude_scale = float(np.sqrt(norms[..., 0, 0, 0].mean()))  # v̂0 / this: counts per px
        self._tilt_norm = float(norms[..., 1:, 0, 0].mean())  # varies by 0.3 % with the shift
        self._ratio = ratio
        self._side = torch.as_tensor(side)

    @staticmethod
    def _project(windows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """Projections (n, s, k) of the windows (n, w²) on the basis images (s, k, w²) of each shift."""
        return (windows @ basis.reshape(-1, basis.shape[-1]).T).reshape(len(windows), *basis.shape[:2])

    @staticmethod
    def _score(values: torch.Tensor, shrink: torch.Tensor | None) -> torch.Tensor:
        """Per window and shift, the squares that the fit explains: the score that the search maximises.

        ``values`` (n, s, k) are the projections v̂ on the normalised template (k = 1) and its two tilt
        images (k = 3). Least squares with the ridge on the tilt explains ``v̂0² + c Σ v̂_tilt²``
        (``shrink`` (n,): c = |tilt image|² / (|tilt image|² + ridge)); a window whose v̂0 is negative
        scores the negative of that. With the template alone the score is v̂0, the plain correlation.
        """
        v0 = values[..., 0]
        if values.shape[-1] == 1:
            return v0
        weights = torch.stack([torch.ones_like(shrink), shrink, shrink], dim=-1)
        score = torch.bmm(values.square(), weights[:, :, None])[..., 0]
        return torch.where(v0 > 0, score, -score)

    def __call__(self, patterns: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Refined positions and correlation heights.

        Parameters
        ----------
        patterns : ndarray (n, k_y, k_x)
            Patterns [counts] at the template's calibration.
        positions : ndarray (n, m, 2)
            Starting positions (x, y) [px], NaN-padded.

        Returns
        -------
        positions : ndarray (n, m, 2)
            Best-fitting shifts (x, y) [px]; NaN for padding and for disks whose template window
            leaves the detector.
        heights : ndarray (n, m)
            Correlation with the (untilted) template at each position (0 where NaN).
        """
        patterns = torch.as_tensor(np.asarray(patterns, dtype=np.float32))
        start = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        n, m, _ = start.shape
        height, width = self.shape
        found = torch.isfinite(start).all(dim=-1)
        centre = torch.round(torch.nan_to_num(start)).long()
        margin = self.half + 1
        inside = (
            found
            & (centre[..., 0] >= margin)
            & (centre[..., 0] < width - margin)
            & (centre[..., 1] >= margin)
            & (centre[..., 1] < height - margin)
        )
        # Windows of the pattern around each rounded start; outside ones read a valid dummy spot.
        cx = torch.where(inside, centre[..., 0], margin)
        cy = torch.where(inside, centre[..., 1], margin)
        rows = (cy[..., None] + self._side)[..., :, None]  # (n, m, w, 1)
        cols = (cx[..., None] + self._side)[..., None, :]  # (n, m, 1, w)
        windows = patterns[torch.arange(n)[:, None, None, None], rows, cols].reshape(n * m, -1)
        step, side = self._ratio, 2 * self.coarse + 1
        k = 3 if self.tilt_per_px > 0 else 1  # basis images fitted: the template, and its tilt
        coarse = self._basis[step::step, step::step][:side, :side, :k].reshape(side * side, k, -1)
        values, shrink = self._project(windows, coarse), None
        if k > 1:
            # The tilt's ridge 1 / (a τ²), with a the disk's plain amplitude [counts per px] on the coarse grid.
            amplitude = values[..., 0].max(dim=-1).values.clamp_min(1e-12) / self._amplitude_scale
            shrink = self._tilt_norm / (self._tilt_norm + 1.0 / (amplitude * self.tilt_per_px**2))
        best = self._score(values, shrink).argmax(dim=-1)
        # Fine grids around each coarse maximum, disks grouped by that maximum (sorted, so that each
        # group is a slice).
        order = torch.argsort(best)
        counts = torch.bincount(best, minlength=side * side).tolist()
        windows, best = windows[order], best[order]
        shrink = None if shrink is None else shrink[order]
        fine = torch.empty(n * m, 2 * step + 1, 2 * step + 1)
        correlation = torch.empty_like(fine)
        first = 0
        for index, count in enumerate(counts):
            if not count:
                continue
            group = slice(first, first + count)
            first += count
            iy, ix = (index // side + 1) * step, (index % side + 1) * step  # fine index of the coarse maximum
            block = self._basis[iy - step : iy + step + 1, ix - step : ix + step + 1, :k]
            values = self._project(windows[group], block.reshape(-1, k, windows.shape[-1]))
            score = self._score(values, None if shrink is None else shrink[group])
            fine[group] = score.reshape(-1, 2 * step + 1, 2 * step + 1)
            correlation[group] = values[..., 0].reshape(-1, 2 * step + 1, 2 * step + 1)
        # Fine grids centred on the coarse maximum: (x, y) shift from the rounded start [px].
        by, bx = best // side, best % side
        grid_centre = torch.stack([(bx - self.coarse) / self.coarse, (by - self.coarse) / self.coarse], dim=-1)
        refined, _ = fine_grid_maximum(fine[:, None], grid_centre[:, None].double(), 1.0 / self.fine, self.cross)
        heights = correlation.reshape(n * m, -1).gather(-1, fine.reshape(n * m, -1).argmax(dim=-1, keepdim=True))
        unsorted = torch.empty_like(order)
        unsorted[order] = torch.arange(len(order))
        refined = refined[unsorted, 0].reshape(n, m, 2) + torch.stack([cx, cy], dim=-1)
        heights = heights[unsorted, 0].reshape(n, m)
        refined = torch.where(inside[..., None], refined, torch.full_like(refined, float("nan")))
        return refined.numpy(), torch.where(inside, heights, torch.zeros_like(heights)).double().numpy()
