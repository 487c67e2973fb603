"""Crystals in zone-axis orientation: ase Atoms with the zone axis along z.

Each crystal is an orthogonal unit cell (x, y in the projection plane, z along the zone axis) built
from a few lines of data in :data:`CRYSTALS`; adding a crystal means adding one entry. The projected
2-D lattice (:func:`projected_cell`) is the smallest lattice of translations of the structure seen
down the zone axis; its reciprocal lattice holds every zero-order Laue-zone reflection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ase
import numpy as np

from stemstrain.errors import StemstrainInputError

__all__ = ["CRYSTALS", "Crystal", "crystal_unit", "get_crystal", "projected_cell"]


@dataclass(frozen=True)
class Crystal:
    """An orthogonal zone-axis unit cell.

    Attributes
    ----------
    name : str
        Name used in configs, e.g. ``"Si_110"``.
    zone_axis : str
        Miller indices of the zone axis, e.g. ``"[110]"``.
    cell : tuple of float
        Orthogonal cell lengths (x, y, z) [angstrom]; z along the zone axis.
    symbols : tuple of str
        Chemical symbols of the atoms in the cell.
    fractional : tuple of (float, float, float)
        Fractional positions of the atoms in the cell.
    projected_basis : ((float, float), (float, float))
        Primitive basis of the projected 2-D lattice as fractions of (cell x, cell y), one row per vector.
    slices_per_period : int
        Multislice slices per period along z (one per atomic plane).
    rms_displacement : dict of str to float
        Thermal root-mean-square displacement per element and direction [angstrom] (frozen phonons).
    """

    name: str
    zone_axis: str
    cell: tuple[float, float, float]
    symbols: tuple[str, ...]
    fractional: tuple[tuple[float, float, float], ...]
    projected_basis: tuple[tuple[float, float], tuple[float, float]]
    slices_per_period: int
    rms_displacement: dict[str, float] = field(default_factory=dict)

    @property
    def period(self) -> float:
        """Repeat distance along the zone axis [angstrom]."""
        return self.cell[2]


_SI = 5.431  # lattice parameters [angstrom] at room temperature
_STO = 3.905
_AU = 4.078

# Si [110]: x = [1-10], y = [001], z = [110]; the projection is the centred rectangular "dumbbell" lattice.
CRYSTALS: dict[str, Crystal] = {
    "Si_110": Crystal(
        name="Si_110",
        zone_axis="[110]",
        cell=(_SI / np.sqrt(2), _SI, _SI / np.sqrt(2)),
        symbols=("Si",) * 4,
        fractional=((0.0, 0.0, 0.0), (0.5, 0.25, 0.0), (0.5, 0.5, 0.5), (0.0, 0.75, 0.5)),
        projected_basis=((0.5, 0.5), (0.5, -0.5)),
        slices_per_period=2,
        rms_displacement={"Si": 0.076},
    ),
    "SrTiO3_001": Crystal(
        name="SrTiO3_001",
        zone_axis="[001]",
        cell=(_STO, _STO, _STO),
        symbols=("Sr", "Ti", "O", "O", "O"),
        fractional=((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5), (0.5, 0.5, 0.0)),
        projected_basis=((1.0, 0.0), (0.0, 1.0)),
        slices_per_period=2,
        rms_displacement={"Sr": 0.08, "Ti": 0.07, "O": 0.09},
    ),
    "Au_001": Crystal(
        name="Au_001",
        zone_axis="[001]",
        cell=(_AU, _AU, _AU),
        symbols=("Au",) * 4,
        fractional=((0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)),
        projected_basis=((0.5, 0.0), (0.0, 0.5)),
        slices_per_period=2,
        rms_displacement={"Au": 0.086},
    ),
}


def get_crystal(name: str) -> Crystal:
    """Look up a crystal by name.

    Raises
    ------
    StemstrainInputError
        If ``name`` is not one of :data:`CRYSTALS`.
    """
    try:
        return CRYSTALS[name]
    except KeyError:
        raise StemstrainInputError(f"unknown crystal {name!r}: expected one of {sorted(CRYSTALS)}") from None


def crystal_unit(name: str) -> ase.Atoms:
    """Orthogonal unit cell of a crystal as ase Atoms, zone axis along z, periodic in x, y, z."""
    crystal = get_crystal(name)
    fractional = np.asarray(crystal.fractional, dtype=float)
    # Atomic planes sit in the middle of their slices, so thermal displacements never cross a slice edge.
    fractional[:, 2] = (fractional[:, 2] + 0.5 / crystal.slices_per_period) % 1.0
    return ase.Atoms(crystal.symbols, scaled_positions=fractional, cell=np.diag(crystal.cell), pbc=True)


def projected_cell(name: str) -> np.ndarray:
    """Primitive real-space basis of the projected structure.

    Parameters
    ----------
    name : str
        Crystal name.

    Returns
    -------
    ndarray, shape (2, 2)
        Basis vectors a1, a2 as columns (x, y) [angstrom], perpendicular to the zone axis.
    """
    crystal = get_crystal(name)
    fractions = np.asarray(crystal.projected_basis, dtype=float)
    return (fractions * np.asarray(crystal.cell[:2])).T
