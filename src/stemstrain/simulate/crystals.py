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


# Lattice parameters [angstrom] at room temperature; thermal rms displacements [angstrom] from
# Debye-Waller factors B = 8 pi^2 u^2 of the International Tables.
_SI, _GE, _GAAS = 5.431, 5.658, 5.653
_STO, _MGO = 3.905, 4.212
_AU, _AL, _CU = 4.078, 4.050, 3.615
_MG_A, _MG_C = 3.209, 5.211
_GAN_A, _GAN_C, _GAN_U = 3.189, 5.185, 0.377
_TIO2_A, _TIO2_C, _TIO2_U = 4.594, 2.959, 0.305
_ROOT2, _ROOT3, _ROOT6 = np.sqrt(2.0), np.sqrt(3.0), np.sqrt(6.0)

# Cells of the common zone axes (x, y in the projection plane, z along the zone axis):
# cubic [110]: x = [1-10], y = [001]; fcc [111]: x = [1-10], y = [11-2]; hexagonal [0001]: x = a1,
# y = a1 + 2 a2 (the orthohexagonal cell). Atomic planes sit at multiples of 1 / slices_per_period.
_CUBIC_110 = (1 / _ROOT2, 1.0, 1 / _ROOT2)
_FCC_110 = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
_FCC_001 = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))
_FCC_111 = ((0, 0, 0), (0.5, 0.5, 0), (0, 1 / 3, 1 / 3), (0.5, 5 / 6, 1 / 3), (0, 2 / 3, 2 / 3), (0.5, 1 / 6, 2 / 3))
_HCP_0001 = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 1 / 3, 0.5), (0.5, 5 / 6, 0.5))
_DIAMOND_001 = _FCC_001 + tuple((x + 0.25, y + 0.25, z + 0.25) for x, y, z in _FCC_001)
_CENTRED = ((0.5, 0.5), (0.5, -0.5))  # primitive basis of a centred rectangular projection
_SQUARE = ((1.0, 0.0), (0.0, 1.0))
_HEXAGONAL = ((1.0, 0.0), (0.5, 0.5))  # a1 and a2 of the orthohexagonal cell


def _scaled(cell: tuple[float, float, float], a: float) -> tuple[float, float, float]:
    return tuple(float(a * length) for length in cell)


CRYSTALS: dict[str, Crystal] = {
    # Si [110]: the centred rectangular "dumbbell" projection, d(111) = 3.1 angstrom.
    "Si_110": Crystal(
        name="Si_110",
        zone_axis="[110]",
        cell=_scaled(_CUBIC_110, _SI),
        symbols=("Si",) * 4,
        fractional=((0.0, 0.0, 0.0), (0.5, 0.25, 0.0), (0.5, 0.5, 0.5), (0.0, 0.75, 0.5)),
        projected_basis=_CENTRED,
        slices_per_period=2,
        rms_displacement={"Si": 0.076},
    ),
    # Diamond [001]: a square projection of side a / (2 sqrt 2), the fine d(220) = 2.0 angstrom.
    "Ge_001": Crystal(
        name="Ge_001",
        zone_axis="[001]",
        cell=(_GE, _GE, _GE),
        symbols=("Ge",) * 8,
        fractional=_DIAMOND_001,
        projected_basis=((0.25, 0.25), (0.25, -0.25)),
        slices_per_period=4,
        rms_displacement={"Ge": 0.085},
    ),
    # Zinc blende [110]: the Si dumbbells with two elements.
    "GaAs_110": Crystal(
        name="GaAs_110",
        zone_axis="[110]",
        cell=_scaled(_CUBIC_110, _GAAS),
        symbols=("Ga", "As", "Ga", "As"),
        fractional=((0.0, 0.0, 0.0), (0.5, 0.25, 0.0), (0.5, 0.5, 0.5), (0.0, 0.75, 0.5)),
        projected_basis=_CENTRED,
        slices_per_period=2,
        rms_displacement={"Ga": 0.088, "As": 0.085},
    ),
    "SrTiO3_001": Crystal(
        name="SrTiO3_001",
        zone_axis="[001]",
        cell=(_STO, _STO, _STO),
        symbols=("Sr", "Ti", "O", "O", "O"),
        fractional=((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5), (0.5, 0.5, 0.0)),
        projected_basis=_SQUARE,
        slices_per_period=2,
        rms_displacement={"Sr": 0.08, "Ti": 0.07, "O": 0.09},
    ),
    # Rock salt [001]: mixed Mg-O columns on a square of side a / 2.
    "MgO_001": Crystal(
        name="MgO_001",
        zone_axis="[001]",
        cell=(_MGO, _MGO, _MGO),
        symbols=("Mg",) * 4 + ("O",) * 4,
        fractional=_FCC_001 + ((0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.5), (0.5, 0.5, 0.5)),
        projected_basis=((0.5, 0.0), (0.0, 0.5)),
        slices_per_period=2,
        rms_displacement={"Mg": 0.062, "O": 0.068},
    ),
    "Au_001": Crystal(
        name="Au_001",
        zone_axis="[001]",
        cell=(_AU, _AU, _AU),
        symbols=("Au",) * 4,
        fractional=_FCC_001,
        projected_basis=((0.5, 0.0), (0.0, 0.5)),
        slices_per_period=2,
        rms_displacement={"Au": 0.086},
    ),
    # fcc [111]: ABC stacking; a hexagonal projection of side a / sqrt 6, d(220) = 1.4 angstrom.
    "Al_111": Crystal(
        name="Al_111",
        zone_axis="[111]",
        cell=(_AL / _ROOT2, _AL * _ROOT6 / 2, _AL * _ROOT3),
        symbols=("Al",) * 6,
        fractional=_FCC_111,
        projected_basis=((0.0, 1 / 3), (0.5, 1 / 6)),
        slices_per_period=3,
        rms_displacement={"Al": 0.104},
    ),
    # fcc [110]: the centred rectangular projection of a single element (test crystal, not in training).
    "Cu_110": Crystal(
        name="Cu_110",
        zone_axis="[110]",
        cell=_scaled(_CUBIC_110, _CU),
        symbols=("Cu",) * 2,
        fractional=_FCC_110,
        projected_basis=_CENTRED,
        slices_per_period=2,
        rms_displacement={"Cu": 0.083},
    ),
    # hcp [0001]: A and B sites project apart; hexagonal lattice of side a, d(10-10) = 2.8 angstrom.
    "Mg_0001": Crystal(
        name="Mg_0001",
        zone_axis="[0001]",
        cell=(_MG_A, _MG_A * _ROOT3, _MG_C),
        symbols=("Mg",) * 4,
        fractional=_HCP_0001,
        projected_basis=_HEXAGONAL,
        slices_per_period=2,
        rms_displacement={"Mg": 0.12},
    ),
    # Wurtzite [0001]: hcp Ga with N above each Ga by u c.
    "GaN_0001": Crystal(
        name="GaN_0001",
        zone_axis="[0001]",
        cell=(_GAN_A, _GAN_A * _ROOT3, _GAN_C),
        symbols=("Ga",) * 4 + ("N",) * 4,
        fractional=_HCP_0001 + tuple((x, y, (z + _GAN_U) % 1.0) for x, y, z in _HCP_0001),
        projected_basis=_HEXAGONAL,
        slices_per_period=2,
        rms_displacement={"Ga": 0.07, "N": 0.075},
    ),
    # Rutile [001]: a coarse square projection (a = 4.6 angstrom), Ti at the corners and centre.
    "TiO2_001": Crystal(
        name="TiO2_001",
        zone_axis="[001]",
        cell=(_TIO2_A, _TIO2_A, _TIO2_C),
        symbols=("Ti", "Ti", "O", "O", "O", "O"),
        fractional=(
            (0.0, 0.0, 0.0),
            (0.5, 0.5, 0.5),
            (_TIO2_U, _TIO2_U, 0.0),
            (1 - _TIO2_U, 1 - _TIO2_U, 0.0),
            (0.5 + _TIO2_U, 0.5 - _TIO2_U, 0.5),
            (0.5 - _TIO2_U, 0.5 + _TIO2_U, 0.5),
        ),
        projected_basis=_SQUARE,
        slices_per_period=2,
        rms_displacement={"Ti": 0.071, "O": 0.08},
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
