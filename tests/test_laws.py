"""Law seams (sim.physics.laws): look-up by name, config choices = registry, each law's limiting case."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest

from sim.core.config import LawsConfig, Scenario, scenario_from_dict
from sim.core.errors import ConfigError, GeometryError
from sim.core.grid import VenousExit, VesselSegment, VesselTree
from sim.core.parameters import FragmentationParams, RunParameters
from sim.physics import rheology
from sim.physics.bone_vein_exchange import FORAMEN_PIN, EmbeddedVeinExchange, ForamenPoiseuille
from sim.physics.embedded_vessels import KERNEL_MIN_RADIUS_M, embed
from sim.physics.fragment_transport import DiameterMargin
from sim.physics.fragmentation import DragVsStrength
from sim.physics.laws import LAW_HOMES, available, law_class, register
from sim.physics.marrow_outflow import LumpedMarrowOutlet
from sim.physics.permeability import (
    DEFAULT_PERMEABILITY_LAW,
    KozenyCarman,
    RodArray,
    default_permeability,
    rod_array_parallel,
    rod_array_transverse,
    rod_network,
)
from sim.physics.pressure import build_cell_graph
from sim.physics.rheology import CementModel, load_cement_preset
from sim.physics.vein_columns import CementColumns
from sim.physics.venous_network import edge_conductance, network_from_edges, solve_blood_flow

MM = 1e-3
RHO, MU_BLOOD = 1055.0, 0.0035  # network_from_edges defaults

LAWS = {
    "permeability": ("rod_array", RodArray),
    "rheology": ("power_law_cure", CementModel),
    "exchange": ("embedded_veins", EmbeddedVeinExchange),
    "fragmentation": ("drag_vs_strength", DragVsStrength),
    "lodging": ("diameter_margin", DiameterMargin),
    "marrow_outflow": ("lumped_outlet", LumpedMarrowOutlet),
}


def test_every_law_kind_is_covered_here():
    """This file tests a law of every kind the registry knows (marrow_outflow: test_marrow_outflow.py)."""
    assert set(LAWS) == set(LAW_HOMES)


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("kind", sorted(LAWS))
def test_law_class_returns_the_registered_implementation(kind):
    """law_class(kind, name) is the class that registered itself under that name."""
    name, cls = LAWS[kind]
    assert name in available(kind)
    assert law_class(kind, name) is cls
    assert cls.law_name == name


@pytest.mark.parametrize("kind", sorted(LAWS))
def test_unknown_law_name_is_refused_naming_the_allowed_ones(kind):
    """A misspelt law is a ConfigError that names the seam, the bad name and every allowed name."""
    with pytest.raises(ConfigError, match=rf"laws\.{kind} = 'no_such_law'") as err:
        law_class(kind, "no_such_law")
    for name in available(kind):
        assert name in str(err.value)


def test_unknown_law_kind_is_refused_naming_the_kinds():
    """A seam that does not exist is a ConfigError listing the seams."""
    with pytest.raises(ConfigError, match="no such law kind") as err:
        law_class("viscosity", "power_law_cure")
    for kind in LAW_HOMES:
        assert kind in str(err.value)


def test_register_refuses_a_second_class_under_a_taken_name():
    """Two implementations cannot share a name; an unknown kind cannot be registered into."""
    name, cls = LAWS["rheology"]
    with pytest.raises(ValueError, match="registered twice"):
        register("rheology", name)(type("Impostor", (), {}))
    assert law_class("rheology", name) is cls
    with pytest.raises(ValueError, match="unknown law kind"):
        register("viscosity", "x")


@pytest.mark.parametrize("kind", sorted(LAWS))
def test_config_choices_equal_the_registry(kind):
    """LawsConfig's Literal choices are exactly the registered names, so config and code cannot drift."""
    field = LawsConfig.model_fields[kind]
    assert set(get_args(field.annotation)) == set(available(kind))
    assert field.default in available(kind)


def test_config_fields_are_the_law_kinds_and_refuse_unknown_names():
    """One config field per seam; a scenario naming an unregistered law fails validation."""
    assert set(LawsConfig.model_fields) == set(LAW_HOMES)
    with pytest.raises(ConfigError, match="laws.rheology"):
        scenario_from_dict({"laws": {"rheology": "bingham"}})


# ----------------------------------------------------------------------------- permeability


def kc_factor(phi):
    return phi**3 / (1.0 - phi) ** 2


def test_kozeny_carman_reference_ratio_and_anisotropy():
    """k_t(phi_ref) = k_ref exactly; k_t(phi1)/k_t(phi2) = KC(phi1)/KC(phi2); k_z = a k_t."""
    law = KozenyCarman(k_ref_m2=4e-8, phi_ref=0.9, anisotropy=2.05)
    assert float(law.transverse(np.array(0.9))) == 4e-8
    phi = np.array([0.6, 0.75, 0.85, 0.9, 0.93, 0.97])
    kt = law.transverse(phi)
    assert kt == pytest.approx(4e-8 * kc_factor(phi) / kc_factor(0.9), rel=1e-13)
    ratio = kt[:, None] / kt[None, :]
    assert ratio == pytest.approx(kc_factor(phi)[:, None] / kc_factor(phi)[None, :], rel=1e-13)
    assert np.all(np.diff(kt) > 0)  # more porous bone is more permeable
    diag = law.tensor_diagonal(phi)
    assert diag.shape == (3, phi.size)
    assert np.array_equal(diag[0], kt) and np.array_equal(diag[1], kt)
    assert np.array_equal(diag[2], 2.05 * kt)


def test_rod_array_reference_ratio_and_anisotropy():
    """k_t(phi_ref) = k_ref exactly; the ratio of two cells is N(phi_1)/N(phi_2); k_z = a k_t."""
    law = RodArray(k_ref_m2=4e-8, phi_ref=0.939, anisotropy=2.05)
    assert float(law.transverse(np.array(0.939))) == 4e-8
    phi = np.array([0.5, 0.75, 0.85, 0.9, 0.939, 0.97, 0.99])
    kt = law.transverse(phi)
    assert kt == pytest.approx(4e-8 * rod_network(phi) / rod_network(0.939), rel=1e-13)
    assert np.all(np.diff(kt) > 0)  # more porous bone is more permeable
    assert np.array_equal(law.tensor_diagonal(phi)[2], 2.05 * kt)
    # flatter than Kozeny-Carman about the reference: less at 0.99, more at 0.8 (numbers in its docstring)
    kc = KozenyCarman(k_ref_m2=4e-8, phi_ref=0.939, anisotropy=2.05)
    assert float(law.transverse(np.array(0.99)) / 4e-8) == pytest.approx(12.47, abs=0.01)
    assert float(kc.transverse(np.array(0.99)) / 4e-8) == pytest.approx(43.6, abs=0.1)
    assert law.transverse(np.array(0.8)) > kc.transverse(np.array(0.8))


def test_rod_array_dilute_limit_is_the_drag_of_isolated_rods():
    """c -> 0: N c = (3/20)(-ln c - 1.1) + o(1), the dilute form of Jackson & James (their constant: 0.931).

    Happel's cells: c N_par -> (-ln c - 3/2)/4, c N_perp -> (-ln c - 1)/8; the network's resistances
    (1/3 along, 2/3 across) give 3/20 and the constant (4/3 * 3/2 + 16/3 * 1) / (20/3) = 1.1.
    """
    for c in (1e-4, 1e-8, 1e-12):
        assert c * rod_array_parallel(c) == pytest.approx((-math.log(c) - 1.5) / 4.0, abs=3 * c)
        assert c * rod_array_transverse(c) == pytest.approx((-math.log(c) - 1.0) / 8.0, abs=3 * c)
        constant = -(c * rod_network(1.0 - c) / 0.15) - math.log(c)
        assert constant == pytest.approx(1.1, abs=0.1 / -math.log(c))
    # k grows as -ln(1 - phi)/(1 - phi), not as Kozeny-Carman's 1/(1 - phi)^2
    ratio = rod_network(1 - 1e-6) / rod_network(1 - 1e-3)
    assert ratio == pytest.approx(1e3 * (math.log(1e6) - 1.1) / (math.log(1e3) - 1.1), rel=0.01)


def test_rod_array_no_pore_space_limit():
    """c -> 1 (phi -> 0): both Happel cells vanish as (1 - c)^3, N -> phi^3 / 20 (Kozeny-Carman: phi^3)."""
    for phi in (1e-2, 1e-3):
        assert rod_network(phi) / phi**3 == pytest.approx(0.05, rel=3 * phi)
    assert np.all(rod_network(np.linspace(0.05, 0.999, 200)) > 0.0)


def test_default_permeability_law_is_the_configs():
    """The bone builders' default law is LawsConfig's default."""
    assert LawsConfig().permeability == DEFAULT_PERMEABILITY_LAW
    patient = RunParameters.from_scenario(Scenario()).patient
    assert isinstance(default_permeability(patient), RodArray)


def test_kozeny_carman_from_patient_parameters():
    """from_params reads the patient's reference permeability at its mean porosity and its anisotropy."""
    patient = RunParameters.from_scenario(Scenario()).patient
    law = KozenyCarman.from_params(patient)
    assert float(law.transverse(np.array(patient.porosity_mean))) == patient.permeability_ref_m2
    axial = law.tensor_diagonal(np.array([patient.porosity_mean]))[2, 0]
    assert axial == pytest.approx(patient.permeability_anisotropy * patient.permeability_ref_m2, rel=1e-15)


# ----------------------------------------------------------------------------- bone-to-vein exchange


def porous_box(shape=(4, 4, 3), holes=()):
    porous = np.ones(shape, dtype=bool)
    for ijk in holes:
        porous[ijk] = False
    perm = np.where(porous, 1e-9, 0.0)[None].repeat(3, axis=0)
    return porous, perm


def flat(shape, *ijk):
    return np.array([np.ravel_multi_index(c, shape) for c in ijk], dtype=np.int64)


def foramen(name, cells, d, length):
    return VenousExit(name, "anterior", cells, np.zeros(3), d, length)


@pytest.mark.parametrize("n_cells", [1, 2, 4, 9])
def test_foramen_total_conductance_is_poiseuille_whatever_the_cell_count(n_cells):
    """Uniform mobility lambda: an exit's summed conductance is pi d^4 / (128 L) lambda for any n cells."""
    shape = (4, 4, 3)
    porous, perm = porous_box(shape)
    face = [(3, j, k) for j in range(3) for k in range(3)][:n_cells]  # cells on the x = max face
    exits = [
        foramen("one", flat(shape, (0, 0, 0)), 2.5 * MM, 2 * MM),
        foramen("many", flat(shape, *face), 1.7 * MM, 3.5 * MM),
    ]
    graph = build_cell_graph(
        porous, perm, 1 * MM, flat(shape, (1, 1, 1)), np.concatenate([e.cells for e in exits])
    )
    ent = ForamenPoiseuille().entries(exits, graph)
    lam = np.full(graph.n, 1.0 / 40.0)  # uniform mobility 1/mu (cement of 40 Pa s)
    for e, (d, length, n) in enumerate(((2.5 * MM, 2 * MM, 1), (1.7 * MM, 3.5 * MM, n_cells))):
        rows = ent.exit == e
        assert rows.sum() == n and ent.cells_per_exit[e] == n
        assert sorted(graph.cell_of[ent.cell[rows]]) == sorted(exits[e].cells)
        total = float(np.sum(ent.conductance_m3[rows] * lam[ent.cell[rows]]))
        assert total == pytest.approx(math.pi * d**4 / (128.0 * length) / 40.0, rel=1e-14)


def test_foramen_cells_outside_the_bone_do_not_take_a_share():
    """An exit cell that is not porous drops out; the remaining cells still carry the whole G_e."""
    shape = (4, 4, 3)
    porous, perm = porous_box(shape, holes=[(3, 0, 0)])
    cells = flat(shape, (3, 0, 0), (3, 1, 0), (3, 2, 0))
    ex = foramen("f", cells, 2 * MM, 2 * MM)
    graph = build_cell_graph(porous, perm, 1 * MM, flat(shape, (1, 1, 1)), cells)
    ent = ForamenPoiseuille().entries([ex], graph)
    assert ent.cells_per_exit[0] == 2 and ent.cell.size == 2
    assert ent.conductance_m3.sum() == pytest.approx(math.pi * (2 * MM) ** 4 / (128.0 * 2 * MM), rel=1e-14)


def vein_through_cortex(h, canal_len=5.7 * MM, d_canal=6 * MM, d_vein=1 * MM, n=16):
    """A marrow block (y < wall) with a cortical canal from a foramen on the wall to a vein inside."""
    shape = (n, n, n)
    porous = np.zeros(shape, dtype=bool)
    porous[:, : n // 2, :] = True
    perm = np.where(porous, 1e-9, 0.0)[None].repeat(3, axis=0)
    wall = (n // 2 - 0.5) * h
    p_out = np.array([0.5 * n * h, wall + canal_len, 0.5 * n * h])
    p_in = p_out - [0.0, canal_len, 0.0]
    tree = VesselTree(
        np.array([p_out, p_in, p_in - [0.0, 4 * MM, 0.0]]),
        (VesselSegment("canal", 0, 1, d_canal, False), VesselSegment("vein", 1, 2, d_vein, True)),
        {"f": 0},
    )
    vessels = embed(tree, np.zeros(3), h, porous, perm, KERNEL_MIN_RADIUS_M)
    exits = [VenousExit("f", "basivertebral", np.empty(0, np.int64), p_out, d_canal, canal_len, node=0)]
    exit_ext = np.array([porous.size + 0])
    graph = build_cell_graph(porous, perm, h, np.flatnonzero(porous.ravel())[:1], exit_ext, vessels)
    return graph, vessels, exits


def test_embedded_veins_drain_each_foramen_at_its_node():
    """One row per exit, at the foramen's vein node, with a positive Poiseuille factor ~ d^4."""
    rows = {}
    for d in (4 * MM, 8 * MM):
        graph, vessels, exits = vein_through_cortex(1 * MM, d_canal=d)
        ent = EmbeddedVeinExchange().entries(exits, graph, vessels)
        assert ent.cell.tolist() == [graph.compact[graph.n_grid + exits[0].node]]
        assert ent.exit.tolist() == [0] and ent.cells_per_exit.tolist() == [1.0]
        assert ent.conductance_m3[0] > 0.0
        rows[d] = float(ent.conductance_m3[0])
    assert rows[8 * MM] / rows[4 * MM] == pytest.approx(16.0, rel=1e-12)
    # a foramen whose vein is not connected to the needle's region is refused by name
    graph, vessels, exits = vein_through_cortex(1 * MM)
    graph.compact[graph.n_grid + exits[0].node] = -1
    with pytest.raises(GeometryError, match="'f'"):
        EmbeddedVeinExchange().entries(exits, graph, vessels)


@pytest.mark.parametrize("h", [2 * MM, 1 * MM, 0.5 * MM])
def test_foramen_canal_conducts_poiseuille_at_any_spacing(h):
    """Uniform mobility: canal edges in series with the exit term give pi d^4 / (128 L) of the canal."""
    canal_len, d = 5.7 * MM, 6 * MM
    graph, vessels, exits = vein_through_cortex(h, canal_len=canal_len, d_canal=d)
    g_exit = EmbeddedVeinExchange().entries(exits, graph, vessels).conductance_m3[0]
    canal = vessels.edge_diameter_m == d
    r_series = float(np.sum(1.0 / vessels.edge_conductance_m3()[canal])) + 1.0 / g_exit
    # the foramen drain pins the node to the venous pressure to 1 / FORAMEN_PIN of a canal piece
    assert 1.0 / r_series == pytest.approx(math.pi * d**4 / (128.0 * canal_len), rel=1.0 / FORAMEN_PIN)


# ----------------------------------------------------------------------------- fragmentation


def thread_case(thread_len=0.02, q_blood=5e-6):
    """A 2 mm feeder (10 mm long) into a 10 mm vein carrying q_blood; a 2 mm cement thread of thread_len."""
    pos = np.array([[0.05, 0, 0.1], [0, 0, 0.1], [0, 0, 0.0]])
    net = network_from_edges(
        pos,
        [0, 1],
        [1, 2],
        [2 * MM, 10 * MM],
        np.array([1e-9, q_blood, 0.0]),
        right_atrium=2,
        length_m=[0.01, 0.1],
    )
    flow = solve_blood_flow(net)
    cols = CementColumns.empty(net)
    area = 0.25 * np.pi * (2 * MM) ** 2
    cols.push(0, area * (0.01 + thread_len), 2 * MM, flow.edge_flow_m3_s, edge_conductance(net))
    return net, flow, cols


def thread_root_stress_coefficient(flow):
    """sigma_root = c l^2, c = 8 C_D rho U^2 / (pi d^2), C_D = 1 + 10 Re^(-2/3) (White)."""
    u = abs(flow.edge_flow_m3_s[1]) / (0.25 * np.pi * (10 * MM) ** 2)
    cd = 1.0 + 10.0 * (u * 2 * MM * RHO / MU_BLOOD) ** (-2.0 / 3.0)
    return 8.0 * cd * RHO * u**2 / (np.pi * (2 * MM) ** 2), cd, u


def drag_law(strength_pa_at_mixing, cement):
    """DragVsStrength whose strength at age 0 is ``strength_pa_at_mixing`` (= scale * sigma_fresh)."""
    return DragVsStrength(
        FragmentationParams(8 * MM, 0.6, 0.3, strength_pa_at_mixing / cement.strength_fresh_pa)
    )


def test_drag_vs_strength_strength_at_mixing_is_the_scaled_fresh_strength():
    """sigma_s(0) = strength_scale * sigma_fresh (K(0)/K(0) = 1); it grows with age before setting."""
    cem = load_cement_preset("medium")
    law = DragVsStrength(FragmentationParams(8 * MM, 0.6, 0.3, 2.5))
    assert law.strength_pa(cem, 0.0) == 2.5 * cem.strength_fresh_pa
    ages = np.linspace(0.0, 0.99 * cem.setting_time_s, 30)
    assert np.all(np.diff([law.strength_pa(cem, a) for a in ages]) > 0)


def test_drag_vs_strength_below_strength_sheds_nothing():
    """Tip stress below the strength: no fragment, the columns keep every bit of cement."""
    net, flow, cols = thread_case(thread_len=0.02)
    c, _, _ = thread_root_stress_coefficient(flow)
    cem = load_cement_preset("medium")
    before = cols.fill_m3.copy()
    frags = drag_law(1.2 * c * 0.02**2, cem).shed(
        cols, flow.edge_flow_m3_s, flow.node_pressure_pa, cem, 0.0, 3.0, np.random.default_rng(0)
    )
    assert len(frags) == 0
    assert np.array_equal(cols.fill_m3, before)


def test_drag_vs_strength_shed_volume_is_what_the_columns_lost():
    """Overloaded thread sheds until c l^2 <= sigma_s (l <= l* = d sqrt(pi sigma / (8 C_D rho U^2)));
    the fragments carry exactly the volume the columns lost."""
    net, flow, cols = thread_case(thread_len=0.02)
    c, cd, u = thread_root_stress_coefficient(flow)
    cem = load_cement_preset("medium")
    strength = 0.25 * c * 0.02**2  # l* = half the thread
    before = cols.fill_m3.copy()
    frags = drag_law(strength, cem).shed(
        cols, flow.edge_flow_m3_s, flow.node_pressure_pa, cem, 0.0, 3.0, np.random.default_rng(1)
    )
    assert len(frags) >= 1 and np.all(frags.edge == 1)
    lost = before - cols.fill_m3
    assert lost[0] == 0.0  # the feeder is a plug loaded far below the strength
    assert frags.volume_m3.sum() == pytest.approx(lost[1], rel=1e-13)
    assert frags.volume_m3.sum() + cols.fill_m3.sum() == pytest.approx(before.sum(), rel=1e-14)
    l_star = 2 * MM * math.sqrt(math.pi * strength / (8.0 * cd * RHO * u**2))
    assert l_star == pytest.approx(0.01, rel=1e-12)
    assert cols.fill_length_m()[1] <= l_star * (1 + 1e-12)
    assert np.all(frags.birth_time_s == 3.0) and np.all(frags.cure_age_s == 0.0)


def test_drag_vs_strength_set_cement_never_sheds():
    """Once the equivalent age reaches the setting time the strength is infinite and nothing sheds."""
    cem = load_cement_preset("medium")
    law = drag_law(1e-6, cem)  # a vanishing strength: fresh cement would be swept away
    assert law.strength_pa(cem, cem.setting_time_s) == math.inf
    assert law.strength_pa(cem, 2 * cem.setting_time_s) == math.inf
    net, flow, cols = thread_case(thread_len=0.02)
    before = cols.fill_m3.copy()
    frags = law.shed(cols, flow.edge_flow_m3_s, flow.node_pressure_pa, cem, cem.setting_time_s, 3.0,
                     np.random.default_rng(0))  # fmt: skip
    assert len(frags) == 0 and np.array_equal(cols.fill_m3, before)
    # the same weak law just before setting does shed (the infinity comes from setting, not the load)
    age = 0.999 * cem.setting_time_s
    assert math.isfinite(law.strength_pa(cem, age))
    assert len(law.shed(cols, flow.edge_flow_m3_s, flow.node_pressure_pa, cem, age, 3.0,
                        np.random.default_rng(0))) > 0  # fmt: skip


# ----------------------------------------------------------------------------- lodging


def test_diameter_margin_fresh_set_and_monotone():
    """margin = m (1 - c(a)): m for fresh cement, 0 once cured, linear in between, never increasing."""
    cem = load_cement_preset("medium")
    law = DiameterMargin(0.2)
    t_set = cem.setting_time_s
    assert float(law.margin(cem, np.array(0.0))) == 0.2
    assert float(law.margin(cem, np.array(t_set))) == 0.0
    assert float(law.margin(cem, np.array(3 * t_set))) == 0.0
    assert float(law.margin(cem, np.array(0.25 * t_set))) == pytest.approx(0.15, rel=1e-14)
    ages = np.linspace(0.0, 1.5 * t_set, 301)
    m = law.margin(cem, ages)
    assert m.shape == ages.shape and np.all(np.diff(m) <= 0.0) and m[0] > m[-1]
    # a cement that never sets keeps its full margin
    assert np.all(law.margin(CementModel.newtonian(50.0), ages) == 0.2)


def test_diameter_margin_from_lung_parameters():
    """from_params reads the lungs' deformability margin."""
    lungs = RunParameters.from_scenario(Scenario()).lungs
    assert DiameterMargin.from_params(lungs).deformability_margin == lungs.deformability_margin


# ----------------------------------------------------------------------------- rheology


def test_newtonian_cement_viscosity_ignores_shear_and_age():
    """CementModel.newtonian(mu): eta = mu at every shear rate and age; it never cures."""
    m = CementModel.newtonian(50.0)
    shear = np.array([0.0, 1e-4, 0.1, 1.0, 1e2, 1e5])[:, None]
    ages = np.array([0.0, 100.0, 1e4, 1e7])[None, :]
    eta = rheology.cement_viscosity(m, shear, ages)
    assert eta.shape == (6, 4)
    assert eta == pytest.approx(np.full((6, 4), 50.0), rel=1e-12)
    assert not rheology.is_set(m, 1e9) and rheology.cure_degree(m, 1e9) == 0.0


def test_cannula_drop_of_newtonian_cement_is_hagen_poiseuille():
    """dp = 8 mu L Q / (pi R^4) for a Newtonian fluid, whatever the age; odd in Q."""
    mu, d, length = 50.0, 2.7 * MM, 0.12
    m = CementModel.newtonian(mu)
    for q in (1e-9, 5e-8, 2e-7):
        hp = 8.0 * mu * length * q / (math.pi * (d / 2) ** 4)
        for age in (0.0, 500.0):
            assert rheology.cannula_pressure_drop_pa(m, q, d, length, age) == pytest.approx(hp, rel=1e-12)
        assert rheology.cannula_pressure_drop_pa(m, -q, d, length, 0.0) == pytest.approx(-hp, rel=1e-12)
    assert rheology.cannula_pressure_drop_pa(m, 0.0, d, length, 0.0) == 0.0


def test_cannula_drop_of_unclipped_power_law_is_the_closed_form():
    """Clips out of reach: dp = (2 K L / R) ((3n+1)/n Q / (pi R^3))^n (Bird, Armstrong & Hassager 1987)."""
    k, n = 120.0, 0.5
    m = CementModel(
        name="power law", viscosity_ref_pa_s=k, reference_time_s=0.0, setting_time_s=math.inf,
        divergence_exponent=0.0, power_law_n_fresh=n, power_law_n_set=n, viscosity_min_pa_s=1e-9,
        viscosity_max_pa_s=1e12, activation_energy_j_per_mol=0.0, reference_temperature_k=310.15,
        shear_rate_floor_per_s=0.0,
    )  # fmt: skip
    d, length = 2.7 * MM, 0.12
    r = d / 2
    for q in (1e-8, 5e-8, 2e-7):
        closed = 2.0 * k * length / r * ((3 * n + 1) / n * q / (math.pi * r**3)) ** n
        assert rheology.cannula_pressure_drop_pa(m, q, d, length, 0.0) == pytest.approx(closed, rel=1e-9)


def test_the_scenario_permeability_law_reaches_the_bone():
    """`laws: {permeability: kozeny_carman}` builds the bone with Kozeny-Carman; the default uses rods."""
    from sim.run.pipeline import build_stages

    cells = {}
    for name in ("rod_array", "kozeny_carman"):
        scenario = scenario_from_dict({"grid": {"spacing_mm": 2.0}, "laws": {"permeability": name}})
        bone = build_stages(scenario).bone
        patient = RunParameters.from_scenario(scenario).patient
        phi = bone.porosity[bone.porous]
        factor = rod_network if name == "rod_array" else (lambda p: p**3 / (1.0 - p) ** 2)
        expected = patient.permeability_ref_m2 * factor(phi) / factor(patient.porosity_mean)
        np.testing.assert_allclose(bone.permeability[0][bone.porous], expected, rtol=1e-12)
        cells[name] = bone.permeability[0][bone.porous]
    assert not np.allclose(cells["rod_array"], cells["kozeny_carman"])
    assert Scenario().laws.permeability == "rod_array"
