"""The strain run: a 4D scan in, a strain map out (:mod:`~stemstrain.strainmap.run`), in work units
fitted as executor tasks (:mod:`~stemstrain.strainmap.units`)."""

from stemstrain.strainmap.run import (
    StrainRun,
    describe_fit,
    describe_readout,
    fit_units,
    material_lattice,
    plan_strain_map,
    strain_map,
    write_strain,
)
from stemstrain.strainmap.units import WorkUnit

__all__ = [
    "StrainRun",
    "WorkUnit",
    "describe_fit",
    "describe_readout",
    "fit_units",
    "material_lattice",
    "plan_strain_map",
    "strain_map",
    "write_strain",
]
