"""Electron-optical relations shared by detection, ingest and simulation (pure functions)."""

from __future__ import annotations

import numpy as np
from ase import units

__all__ = ["electron_wavelength"]


def electron_wavelength(energy_eV: float) -> float:
    """Relativistic de Broglie wavelength of the beam electrons [angstrom].

    ``λ = h c / sqrt(E (2 m c² + E))`` with E the kinetic energy, the formula and constants (ase's
    CODATA) of abTEM's ``energy2wavelength``, whose value it equals; importing abTEM would compile its
    numba kernels first (3-6 s at the start of every strain run).

    Parameters
    ----------
    energy_eV : float
        Beam energy [eV], positive.
    """
    if not energy_eV > 0:
        raise ValueError(f"beam energy must be positive, found {energy_eV} eV")
    rest_energy_eV = units._me * units._c**2 / units._e
    return float(units._hplanck * units._c / np.sqrt(energy_eV * (2 * rest_energy_eV + energy_eV)) / units._e * 1e10)
