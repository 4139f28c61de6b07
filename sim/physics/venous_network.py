"""Venous network of the thoraco-lumbar spine and its blood flow (Kirchhoff + Poiseuille).

Anatomy. :func:`build_venous_network` generates a graph for a treated level T5..L5 from the
parametric template ``geometries/veins/template.yaml`` (sources per number in
``geometries/veins/README.md``): per level the basivertebral vein, anterior/posterior internal
vertebral plexus (longitudinal channels spanning all levels), anterior external plexus fed by
the anterior/lateral nutrient veins, intervertebral veins, segmental veins (posterior intercostal
veins to the azygos / hemiazygos at thoracic levels, lumbar veins to the IVC and to the ascending
lumbar veins at lumbar levels); azygos, hemiazygos (optional), IVC, SVC, right atrium and the
pulmonary trunk. The treated level's exits (``basivertebral``, ``anterior_left``, ...) map to
exit nodes. Frame: DICOM LPS in metres, origin at the L1 body centre.

Blood flow. Each edge is a Poiseuille tube, G = pi d^4 / (128 mu L) (Hagen-Poiseuille), plus an
optional series resistance (cement columns, :mod:`sim.physics.vein_columns`): G = 1 / (1/G_p + R_extra).
Kirchhoff's current law at every node, sum_j G_ij (p_i - p_j) = s_i, with prescribed inflows
s_i (segmental tributaries, plexus drainage, lower-body IVC and upper-body SVC return) and the
right atrium held at the central venous pressure (eliminated symmetrically, so the reduced
matrix is SPD). The right heart edge (right atrium -> pulmonary trunk) is a pump whose flow is
the total venous return (= cardiac output); it is not part of the Poiseuille system.

Boundary flows. Upper-body return = ``svc_upper_body_fraction`` * CO into the SVC; the thoracic
segmental inflows are calibrated (two linear solves, flows are linear in the sources) so that the
azygos arch carries ``azygos_flow_m3_per_s`` (320 ml/min in healthy adults, MR bolus imaging,
docs/reference_values.md); the IVC receives the remainder of CO split into lower-body, renal and hepatic
shares. Hence total venous return = CO exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import connected_components

from sim.core.errors import ConfigError, GeometryError, SolverError
from sim.core.geometry_data import load_geometry_yaml
from sim.core.parameters import VeinParams
from sim.core.units import ML_PER_MIN_M3_PER_S, MM_M, MMHG_PA
from sim.physics.fragment_set import VenousFlowSnapshot

TEMPLATE = "veins/template.yaml"
LEVEL_ORDER = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5", "T4")

# Edge kinds grouped into the routes reported for leaked cement.
ROUTE_OF_KIND = {
    "basivertebral": "plexus",
    "nutrient": "plexus",
    "retrocorporeal": "plexus",
    "aivp": "plexus",
    "pivp": "plexus",
    "intervertebral": "plexus",
    "aep": "plexus",
    "segmental": "segmental",
    "ascending_lumbar": "segmental",
    "iliolumbar": "segmental",
    "azygos": "azygos",
    "hemiazygos": "azygos",
    "svc": "azygos",
    "ivc": "ivc",
    "right_heart": "heart",
}
ROUTES = ("plexus", "segmental", "azygos", "ivc", "heart")
# edge kinds whose calibre is measured (not scaled by ``veins.diameter_scale``)
MEASURED_KINDS = ("azygos", "svc", "ivc", "right_heart")


@dataclass
class VenousNetwork:
    """Venous graph as flat arrays (SI), plus the networkx graph they were built from.

    Edge e joins ``edge_u[e] -> edge_v[e]``; signed flows are positive from u to v. The pump edge
    (right atrium -> pulmonary trunk) is ``pump_edge``; its flow is imposed, not computed.
    """

    level: str
    graph: nx.Graph
    node_names: list[str]
    node_pos_m: np.ndarray  # (N, 3)
    node_kind: np.ndarray  # (N,) str
    edge_u: np.ndarray  # (E,) int64
    edge_v: np.ndarray  # (E,) int64
    edge_diameter_m: np.ndarray  # (E,)
    edge_length_m: np.ndarray  # (E,)
    edge_kind: np.ndarray  # (E,) str
    edge_route: np.ndarray  # (E,) str, one of ROUTES
    edge_source: list[str]
    polylines: list[np.ndarray]  # per edge (k, 3) from u to v, metres
    exit_nodes: dict[str, int]
    right_atrium: int
    pulmonary_trunk: int
    pump_edge: int
    node_inflow_m3_s: np.ndarray  # (N,) prescribed inflows (>= 0)
    ra_pressure_pa: float
    blood_viscosity_pa_s: float
    blood_density_kg_per_m3: float
    cardiac_output_m3_s: float
    azygos_edge: int  # edge whose flow is calibrated to the azygos flow (arch)
    ivc_edge: int  # last IVC edge into the right atrium
    meta: dict[str, Any] = field(default_factory=dict)
    # caval hiatus: the IVC edge into the right atrium that collapses against the abdominal pressure
    # (Starling resistor, see :func:`hiatus_outlet_pressure`); -1: none (custom networks)
    hiatus_edge: int = -1
    abdominal_pressure_pa: float = 0.0
    waterfall_threshold_pa: float = 0.0

    @property
    def n_nodes(self) -> int:
        return len(self.node_names)

    @property
    def n_edges(self) -> int:
        return int(self.edge_u.shape[0])

    def node_index(self, name: str) -> int:
        try:
            return self.node_names.index(name)
        except ValueError:
            raise GeometryError(f"venous network of {self.level} has no node '{name}'") from None

    def poiseuille_resistance(self, viscosity_pa_s: float | None = None) -> np.ndarray:
        """R = 128 mu L / (pi d^4) per edge in Pa s / m^3 (blood viscosity by default)."""
        mu = self.blood_viscosity_pa_s if viscosity_pa_s is None else viscosity_pa_s
        return 128.0 * mu * self.edge_length_m / (np.pi * self.edge_diameter_m**4)

    def edge_area_m2(self) -> np.ndarray:
        return 0.25 * np.pi * self.edge_diameter_m**2


@dataclass
class BloodFlow:
    """Result of :func:`solve_blood_flow`: pressures, signed edge flows and the Kirchhoff residual."""

    node_pressure_pa: np.ndarray
    edge_flow_m3_s: np.ndarray
    residual: float  # max |KCL imbalance| / total inflow over the free nodes


# ----------------------------------------------------------------------------- building


@functools.cache
def _vertebra_dims_cached(level: str) -> tuple[tuple[str, Any], ...] | None:
    from sim.physics.bone import load_vertebra

    try:
        vb = load_vertebra(level)
    except GeometryError:
        return None
    return (
        ("z_mm", vb["z_center_m"] / MM_M),
        ("width_mm", vb["width_m"] / MM_M),
        ("depth_mm", vb["depth_m"] / MM_M),
        ("height_mm", vb["height_m"] / MM_M),
        ("source", "vertebrae.yaml"),
    )


def _vertebra_dims(level: str) -> dict[str, Any] | None:
    """Body centre and size of a level from the bone model's data (parsed once per process)."""
    dims = _vertebra_dims_cached(level)
    return None if dims is None else dict(dims)


def level_table(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Level centres and body sizes (mm): ``geometries/vertebrae.yaml`` (bone model) where it has the
    level, so bone and veins share one frame; the template's own table otherwise (T4, which only
    anchors the azygos arch, keeps its offset from T5)."""
    table = {k: dict(v) for k, v in tpl["levels"].items()}
    for name, row in table.items():
        dims = _vertebra_dims(name)
        if dims is not None:
            row.update(dims)
    if "T4" in table and "T5" in table and table["T5"].get("source"):
        table["T4"]["z_mm"] = table["T5"]["z_mm"] + tpl["levels"]["T4"]["z_mm"] - tpl["levels"]["T5"]["z_mm"]
    return table


def _level_geometry(levels: dict[str, Any], name: str) -> dict[str, float]:
    row = levels.get(name)
    if row is None:
        raise GeometryError(f"{TEMPLATE}: level '{name}' missing from the levels table")
    return row


def _place(spec: dict[str, Any], lv: dict[str, float]) -> np.ndarray:
    x = spec["x"][0] * lv["width_mm"] / 2 + spec["x"][1]
    y = spec["y"][0] * lv["depth_mm"] / 2 + spec["y"][1]
    z = lv["z_mm"] + spec["z"][0] * lv["height_mm"] / 2 + spec["z"][1]
    return np.array([x, y, z], dtype=np.float64)


def _applies(spec: dict[str, Any], region: str, hemiazygos: bool, level: str | None = None) -> bool:
    regions = spec.get("regions")
    if regions is not None and region not in regions:
        return False
    levels = spec.get("levels")
    if levels is not None and level is not None and level not in levels:
        return False
    when = spec.get("when")
    if when == "hemiazygos" and not hemiazygos:
        return False
    if when == "no_hemiazygos" and hemiazygos:
        return False
    return True


def _diameter_mm(spec: dict[str, Any], level: str, region: str, tpl: dict[str, Any], arch_mm: float) -> float:
    d = spec["d_mm"]
    if d == "azygos":
        taper = tpl["azygos_taper"]
        if level not in taper:
            raise GeometryError(f"{TEMPLATE}: no azygos taper for level {level}")
        return float(taper[level]) * arch_mm
    if isinstance(d, str):
        table = tpl.get(f"{d}_diameter_mm")
        if table is None or level not in table:
            raise GeometryError(f"{TEMPLATE}: no {d} diameter for level {level}")
        return float(table[level])
    if isinstance(d, dict):
        if region not in d:
            raise GeometryError(f"{TEMPLATE}: edge {spec['u']}-{spec['v']} has no diameter for {region}")
        return float(d[region])
    return float(d)


def _check_veins(veins: VeinParams) -> None:
    if veins.azygos_flow_m3_per_s >= veins.cardiac_output_m3_per_s:
        raise ConfigError(
            f"veins.azygos_flow ({veins.azygos_flow_m3_per_s:.3g} m3/s) must be below the cardiac "
            f"output ({veins.cardiac_output_m3_per_s:.3g} m3/s)"
        )


def build_venous_network(
    level: str, veins: VeinParams, rng: np.random.Generator, ivc_diameter_m: float | None = None
) -> VenousNetwork:
    """Generate the venous network for treated ``level`` (T5..L5) from the YAML template.

    The unmeasured [U] diameters are multiplied by ``diameter_scale`` (the measured trunks, azygos,
    IVC and SVC, are not); the azygos edges take the arch width erect x (1 + posture widening),
    tapered per level; the network carries the supine-calibrated inflows and the prone abdominal
    pressure on the caval hiatus (module docstring, ``geometries/veins/README.md``). When
    ``diameter_scatter`` > 0 every diameter is also multiplied by a median-preserving lognormal factor
    exp(sigma z) drawn per edge from ``rng`` (pump edge excluded). ``ivc_diameter_m`` (the patient's IVC
    measured on CT, :mod:`sim.anatomy.ct_bone`) replaces the calibre of every IVC edge, neither
    scaled nor scattered (the draws are made all the same, so the other edges keep theirs).
    """
    _check_veins(veins)
    tpl = load_geometry_yaml(TEMPLATE)
    levels = level_table(tpl)
    seg_levels = list(tpl["segment_levels"])
    if level not in seg_levels:
        raise ConfigError(f"level '{level}' has no venous template (available: {', '.join(seg_levels)})")
    hemi = bool(veins.hemiazygos_present)
    order = [lv for lv in LEVEL_ORDER if lv in seg_levels]

    names: list[str] = []
    pos: list[np.ndarray] = []
    kinds: list[str] = []
    index: dict[str, int] = {}

    def add_node(name: str, kind: str, p_mm: np.ndarray) -> None:
        if name in index:
            raise GeometryError(f"{TEMPLATE}: duplicate node '{name}'")
        index[name] = len(names)
        names.append(name)
        pos.append(p_mm)
        kinds.append(kind)

    for lv in order:
        geo = _level_geometry(levels, lv)
        for spec in tpl["level_nodes"]:
            if _applies(spec, geo["region"], hemi):
                add_node(f"{lv}:{spec['name']}", spec["kind"], _place(spec, geo))
    for spec in tpl["trunk_nodes"]:
        add_node(spec["name"], spec["kind"], np.asarray(spec["pos_mm"], dtype=np.float64))

    eu: list[int] = []
    ev: list[int] = []
    ed: list[float] = []
    e_arch: list[bool] = []  # calibre follows the azygos arch width (posture)
    erect_arch_mm = float(veins.azygos_erect_diameter_m) / MM_M
    ek: list[str] = []
    es: list[str] = []
    epoly: list[np.ndarray] = []
    sources = tpl["sources"]

    def add_edge(
        u: str, v: str, kind: str, d_mm: float, src: str, via_mm: list[np.ndarray], arch: bool = False
    ) -> None:
        if src not in sources:
            raise GeometryError(f"{TEMPLATE}: edge {u}-{v} cites unknown source '{src}'")
        a, b = index[u], index[v]
        eu.append(a)
        ev.append(b)
        ed.append(d_mm)
        e_arch.append(arch)
        ek.append(kind)
        es.append(sources[src])
        epoly.append(np.vstack([pos[a], *via_mm, pos[b]]) * MM_M)

    for i, lv in enumerate(order):
        geo = _level_geometry(levels, lv)
        upper = order[i + 1] if i + 1 < len(order) else None
        for spec in tpl["level_edges"]:
            if not _applies(spec, geo["region"], hemi, lv):
                continue
            u = f"{lv}:{spec['u']}"
            v_raw = spec["v"]
            if v_raw.startswith("+1:"):
                if upper is None:
                    continue
                v = f"{upper}:{v_raw[3:]}"
                if v not in index:  # target restricted to another region or absent variant
                    continue
            else:
                v = f"{lv}:{v_raw}"
            for nm in (u, v):
                if nm not in index:
                    raise GeometryError(
                        f"{TEMPLATE}: edge {spec['u']}-{spec['v']} at {lv} needs missing node '{nm}'"
                    )
            via = [_place({"x": w[0:2], "y": w[2:4], "z": w[4:6]}, geo) for w in _via(spec)]
            d_mm = _diameter_mm(spec, lv, geo["region"], tpl, erect_arch_mm)
            add_edge(u, v, spec["kind"], d_mm, spec["source"], via, arch=spec["d_mm"] == "azygos")
    for spec in list(tpl["junction_edges"]) + list(tpl["trunk_edges"]):
        if not _applies(spec, "", hemi) and spec.get("when"):
            continue
        for nm in (spec["u"], spec["v"]):
            if nm not in index:
                raise GeometryError(f"{TEMPLATE}: edge {spec['u']}-{spec['v']} needs missing node '{nm}'")
        via = [np.asarray(w, dtype=np.float64) for w in spec.get("via_abs_mm", [])]
        arch = spec["d_mm"] == "azygos"
        d_mm = erect_arch_mm if arch else float(spec["d_mm"])
        add_edge(spec["u"], spec["v"], spec["kind"], d_mm, spec["source"], via, arch=arch)

    edge_kind = np.array(ek)
    pump = np.flatnonzero(edge_kind == "right_heart")
    if pump.size != 1:
        raise GeometryError(f"{TEMPLATE}: expected exactly one right_heart edge, found {pump.size}")
    # the unmeasured calibres scale with diameter_scale; the measured trunks (azygos arch width from
    # Milne 1984, IVC Patil 2016, SVC Cowie 2015, right heart) keep their own values
    measured = np.isin(edge_kind, MEASURED_KINDS)
    d_m = np.asarray(ed) * MM_M * np.where(measured, 1.0, float(veins.diameter_scale))
    sigma = float(veins.diameter_scatter)
    factors = np.exp(sigma * rng.standard_normal(d_m.size)) if sigma > 0 else np.ones(d_m.size)
    factors[pump[0]] = 1.0
    d_m = d_m * factors
    d_m[pump[0]] = ed[pump[0]] * MM_M
    if ivc_diameter_m is not None:  # from the patient's CT (issue 18), in both postures
        d_m[edge_kind == "ivc"] = float(ivc_diameter_m)
    arch = np.asarray(e_arch, dtype=bool)
    phys = tpl["physiology"]
    calib = phys["calibration_posture"]
    d_calib = np.where(arch, d_m * (1.0 + float(calib["azygos_posture_widening"])), d_m)
    d_m = np.where(arch, d_m * (1.0 + float(veins.azygos_posture_widening)), d_m)
    lengths = np.array([np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in epoly])

    graph = nx.Graph()
    for i, nm in enumerate(names):
        graph.add_node(i, name=nm, kind=kinds[i], pos_m=pos[i] * MM_M)
    for e in range(len(eu)):
        graph.add_edge(
            eu[e], ev[e], index=e, kind=ek[e], diameter_m=d_m[e], length_m=lengths[e], source=es[e]
        )

    exit_nodes = {ex: index[f"{level}:{node}"] for ex, node in tpl["exits"].items()}
    hiatus = _find_edge(eu, ev, index[phys["caval_hiatus_edge"][0]], index[phys["caval_hiatus_edge"][1]])
    if ev[hiatus] != index["right_atrium"]:
        raise GeometryError(f"{TEMPLATE}: the caval hiatus edge must end at the right atrium")
    az_edge = _find_edge(
        eu, ev, index[phys["azygos_calibration_edge"][0]], index[phys["azygos_calibration_edge"][1]]
    )
    ivc_edge = _find_edge(eu, ev, index["ivc_hepatic"], index["right_atrium"])
    net = VenousNetwork(
        level=level,
        graph=graph,
        node_names=names,
        node_pos_m=np.asarray(pos) * MM_M,
        node_kind=np.array(kinds),
        edge_u=np.asarray(eu, dtype=np.int64),
        edge_v=np.asarray(ev, dtype=np.int64),
        edge_diameter_m=d_calib,
        edge_length_m=lengths,
        edge_kind=edge_kind,
        edge_route=np.array([ROUTE_OF_KIND.get(k, "plexus") for k in ek]),
        edge_source=es,
        polylines=epoly,
        exit_nodes=exit_nodes,
        right_atrium=index["right_atrium"],
        pulmonary_trunk=index["pulmonary_trunk"],
        pump_edge=int(pump[0]),
        node_inflow_m3_s=np.zeros(len(names)),
        ra_pressure_pa=float(veins.cvp_pa),
        blood_viscosity_pa_s=float(veins.blood_viscosity_pa_s),
        blood_density_kg_per_m3=float(veins.blood_density_kg_per_m3),
        cardiac_output_m3_s=float(veins.cardiac_output_m3_per_s),
        azygos_edge=az_edge,
        ivc_edge=ivc_edge,
        meta={
            "template": TEMPLATE,
            "hemiazygos_present": hemi,
            "levels": order,
            "level_center_m": np.array([0.0, 0.0, levels[level]["z_mm"] * MM_M]),
            "region": levels[level]["region"],
            "azygos_arch_diameter_m": float(d_m[az_edge]),
        },
        hiatus_edge=hiatus,
        abdominal_pressure_pa=-np.inf,  # calibration posture: hiatus open (supine p_ab ~ CVP)
        waterfall_threshold_pa=float(phys["waterfall_threshold_mmhg"]) * MMHG_PA,
    )
    validate_network(net)
    # inflows are calibrated in the posture the azygos flow was measured in (supine), then the network
    # takes the procedure's posture: the azygos arch width and the abdominal pressure on the IVC
    _set_boundary_inflows(net, veins, phys, index)
    net.edge_diameter_m = d_m
    net.abdominal_pressure_pa = float(veins.intra_abdominal_pressure_pa)
    validate_network(net)
    return net


def _via(spec: dict[str, Any]) -> list[list[float]]:
    """Waypoints [[ax, bx], [ay, by], [az, bz]] -> flat 6-lists."""
    via = spec.get("via")
    if not via:
        return []
    if len(via) == 3 and all(len(w) == 2 for w in via):
        return [[*via[0], *via[1], *via[2]]]
    raise GeometryError(f"{TEMPLATE}: edge {spec['u']}-{spec['v']} has a malformed 'via'")


def _find_edge(eu: list[int], ev: list[int], a: int, b: int) -> int:
    for e, (u, v) in enumerate(zip(eu, ev, strict=True)):
        if (u, v) in ((a, b), (b, a)):
            return e
    raise GeometryError(f"{TEMPLATE}: required edge between nodes {a} and {b} is missing")


def validate_network(net: VenousNetwork) -> None:
    """Graph health: no isolated nodes, one connected component, positive finite sizes."""
    deg = np.bincount(np.concatenate([net.edge_u, net.edge_v]), minlength=net.n_nodes)
    if np.any(deg == 0):
        bad = [net.node_names[i] for i in np.flatnonzero(deg == 0)]
        raise GeometryError(f"venous network of {net.level}: isolated node(s) {', '.join(bad[:5])}")
    for arr, what in ((net.edge_diameter_m, "diameter"), (net.edge_length_m, "length")):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0.0))
        if bad.size:
            e = int(bad[0])
            raise GeometryError(
                f"venous network of {net.level}: edge {net.node_names[net.edge_u[e]]} - "
                f"{net.node_names[net.edge_v[e]]} has {what} {float(arr[e])!r}"
            )
    adj = sp.coo_matrix((np.ones(net.n_edges), (net.edge_u, net.edge_v)), shape=(net.n_nodes,) * 2)
    n_comp, labels = connected_components(adj, directed=False)
    if n_comp > 1:
        main = labels[net.right_atrium]
        stray = [net.node_names[i] for i in np.flatnonzero(labels != main)]
        raise GeometryError(
            f"venous network of {net.level}: {n_comp} disconnected parts; not connected to the right atrium: "
            f"{', '.join(stray[:5])}"
        )


def _set_boundary_inflows(net: VenousNetwork, veins: VeinParams, phys: dict[str, Any], index: dict) -> None:
    co = float(veins.cardiac_output_m3_per_s)
    q_az = float(veins.azygos_flow_m3_per_s)
    s = np.zeros(net.n_nodes)
    names = net.node_names
    is_wall = net.node_kind == "tributary"
    thoracic = np.array([n.split(":")[0].startswith("T") for n in names])
    lumbar_wall = is_wall & ~thoracic
    thor_wall = is_wall & thoracic
    plexus = np.array([n.endswith(("aivp_l", "aivp_r", "pivp_l", "pivp_r")) for n in names])
    s[lumbar_wall] = phys["lumbar_wall_inflow_ml_per_min"] * ML_PER_MIN_M3_PER_S
    s[plexus] = phys["plexus_inflow_ml_per_min"] * ML_PER_MIN_M3_PER_S
    upper = phys["svc_upper_body_fraction"] * co
    s[index[phys["inflow_nodes"]["svc_upper"]]] = upper
    # the IVC receives the remainder of CO, split into lower-body, renal and hepatic shares
    split = phys["ivc_inflow_split"]
    total = sum(split.values())
    ivc_share = np.zeros(net.n_nodes)
    for key, node in (("lower_body", "ivc_lower_body"), ("renal", "ivc_renal"), ("hepatic", "ivc_hepatic")):
        ivc_share[index[phys["inflow_nodes"][node]]] += split[key] / total
    unit = thor_wall.astype(np.float64)

    def sources(q_t: float) -> np.ndarray:
        return s + q_t * unit + (co - s.sum() - q_t * unit.sum()) * ivc_share

    # every flow is affine in the thoracic segmental inflow q_t: calibrate the azygos arch flow
    net.node_inflow_m3_s = sources(0.0)
    f0 = solve_blood_flow(net).edge_flow_m3_s[net.azygos_edge]
    net.node_inflow_m3_s = sources(1.0e-6)
    f1 = solve_blood_flow(net).edge_flow_m3_s[net.azygos_edge]
    slope = (f1 - f0) / 1.0e-6
    q_t = (q_az - f0) / slope if slope > 0 else -1.0
    if not np.isfinite(q_t) or q_t < 0.0:
        raise ConfigError(
            f"veins.azygos_flow = {q_az:.3g} m3/s cannot be reached: lumbar, plexus and IVC "
            f"drainage alone put {f0:.3g} m3/s through the azygos arch"
        )
    s = sources(q_t)
    if np.any(s < 0.0):
        raise ConfigError(
            f"veins: cardiac output {co:.3g} m3/s is smaller than the upper-body and segmental inflows "
            f"({co - s.min():.3g} m3/s needed)"
        )
    net.node_inflow_m3_s = s
    net.meta["thoracic_segmental_inflow_m3_s"] = float(q_t)


def network_from_edges(
    node_pos_m: np.ndarray,
    edge_u: np.ndarray,
    edge_v: np.ndarray,
    diameter_m: np.ndarray,
    node_inflow_m3_s: np.ndarray,
    right_atrium: int,
    length_m: np.ndarray | None = None,
    edge_kind: list[str] | None = None,
    exit_nodes: dict[str, int] | None = None,
    ra_pressure_pa: float = 0.0,
    blood_viscosity_pa_s: float = 0.0035,
    blood_density_kg_per_m3: float = 1055.0,
    azygos_edge: int | None = None,
    ivc_edge: int | None = None,
) -> VenousNetwork:
    """A custom network (verification cases, other anatomies) with straight edges.

    A pulmonary trunk node and the pump edge from ``right_atrium`` are appended. ``length_m``
    defaults to the straight distance between the nodes. ``azygos_edge`` / ``ivc_edge`` (reported
    in time series) default to the pump edge.
    """
    pos = np.asarray(node_pos_m, dtype=np.float64)
    n = pos.shape[0]
    eu = np.asarray(edge_u, dtype=np.int64)
    ev = np.asarray(edge_v, dtype=np.int64)
    ne = eu.shape[0]
    if np.any((eu < 0) | (eu >= n) | (ev < 0) | (ev >= n)):
        raise GeometryError("network_from_edges: edge endpoint outside the node range")
    if not 0 <= right_atrium < n:
        raise GeometryError(f"network_from_edges: right_atrium {right_atrium} is not a node")
    pt_pos = pos[right_atrium] + np.array([0.0, -0.01, 0.0])
    pos = np.vstack([pos, pt_pos])
    eu = np.append(eu, right_atrium)
    ev = np.append(ev, n)
    d = np.append(np.asarray(diameter_m, dtype=np.float64), 0.02)
    polylines = [np.vstack([pos[a], pos[b]]) for a, b in zip(eu, ev, strict=True)]
    if length_m is None:
        lengths = np.array([np.linalg.norm(p[1] - p[0]) for p in polylines])
    else:
        lengths = np.append(np.asarray(length_m, dtype=np.float64), 0.01)
    kinds = list(edge_kind) if edge_kind is not None else ["segmental"] * ne
    kinds.append("right_heart")
    names = [f"n{i}" for i in range(n)] + ["pulmonary_trunk"]
    graph = nx.Graph()
    graph.add_nodes_from(range(n + 1))
    graph.add_edges_from((int(a), int(b), {"index": e}) for e, (a, b) in enumerate(zip(eu, ev, strict=True)))
    net = VenousNetwork(
        level="custom",
        graph=graph,
        node_names=names,
        node_pos_m=pos,
        node_kind=np.array(["custom"] * n + ["pulmonary_trunk"]),
        edge_u=eu,
        edge_v=ev,
        edge_diameter_m=d,
        edge_length_m=lengths,
        edge_kind=np.array(kinds),
        edge_route=np.array([ROUTE_OF_KIND.get(k, "plexus") for k in kinds]),
        edge_source=["custom"] * (ne + 1),
        polylines=polylines,
        exit_nodes=dict(exit_nodes or {}),
        right_atrium=int(right_atrium),
        pulmonary_trunk=n,
        pump_edge=ne,
        node_inflow_m3_s=np.append(np.asarray(node_inflow_m3_s, dtype=np.float64), 0.0),
        ra_pressure_pa=float(ra_pressure_pa),
        blood_viscosity_pa_s=float(blood_viscosity_pa_s),
        blood_density_kg_per_m3=float(blood_density_kg_per_m3),
        cardiac_output_m3_s=float(np.sum(node_inflow_m3_s)),
        azygos_edge=ne if azygos_edge is None else int(azygos_edge),
        ivc_edge=ne if ivc_edge is None else int(ivc_edge),
        meta={"level_center_m": pos[:n].mean(axis=0)},
    )
    validate_network(net)
    return net


# ----------------------------------------------------------------------------- blood flow


def edge_conductance(net: VenousNetwork, extra_resistance: np.ndarray | None = None) -> np.ndarray:
    """Series conductance 1 / (R_poiseuille + R_extra) per edge (the pump edge gets 0)."""
    r = net.poiseuille_resistance()
    if extra_resistance is not None:
        extra = np.asarray(extra_resistance, dtype=np.float64)
        if extra.shape != r.shape:
            raise SolverError(f"extra_resistance has shape {extra.shape}, expected {r.shape}")
        if np.any(~np.isfinite(extra) | (extra < 0.0)):
            e = int(np.flatnonzero(~np.isfinite(extra) | (extra < 0.0))[0])
            raise SolverError(
                f"extra_resistance of edge {e} ({net.node_names[net.edge_u[e]]} - "
                f"{net.node_names[net.edge_v[e]]}) is {extra[e]!r}; must be finite and >= 0"
            )
        r = r + extra
    g = 1.0 / r
    g[net.pump_edge] = 0.0
    return g


def hiatus_outlet_pressure(network: VenousNetwork) -> float:
    """Pressure the IVC drains against at the caval hiatus: max(p_RA, p_ab + threshold).

    The abdominal IVC is a collapsible tube surrounded by the intra-abdominal pressure p_ab. Where it
    enters the thorax it behaves as a Starling resistor (vascular waterfall): while the right atrial
    pressure exceeds p_ab (zone 3) the flow is G (p_up - p_RA); once p_ab exceeds it, the segment narrows
    until its pressure is p_ab plus a small opening threshold and the flow becomes G (p_up - p_ab - dp),
    independent of p_RA (zone 2). Takata, Wise & Robotham 1990 (J Appl Physiol 69:1961): zone-2 flow
    limitation once p_ab exceeds IVC pressure, threshold 1.00 +- 0.72 mmHg in dogs. Upstream, every
    abdominal vein then sits above p_ab and blood is pushed into the valveless vertebral plexus and the
    azygos system (Batson 1940; Edgcombe et al. 2008, Br J Anaesth 100:165). Limiting case (tested):
    p_ab + threshold <= p_RA gives the rigid-tube network unchanged.
    """
    if network.hiatus_edge < 0:
        return float(network.ra_pressure_pa)
    return max(float(network.ra_pressure_pa), network.abdominal_pressure_pa + network.waterfall_threshold_pa)


def hiatus_upstream(network: VenousNetwork) -> tuple[int, float]:
    """The abdominal (upstream) node of the caval hiatus edge and the sign of flow towards the atrium."""
    h = network.hiatus_edge
    if network.edge_v[h] == network.right_atrium:
        return int(network.edge_u[h]), 1.0
    return int(network.edge_v[h]), -1.0


def solve_blood_flow(network: VenousNetwork, extra_resistance: np.ndarray | None = None) -> BloodFlow:
    """Node pressures and signed edge flows (u -> v positive) of the network's blood flow.

    Kirchhoff's law with Poiseuille conductances; the right atrium is eliminated symmetrically
    (Dirichlet p = CVP) and the pulmonary trunk is fed by the pump edge, whose flow is set to the
    right atrium's total inflow (= sum of prescribed inflows). The caval hiatus edge drains into
    :func:`hiatus_outlet_pressure` instead of the atrial pressure (Starling resistor); if that would
    need backward flow, the collapsed segment carries none (zone 1). Raises SolverError if the
    residual exceeds 1e-9 of the total inflow.
    """
    net = network
    g = edge_conductance(net, extra_resistance)
    h = net.hiatus_edge
    p_out = hiatus_outlet_pressure(net)
    p, flow = _kirchhoff_solve(net, g, h, p_out)
    if h >= 0 and p_out > net.ra_pressure_pa and flow[h] < 0.0:
        g = g.copy()
        g[h] = 0.0  # collapsed: upstream pressure below the abdominal pressure, no flow either way
        p, flow = _kirchhoff_solve(net, g, h, p_out)
    total_in = float(net.node_inflow_m3_s.sum())
    flow[net.pump_edge] = total_in if net.edge_u[net.pump_edge] == net.right_atrium else -total_in
    res = kirchhoff_residual(net, flow)
    if not np.isfinite(res) or res > 1e-9:
        raise SolverError(f"blood flow: Kirchhoff residual {res:.3e} (relative to total inflow) too large")
    return BloodFlow(node_pressure_pa=p, edge_flow_m3_s=flow, residual=res)


def _kirchhoff_solve(
    net: VenousNetwork, g: np.ndarray, hiatus: int, p_out: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pressures and edge flows for conductances g, the hiatus edge draining against ``p_out``."""
    n = net.n_nodes
    u, v = net.edge_u, net.edge_v
    lap = sp.coo_matrix(
        (np.concatenate([g, g, -g, -g]), (np.concatenate([u, v, u, v]), np.concatenate([u, v, v, u]))),
        shape=(n, n),
    ).tocsr()
    fixed = np.zeros(n, dtype=bool)
    fixed[[net.right_atrium, net.pulmonary_trunk]] = True
    free = np.flatnonzero(~fixed)
    p = np.zeros(n)
    p[net.right_atrium] = net.ra_pressure_pa
    p[net.pulmonary_trunk] = net.ra_pressure_pa  # pressure rise of the pump not modelled here
    a = lap[free][:, free].tocsc()
    b = net.node_inflow_m3_s[free] - lap[free][:, fixed] @ p[fixed]
    if hiatus >= 0 and p_out != net.ra_pressure_pa:
        up, sign = hiatus_upstream(net)
        b[np.searchsorted(free, up)] += g[hiatus] * (p_out - net.ra_pressure_pa)
    sub = a.tocoo()
    n_comp, labels = connected_components(sp.coo_matrix((sub.data != 0, (sub.row, sub.col)), shape=a.shape))
    reach = lap[:, [net.right_atrium]].toarray().ravel()[free] != 0
    grounded = np.zeros(n_comp, dtype=bool)
    grounded[np.unique(labels[reach])] = True
    if not grounded.all():
        stray = [net.node_names[free[i]] for i in np.flatnonzero(~grounded[labels])]
        raise SolverError(f"blood flow: node(s) cut off from the right atrium: {', '.join(stray[:5])}")
    p[free] = spla.spsolve(a, b)
    flow = g * (p[u] - p[v])
    if hiatus >= 0 and p_out != net.ra_pressure_pa:
        flow[hiatus] = sign * g[hiatus] * (p[up] - p_out)
    return p, flow


def kirchhoff_residual(net: VenousNetwork, edge_flow: np.ndarray) -> float:
    """max_i |inflow_i + sum(in) - sum(out)| / total inflow over all nodes except the pulmonary trunk.

    The right atrium is included: its net balance is zero because the pump removes the total
    venous return. The pulmonary trunk's outflow (into the lungs) equals the pump flow.
    """
    n = net.n_nodes
    net_in = net.node_inflow_m3_s.copy()
    np.subtract.at(net_in, net.edge_u, edge_flow)
    np.add.at(net_in, net.edge_v, edge_flow)
    net_in[net.pulmonary_trunk] = 0.0
    scale = max(float(net.node_inflow_m3_s.sum()), 1e-300)
    return float(np.abs(net_in).max() / scale) if n else 0.0


def flow_snapshot(network: VenousNetwork, flow: BloodFlow) -> VenousFlowSnapshot:
    """Plain-array view of the network and its flows for fragment transport."""
    return VenousFlowSnapshot(
        node_pos_m=network.node_pos_m.copy(),
        edge_u=network.edge_u.copy(),
        edge_v=network.edge_v.copy(),
        edge_diameter_m=network.edge_diameter_m.copy(),
        edge_length_m=network.edge_length_m.copy(),
        edge_flow_m3_s=flow.edge_flow_m3_s.copy(),
        outlet_node=int(network.right_atrium),
        edge_kind=network.edge_kind.copy(),
    )
