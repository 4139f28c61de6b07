"""Shared benchmark inputs: the default L1 bone on a grid with a cement bolus around the needle tip.

The bolus is a ball of cement (S = 1) of ``bolus_ml`` pore volume centred on the tip cell, the
state of a typical injection halfway through; mobilities use the default medium cement at its
injection-start viscosity, the default marrow in the bone and blood in the embedded veins, so the
pressure matrices have the real contrast (mu_c / mu_m ~ 1e3-1e4) and the real exit (Robin) terms
at the foramen nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from sim.core.grid import BoneGrid, Needle


@dataclass
class BoneCase:
    """A bone grid, its cell graph, a cement bolus and the assembled TPFA inputs."""

    bone: BoneGrid
    needle: Needle
    graph: object  # sim.physics.pressure.CellGraph
    s: np.ndarray  # cement saturation per compact cell
    trans: np.ndarray  # face transmissibilities
    exit_cell: np.ndarray
    exit_cond: np.ndarray
    source: np.ndarray  # injected flow per compact cell (m^3/s)
    pore_volume: np.ndarray
    visc_ratio: np.ndarray  # mu_c / mu_marrow per cell; inf at vein nodes (pistons, as in the solver)
    mu_c: float
    mu_m: float


@cache
def bone_case(spacing_mm: float, bolus_ml: float = 2.5, rate_ml_per_s: float = 0.1) -> BoneCase:
    """The default scenario's bone at ``spacing_mm`` with a cement ball of ``bolus_ml`` at the tip.

    The graph holds the porous cells and the embedded intraosseous vein nodes (numbered after the
    cells, as in the injection solver); the exits are the foramen nodes with the conductances of the
    ``embedded_veins`` exchange law. Vein nodes hold blood, grid cells marrow.
    """
    from sim.core.config import scenario_from_dict
    from sim.core.parameters import RunParameters
    from sim.physics.bone import build_vertebral_body, place_needle
    from sim.physics.bone_vein_exchange import EmbeddedVeinExchange
    from sim.physics.injection import mixture_mobility
    from sim.physics.pressure import build_cell_graph, face_transmissibility
    from sim.physics.rheology import CementModel, cement_viscosity, equivalent_age_s

    params = RunParameters.from_scenario(scenario_from_dict({"grid": {"spacing_mm": spacing_mm}}))
    h = params.grid.spacing_m
    bone = build_vertebral_body(params.patient, h)
    needle = place_needle(bone, params.needle)
    vessels = bone.vessels
    exit_flat = np.array([bone.n_cells + e.node for e in bone.exits], dtype=np.int64)
    graph = build_cell_graph(
        bone.porous, bone.permeability, h, np.asarray(needle.tip_cells), exit_flat, vessels
    )
    cement = CementModel.from_params(params.cement)
    age0 = equivalent_age_s(cement, params.cement.time_after_mixing_s, params.cement.room_temperature_k)
    mu_c = float(cement_viscosity(cement, 1.0, age0))
    mu_m = float(params.veins.marrow_viscosity_pa_s)

    grid = graph.is_grid_cell
    vein = graph.cell_of[~grid] - graph.n_grid
    centers = np.empty((graph.n, 3))
    centers[grid] = bone.cell_centers_m(graph.cell_of[grid])
    centers[~grid] = vessels.node_pos_m[vein]
    pore = np.empty(graph.n)
    pore[grid] = bone.porosity.ravel()[graph.cell_of[grid]] * h**3
    pore[~grid] = vessels.node_volume_m3[vein]
    mu_res = np.where(grid, mu_m, float(params.veins.blood_viscosity_pa_s))  # marrow / blood
    dist = np.linalg.norm(centers - np.asarray(needle.tip_positions_m)[0], axis=1)
    order = np.argsort(dist, kind="stable")
    filled = order[: int(np.searchsorted(np.cumsum(pore[order]), bolus_ml * 1e-6)) + 1]
    s = np.zeros(graph.n)
    s[filled] = 1.0
    lam = mixture_mobility(s, np.full(graph.n, mu_c), mu_res, ~grid)
    trans = face_transmissibility(graph, lam)

    entries = EmbeddedVeinExchange().entries(bone.exits, graph, vessels)
    exit_cell = entries.cell
    exit_cond = entries.conductance_m3 * lam[exit_cell]
    tips = graph.compact[np.asarray(needle.tip_cells, dtype=np.int64)]
    source = np.bincount(
        tips, weights=np.asarray(needle.tip_weights) * rate_ml_per_s * 1e-6, minlength=graph.n
    )
    visc_ratio = np.where(grid, mu_c / mu_res, np.inf)
    return BoneCase(
        bone=bone, needle=needle, graph=graph, s=s, trans=trans, exit_cell=exit_cell, exit_cond=exit_cond,
        source=source, pore_volume=pore, visc_ratio=visc_ratio, mu_c=mu_c, mu_m=mu_m,
    )  # fmt: skip
