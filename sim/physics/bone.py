"""Parametric osteoporotic vertebral body on a uniform grid, and the vertebroplasty cannula in it.

Geometry (``geometries/vertebrae.yaml``, sources per number there)
    Transverse section: the ellipse (x/a)^2 + (y/b)^2 <= 1 (a = width/2, b = depth/2) minus a
    posterior disc of radius R = concavity_radius_fraction * width whose edge cuts
    concavity_depth_fraction * depth out of the posterior wall on the midline (the kidney shape
    of the canal side). Height = mean of anterior and posterior body heights. All lengths are
    scaled by ``size_scale``; the level's centre (0, 0, z_center) is not.

Cortex and endplates (impermeable)
    The cancellous region is the same shape offset inwards by the cortical thickness (ellipse
    axes a - t, b - t, disc radius R + t) and by the endplate thickness at top and bottom. A cell
    is ``porous`` when its centre lies in that inner shape; ``body`` is every cell whose centre
    lies in the outer shape plus a one-cell (6-neighbour) dilation of the porous set, so the
    impermeable shell is at least one cell thick on every grid while the pore volume converges
    with spacing (a 0.3 mm cortex cannot be resolved at 1 mm; putting the extra shell thickness
    outside rather than inside keeps the cement-fillable volume grid-independent).

Porosity and permeability
    phi = clip(porosity_mean + porosity_sd * g, 0.5, 0.99), g a unit Gaussian random field with
    covariance exp(-(r/l)^2) (``sim.physics.random_field``). Permeability from porosity by the
    permeability law (``laws.permeability``, :mod:`sim.physics.permeability`; by default a network
    of trabecular rods, normalised to permeability_ref at porosity_mean), kx = ky = k_t,
    kz = anisotropy * k_t.

Venous exits (``sim.core.grid.VenousExit``)
    * basivertebral: foramen on the posterior wall at the midline, basivertebral_cc_fraction of
      the height; its canal runs anteriorly basivertebral_canal_depth_fraction * depth (Tzika et
      al. 2021: 12-21.8 % of AP depth). The canal cells are not porous: the canal is the exit's
      Poiseuille tube (diameter = foramen diameter, length = canal depth). The exit drains the
      porous cells around the canal's inner end.
    * anterior_left/right: nutrient foramina on the anterolateral wall, anterior_foramen_angle_deg
      from the anterior midline; lateral_left/right on the lateral walls (segmental veins). Their
      tubes cross the cortex (length = cortical thickness). ``position_m`` of every exit is the
      outer opening (where the vein attaches) in the patient frame.

Intraosseous venous channels
    Straight tubes: a basivertebral trunk from the canal's inner end to a confluence near the
    body centre, branches fanning antero-laterally from the confluence, and short nutrient
    channels inward from each anterior/lateral foramen. End points get seeded jitter. A cell
    crossed by a tube of diameter d (face-connected voxel chain of its axis, plus every cell whose
    centre lies within d/2) gets
        k = f d^2 / 32 + k_matrix,   f = min(1, (pi d^2 / 4) / h^2),
    i.e. Poiseuille flow in a tube of area fraction f of the cell face (Darcy-equivalent
    permeability of a tube is d^2/32), added to all three axes because the staircase rasterisation
    of an oblique tube must conduct along every axis it steps in; porosity f + (1 - f) phi
    (capped at 0.99).

Fracture cleft (optional)
    A slab perpendicular to z at (center_ap_fraction, center_cc_fraction), thickness thickness_m
    (at least one cell) and an elliptic footprint of extent_fraction times the body's half-axes:
    k multiplied by permeability_factor, porosity raised to 1 - CLEFT_SOLID_RETAINED * (1 - phi).

Needle (``place_needle``)
    The shaft is the straight line from the pedicle base (transpedicular: centre of the pedicle,
    canal_width/2 + pedicle_width/2 from the midline, on the posterior contour, pedicle_height/2
    below the superior endplate; extrapedicular: 3 mm lateral of the pedicle, entering the
    posterolateral wall) to the requested tip. Tip cells = porous cells within the inner radius
    of the tip (at least the tip's own cell); path cells = body cells within the outer radius of
    the shaft behind the tip, removed from the porous set (cement cannot flow back along the
    cannula). Bipedicular: two mirrored cannulas, half the flow each.

Frame: DICOM LPS, metres, +x patient left, +y posterior, +z cranial, origin at the L1 centre.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import integrate, ndimage

from sim.core.errors import ConfigError, GeometryError
from sim.core.geometry_data import load_geometry_yaml
from sim.core.grid import (
    BodyOutline,
    BoneGrid,
    EmbeddedVessels,
    Needle,
    VenousExit,
    VesselSegment,
    VesselTree,
)
from sim.core.parameters import FractureCleftParams, NeedleParams, PatientParams
from sim.core.units import MM_M
from sim.physics.embedded_vessels import embed
from sim.physics.kernel_cover import ball_cover
from sim.physics.permeability import PermeabilityLaw, default_permeability
from sim.physics.random_field import FourierField
from sim.physics.well_index import tip_kernel_radius

POROSITY_CLIP = (0.5, 0.99)
ANATOMY_KEY = 7  # spawn-key prefix of the anatomy's named random streams
FOURIER_MODES = 1024  # modes of the porosity field (its marginal is Gaussian to a few per cent)
TIP_CLEAR_RADII = 3.0  # the shaft is carved from this many outer radii behind the tip (well near field)
BRANCH_FAN_DEG = 70.0  # [U] basivertebral tributaries fan over +-70 deg from the AP axis
CLEFT_SOLID_RETAINED = 0.3  # [U] fraction of the trabecular solid left inside a fracture cleft
EXTRAPEDICULAR_OFFSET_M = 3.0e-3  # [U] extrapedicular entry lateral of the pedicle's lateral wall
_FACE6 = ndimage.generate_binary_structure(3, 1)
_BODY_META_KEYS = ("width_m", "depth_m", "height_m", "size_scale", "porosity_model", "shell_rule")

# ----------------------------------------------------------------------------- data


def _si_entry(name: str, value: Any) -> tuple[str, Any]:
    """SI name and value of a tabulated field (``_mm`` -> ``_m``, ``_deg`` -> ``_rad``)."""
    if name.endswith("_mm"):
        return name[:-3] + "_m", float(value) * MM_M
    if name.endswith("_deg"):
        return name[:-4] + "_rad", float(np.deg2rad(float(value)))
    return name, value


def _unpack(section: dict, where: str, sources: dict, out: dict, notes: dict) -> None:
    for name, entry in section.items():
        if not (isinstance(entry, list) and len(entry) == 3):
            raise GeometryError(f"{where}.{name}: expected [value, tag, source], got {entry!r}")
        value, tag, src = entry
        if tag not in ("S", "S~", "U"):
            raise GeometryError(f"{where}.{name}: unknown tag {tag!r} (use S, S~ or U)")
        if src not in sources:
            raise GeometryError(f"{where}.{name}: source key {src!r} not in the file's sources")
        si_name, si_value = _si_entry(name, value)
        out[si_name] = si_value
        notes[si_name] = f"[{tag}] {src}"


def load_vertebra(level: str) -> dict:
    """SI dimensions of one level from ``geometries/vertebrae.yaml`` (plus shared shape/channel data).

    Keys: ``width_m``, ``depth_m``, ``height_m`` (mean of anterior/posterior), ``height_anterior_m``,
    ``height_posterior_m``, ``cortical_thickness_m``,
    ``disc_below_m``, ``z_center_m``, pedicle fields (``pedicle_width_m``, ``pedicle_height_m``,
    ``pedicle_transverse_angle_rad``, ``canal_width_m``, ``pedicle_axis_length_m``), the shared
    ``shape`` and ``channels`` fields, ``sources`` (field -> "[tag] source-key") and
    ``citations`` (source-key -> reference).
    """
    data = load_geometry_yaml("vertebrae.yaml")
    levels = data.get("levels", {})
    if level not in levels:
        raise GeometryError(f"vertebral level {level!r} not in vertebrae.yaml (known: {', '.join(levels)})")
    sources = data["sources"]
    out: dict[str, Any] = {"level": level}
    notes: dict[str, str] = {}
    _unpack(levels[level], f"levels.{level}", sources, out, notes)
    _unpack(data["shape"], "shape", sources, out, notes)
    _unpack(data["channels"], "channels", sources, out, notes)
    out["height_m"] = 0.5 * (out["height_anterior_m"] + out["height_posterior_m"])
    notes["height_m"] = f"{notes['height_anterior_m']} mean of anterior and posterior body heights"
    out["basivertebral_branch_count"] = int(out["basivertebral_branch_count"])
    out["sources"] = notes
    out["citations"] = dict(sources)
    return out


def load_cannula(gauge: int) -> dict:
    """SI dimensions of a cannula gauge from ``geometries/cannulas.yaml``."""
    data = load_geometry_yaml("cannulas.yaml")
    gauges = data.get("gauges", {})
    if int(gauge) not in gauges:
        raise GeometryError(
            f"cannula gauge {gauge!r} not in cannulas.yaml (known: {', '.join(map(str, gauges))})"
        )
    out: dict[str, Any] = {"gauge": int(gauge)}
    notes: dict[str, str] = {}
    _unpack(gauges[int(gauge)], f"gauges.{gauge}", data["sources"], out, notes)
    out["sources"] = notes
    return out


# ----------------------------------------------------------------------------- shape


@functools.cache
def _section_area(shape: BodyShape) -> float:
    """Area of a BodyShape's section (cached: a cohort meets the same level's shape again and again)."""
    f = shape.chord  # the scalar form: quad calls it a few thousand times per shape
    breaks = [-shape.disc_radius, shape.disc_radius] if shape.disc_radius < shape.a else None
    val, _ = integrate.quad(f, -shape.a, shape.a, points=breaks, limit=200, epsabs=1e-14, epsrel=1e-10)
    return float(val)


@dataclass(frozen=True)
class BodyShape:
    """Kidney-shaped section (ellipse minus posterior disc) extruded over |z| <= half_height.

    Coordinates are relative to the body centre (metres).
    """

    a: float  # half-width (x)
    b: float  # half-depth (y)
    half_height: float  # z
    disc_radius: float  # posterior concavity disc radius
    disc_y: float  # y of the disc centre (posterior, outside the body)

    @classmethod
    def from_dims(
        cls, width: float, depth: float, height: float, depth_frac: float, radius_frac: float
    ) -> BodyShape:
        radius = radius_frac * width
        return cls(0.5 * width, 0.5 * depth, 0.5 * height, radius, 0.5 * depth - depth_frac * depth + radius)

    def inset(self, lateral: float, axial: float) -> BodyShape:
        """The shape offset inwards by ``lateral`` in the section and ``axial`` at the endplates."""
        return BodyShape(
            self.a - lateral,
            self.b - lateral,
            self.half_height - axial,
            self.disc_radius + lateral,
            self.disc_y,
        )

    def inside_xy(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ell = (x / self.a) ** 2 + (y / self.b) ** 2 <= 1.0
        return ell & (x**2 + (y - self.disc_y) ** 2 >= self.disc_radius**2)

    def inside(self, p: np.ndarray) -> np.ndarray:
        """Points (n, 3) inside the solid."""
        p = np.atleast_2d(p)
        return self.inside_xy(p[:, 0], p[:, 1]) & (np.abs(p[:, 2]) <= self.half_height)

    def anterior_y(self, x: float | np.ndarray) -> np.ndarray:
        return -self.b * np.sqrt(np.clip(1.0 - (np.asarray(x) / self.a) ** 2, 0.0, None))

    def posterior_y(self, x: float | np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        ell = self.b * np.sqrt(np.clip(1.0 - (x / self.a) ** 2, 0.0, None))
        inside_disc = np.abs(x) < self.disc_radius
        disc = self.disc_y - np.sqrt(np.clip(self.disc_radius**2 - x**2, 0.0, None))
        return np.where(inside_disc, np.minimum(ell, disc), ell)

    def chord(self, x: float) -> float:
        """Chord length posterior_y(x) - anterior_y(x) (>= 0) at one x, in plain floats.

        The same operations as the array methods (sqrt of a clipped square, the disc's minimum), so
        the same bits, without numpy's per-call overhead."""
        ell = self.b * math.sqrt(max(1.0 - (x / self.a) ** 2, 0.0))
        post = ell
        if abs(x) < self.disc_radius:
            post = min(ell, self.disc_y - math.sqrt(max(self.disc_radius**2 - x**2, 0.0)))
        return max(post - (-ell), 0.0)

    def area(self) -> float:
        """Section area by adaptive quadrature of the chord length (independent of any grid)."""
        return _section_area(self)

    def volume(self) -> float:
        return self.area() * 2.0 * self.half_height

    def to_meta(self) -> dict:
        return {
            "a_m": self.a,
            "b_m": self.b,
            "half_height_m": self.half_height,
            "disc_radius_m": self.disc_radius,
            "disc_y_m": self.disc_y,
        }

    @classmethod
    def from_meta(cls, m: dict) -> BodyShape:
        return cls(m["a_m"], m["b_m"], m["half_height_m"], m["disc_radius_m"], m["disc_y_m"])


@dataclass(frozen=True, eq=False)  # ndarray field: identity, not elementwise, equality
class ShapeOutline:
    """A :class:`BodyShape` placed at ``center_m`` (patient frame): the parametric body's outline.

    Silhouettes in closed form. Along z the ray meets the section itself. A ray along x at height
    y crosses the section iff |y| <= b and the ellipse's half-chord there reaches past the
    posterior disc: a^2 (1 - y^2 / b^2) + (y - y_d)^2 >= R^2 (x^2 + (y - y_d)^2 >= R^2 at the
    chord's end). A ray along y at x crosses iff |x| <= a and the chord end farther from the disc
    centre, y = -+ b sqrt(1 - x^2 / a^2), lies outside the disc. Either way also |z| <= half height.
    """

    shape: BodyShape
    center_m: np.ndarray

    def bounds_m(self) -> tuple[np.ndarray, np.ndarray]:
        """The section lies in |x| <= a, |y| <= b (an ellipse less a disc), the body in |z| <= half height."""
        half = np.array([self.shape.a, self.shape.b, self.shape.half_height])
        return self.center_m - half, self.center_m + half

    def silhouette(self, ray_axis: int, u_m: np.ndarray, v_m: np.ndarray) -> np.ndarray:
        s = self.shape
        a_ax, b_ax = (k for k in range(3) if k != ray_axis)
        u = np.asarray(u_m, dtype=np.float64) - self.center_m[a_ax]
        v = np.asarray(v_m, dtype=np.float64) - self.center_m[b_ax]
        if ray_axis == 2:  # u = x, v = y
            return s.inside_xy(u[:, None], v[None, :])
        r2 = s.disc_radius**2
        if ray_axis == 0:  # u = y
            half_x2 = s.a**2 * (1.0 - (u / s.b) ** 2)
            across = (np.abs(u) <= s.b) & (half_x2 + (u - s.disc_y) ** 2 >= r2)
        else:  # u = x
            half_y = s.b * np.sqrt(np.clip(1.0 - (u / s.a) ** 2, 0.0, None))
            far = np.maximum((-half_y - s.disc_y) ** 2, (half_y - s.disc_y) ** 2)
            across = (np.abs(u) <= s.a) & (u**2 + far >= r2)
        return across[:, None] & (np.abs(v) <= s.half_height)[None, :]


# ----------------------------------------------------------------------------- grid helpers


@dataclass(frozen=True)
class _Axes:
    """Cell-centre coordinates (relative to the body centre) of a grid symmetric about 0."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    h: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.size, self.y.size, self.z.size)

    @property
    def origin(self) -> np.ndarray:
        return np.array([self.x[0], self.y[0], self.z[0]])

    def ijk(self, p: np.ndarray) -> np.ndarray:
        """Nearest cell indices (n, 3) of points (n, 3), clipped to the grid."""
        idx = np.rint((np.atleast_2d(p) - self.origin) / self.h).astype(np.int64)
        return np.clip(idx, 0, np.array(self.shape) - 1)

    def flat(self, ijk: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index(tuple(np.atleast_2d(ijk).T), self.shape).astype(np.int64)

    def centers(self, flat: np.ndarray) -> np.ndarray:
        i, j, k = np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape)
        return np.stack([self.x[i], self.y[j], self.z[k]], axis=-1)


def _symmetric_axis(
    half_extent: float, h: float, margin_cells: int, fit_half: float | None = None
) -> np.ndarray:
    """Cell centres symmetric about 0 covering +-half_extent plus ``margin_cells``.

    Centres sit on integer multiples of h, or on half-integers when that makes the number of
    centres inside +-fit_half closer to 2*fit_half/h (halves the worst layer-quantisation error
    of a flat boundary such as the endplates).
    """
    n_half = int(np.ceil(half_extent / h)) + margin_cells
    shift = 0.0
    if fit_half is not None:
        x = fit_half / h
        err_int = abs(2 * np.floor(x) + 1 - 2 * x)
        err_half = abs(2 * np.floor(x + 0.5) - 2 * x)
        shift = 0.5 if err_half < err_int else 0.0
    if shift:
        return (np.arange(2 * n_half + 2, dtype=np.float64) - n_half - 0.5) * h
    return (np.arange(2 * n_half + 1, dtype=np.float64) - n_half) * h


def _box_cells(axes: _Axes, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and centres (n, 3) of the cells whose centres lie in the box [lo, hi]."""
    lo_i = np.clip(np.ceil((lo - axes.origin) / axes.h - 1e-9).astype(np.int64), 0, np.array(axes.shape) - 1)
    hi_i = np.clip(np.floor((hi - axes.origin) / axes.h + 1e-9).astype(np.int64), 0, np.array(axes.shape) - 1)
    if np.any(hi_i < lo_i):
        return np.empty(0, np.int64), np.empty((0, 3))
    ii, jj, kk = np.meshgrid(
        np.arange(lo_i[0], hi_i[0] + 1),
        np.arange(lo_i[1], hi_i[1] + 1),
        np.arange(lo_i[2], hi_i[2] + 1),
        indexing="ij",
    )
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=-1)
    return axes.flat(ijk), np.stack([axes.x[ijk[:, 0]], axes.y[ijk[:, 1]], axes.z[ijk[:, 2]]], axis=-1)


def _segment_distance(pts: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points to segment p0-p1 and the (unclipped) axial parameter in metres."""
    d = p1 - p0
    length = float(np.linalg.norm(d))
    u = d / length if length > 0 else np.zeros(3)
    s = (pts - p0) @ u
    closest = p0 + np.clip(s, 0.0, length)[:, None] * u
    return np.linalg.norm(pts - closest, axis=1), s


def _voxel_chain(axes: _Axes, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Face-connected chain of cells crossed by the segment p0-p1 (flat indices, unique)."""
    length = float(np.linalg.norm(p1 - p0))
    n = max(2, int(np.ceil(length / (0.125 * axes.h))) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    idx = axes.ijk(p0 + t * (p1 - p0))
    keep = np.ones(len(idx), bool)
    keep[1:] = np.any(idx[1:] != idx[:-1], axis=1)
    idx = idx[keep]
    if len(idx) > 1:
        diff = idx[1:] - idx[:-1]
        nz = diff != 0
        first = nz & (np.cumsum(nz, axis=1) == 1)
        second = nz & (np.cumsum(nz, axis=1) == 2)
        step1 = idx[:-1] + diff * first
        step2 = step1 + diff * second
        idx = np.concatenate([idx, step1, step2])
    return np.unique(axes.flat(idx))


def _tube_cells(axes: _Axes, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """Cells crossed by the axis of a tube plus the cells whose centres lie within ``radius``."""
    chain = _voxel_chain(axes, p0, p1)
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    flat, ctr = _box_cells(axes, lo, hi)
    if flat.size:
        dist, _ = _segment_distance(ctr, p0, p1)
        chain = np.union1d(chain, flat[dist <= radius])
    return chain


# ----------------------------------------------------------------------------- build


def _wall_point(shape: BodyShape, angle_rad: float, side: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Point on the elliptic wall at parametric angle from the anterior midline, and outward normal."""
    p = np.array([side * shape.a * np.sin(angle_rad), -shape.b * np.cos(angle_rad), z])
    n = np.array([p[0] / shape.a**2, p[1] / shape.b**2, 0.0])
    return p, n / np.linalg.norm(n)


def _exit_cells(axes: _Axes, porous_flat: np.ndarray, point: np.ndarray, radius: float) -> np.ndarray:
    """Porous cells within ``radius`` of ``point``; the nearest porous cell if there is none."""
    r_box = max(radius, 4.0 * axes.h)
    flat, ctr = _box_cells(axes, point - r_box, point + r_box)
    ok = porous_flat[flat]
    flat, ctr = flat[ok], ctr[ok]
    if flat.size == 0:
        return flat
    dist = np.linalg.norm(ctr - point, axis=1)
    sel = flat[dist <= radius]
    return np.sort(sel) if sel.size else flat[[int(np.argmin(dist))]]


def _ray_to_wall(shape: BodyShape, p0: np.ndarray, direction: np.ndarray) -> float:
    """Distance from p0 (inside) along a horizontal direction to the ellipse wall."""
    dx, dy = direction[0], direction[1]
    qa = (dx / shape.a) ** 2 + (dy / shape.b) ** 2
    qb = 2.0 * (p0[0] * dx / shape.a**2 + p0[1] * dy / shape.b**2)
    qc = (p0[0] / shape.a) ** 2 + (p0[1] / shape.b) ** 2 - 1.0
    return float((-qb + np.sqrt(max(qb * qb - 4.0 * qa * qc, 0.0))) / (2.0 * qa))


def feature_rng(seed: int, feature: str) -> np.random.Generator:
    """The random stream of one anatomical feature of the patient (independent of the grid).

    ``SeedSequence(seed, spawn_key=(ANATOMY_KEY, crc32(feature)))``: adding a feature or changing the
    grid leaves every other feature's draws unchanged.
    """
    key = (ANATOMY_KEY, zlib.crc32(feature.encode()))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def build_vertebral_body(
    patient: PatientParams,
    spacing_m: float,
    permeability: PermeabilityLaw | None = None,
) -> BoneGrid:
    """The patient's osteoporotic vertebral body, defined in continuous space, sampled on a grid.

    Every random draw comes from the patient's seed through a named stream per feature
    (:func:`feature_rng`), and the porosity field is a function of position
    (:class:`~sim.physics.random_field.FourierField`), so the same patient comes out at any spacing.
    ``permeability`` is the permeability law (``laws.permeability``; the trabecular rod network by default).
    See the module docstring for the models and sources.
    """
    level = patient.level
    h = float(spacing_m)
    if not (np.isfinite(h) and 5.0e-5 <= h <= 5.0e-3):
        raise ConfigError(f"grid spacing_m = {spacing_m!r}: expected 5e-5 .. 5e-3 m")
    phi_mean = float(patient.porosity_mean)
    phi_sd = float(patient.porosity_sd)
    corr = float(patient.porosity_correlation_m)
    scale = float(patient.size_scale)

    dims = dict(load_vertebra(level))
    width, depth, height = (scale * dims[k] for k in ("width_m", "depth_m", "height_m"))
    t_cort = dims["cortical_thickness_m"]
    t_end = dims["endplate_thickness_m"]
    outer = BodyShape.from_dims(
        width, depth, height, dims["concavity_depth_fraction"], dims["concavity_radius_fraction"]
    )
    inner = outer.inset(t_cort, t_end)
    center = np.array([0.0, 0.0, dims["z_center_m"]])

    margin = 2
    axes = _Axes(
        _symmetric_axis(outer.a, h, margin),
        _symmetric_axis(outer.b, h, margin),
        _symmetric_axis(outer.half_height, h, margin, fit_half=inner.half_height),
        h,
    )
    X, Y = np.meshgrid(axes.x, axes.y, indexing="ij")
    porous = inner.inside_xy(X, Y)[:, :, None] & (np.abs(axes.z) <= inner.half_height)[None, None, :]
    outer_mask = outer.inside_xy(X, Y)[:, :, None] & (np.abs(axes.z) <= outer.half_height)[None, None, :]
    body = outer_mask | ndimage.binary_dilation(porous, structure=_FACE6)
    del X, Y, outer_mask

    # --- porosity (a field of position).
    g = FourierField.draw(corr, feature_rng(patient.seed, "porosity"), FOURIER_MODES).on_grid(
        axes.origin, h, axes.shape
    )
    phi = np.clip(phi_mean + phi_sd * g, *POROSITY_CLIP)
    del g
    law = permeability or default_permeability(patient)
    return assemble_body(
        patient,
        dims,
        axes,
        outer,
        inner,
        center,
        porous,
        body,
        phi,
        law,
        {
            "width_m": width,
            "depth_m": depth,
            "height_m": height,
            "size_scale": scale,
            "porosity_model": f"clip(mean + sd * g, 0.5, 0.99), g of {FOURIER_MODES} Fourier modes",
            "shell_rule": "porous: centre in inset shape; body: outer shape + 1-cell dilation",
        },
    )


def assemble_body(
    patient: PatientParams,
    dims: dict[str, Any],
    axes: _Axes,
    outer: BodyShape,
    inner: BodyShape,
    center: np.ndarray,
    porous: np.ndarray,
    body: np.ndarray,
    phi: np.ndarray,
    law: PermeabilityLaw,
    meta: dict[str, Any],
    outline: BodyOutline | None = None,
) -> BoneGrid:
    """The BoneGrid of a body whose shape (``outer``, ``inner``), masks and porosity are known.

    Shared by the parametric body and the CT one (``sim.anatomy.ct_bone``): cuts the basivertebral
    canals out of ``porous`` (modified in place), sets porosity outside the porous cells to 0, the
    permeability from ``law``, the fracture cleft, the intraosseous veins (placed relative to
    ``outer`` by :func:`vein_tree`), the exits, and drops porous cells no exit drains.
    ``axes`` are body-centred; ``center`` is the body centre in the patient frame; ``meta`` holds
    the body's dimensions (``width_m``, ``depth_m``, ``height_m``) and model notes. ``outline`` is
    the body in continuous space (default: ``outer`` at ``center``; a CT body passes its
    segmentation).
    """
    level = patient.level
    h = axes.h
    t_cort = dims["cortical_thickness_m"]
    t_end = dims["endplate_thickness_m"]
    depth = float(meta["depth_m"])
    pedicle_scale = float(meta.get("size_scale", 1.0))
    porous_flat = porous.reshape(-1)
    if h > float(patient.basivertebral_foramen_height_m):
        raise GeometryError(
            f"grid.spacing_mm = {1e3 * h:g} is coarser than patient.basivertebral_foramen_height_mm = "
            f"{1e3 * patient.basivertebral_foramen_height_m:g}: the basivertebral canal would not be "
            "resolved (use a finer grid)"
        )
    # --- intraosseous veins in continuous space (each feature its own random stream).
    tree, canals, exit_specs = vein_tree(patient, dims, outer, inner, depth, t_cort)
    for p0, p1, radius in canals:  # cortical-walled basivertebral canals: no marrow in them
        cells = _tube_cells(axes, p0, p1, radius)
        porous_flat[cells[body.reshape(-1)[cells]]] = False

    # --- permeability from porosity.
    phi[~porous] = 0.0
    perm = np.zeros((3, *axes.shape), dtype=np.float64)
    perm[:, porous] = law.tensor_diagonal(phi[porous])

    # --- fracture cleft.
    cleft = None
    if patient.fracture_cleft.enabled:
        cleft = _fracture_cleft(axes, outer, porous, patient.fracture_cleft)
        factor = float(patient.fracture_cleft.permeability_factor)
        perm[:, cleft] *= factor
        phi[cleft] = np.minimum(1.0 - CLEFT_SOLID_RETAINED * (1.0 - phi[cleft]), POROSITY_CLIP[1])

    # --- the veins on this grid: nodes, Poiseuille edges, well connections to the cells.
    vessels = embed(tree, axes.origin, h, porous, perm, patient.vein_kernel_radius_m)
    channel = np.zeros(axes.shape, dtype=bool)
    channel.reshape(-1)[vessels.well_cell] = True

    exits = []
    for name, kind, p_out, d_eq, length in exit_specs:
        node = vessels.exit_node[name]
        drained = _vein_cells(vessels, node)
        exits.append(
            VenousExit(
                name=name,
                kind=kind,
                cells=drained,
                position_m=p_out + center,
                diameter_m=float(d_eq),
                length_m=float(length),
                node=node,
            )
        )
    vessels.node_pos_m = vessels.node_pos_m + center
    bone = BoneGrid(
        level=level,
        spacing_m=h,
        origin_m=axes.origin + center,
        porous=porous,
        body=body,
        porosity=phi,
        permeability=perm,
        exits=exits,
        channel=channel,
        cleft=cleft,
        vessels=vessels,
        outline=outline if outline is not None else ShapeOutline(outer, np.asarray(center, dtype=np.float64)),
        meta={},
    )
    dropped = _keep_drained_components(bone)
    bone.meta.update(
        {
            "level": level,
            "center_m": center,
            **{k: meta[k] for k in ("width_m", "depth_m", "height_m", "size_scale") if k in meta},
            "cortical_thickness_m": t_cort,
            "endplate_thickness_m": t_end,
            "outer_shape": outer.to_meta(),
            "inner_shape": inner.to_meta(),
            "outer_volume_m3": outer.volume(),
            "cancellous_volume_m3": inner.volume(),
            "pedicle": {
                k: dims[k] * (pedicle_scale if k.endswith("_m") else 1.0)
                for k in (
                    "pedicle_width_m",
                    "pedicle_height_m",
                    "pedicle_transverse_angle_rad",
                    "canal_width_m",
                    "pedicle_axis_length_m",
                )
            },
            "veins": [
                {
                    "name": seg.name,
                    "start_m": tree.points_m[seg.start] + center,
                    "end_m": tree.points_m[seg.end] + center,
                    "diameter_m": seg.diameter_m,
                    "exchanges": seg.exchanges,
                }
                for seg in tree.segments
            ],
            "well_kernel_radius_m": vessels.kernel_radius_m,
            "isolated_porous_cells_removed": dropped,
            "porosity_model": meta["porosity_model"],
            "permeability_model": type(law).law_name,
            "shell_rule": meta["shell_rule"],
            **{k: v for k, v in meta.items() if k not in _BODY_META_KEYS},
            "sources": dims["sources"],
            "citations": dims["citations"],
        }
    )
    return bone


def _inside(shape: BodyShape, point: np.ndarray, diameter: float) -> np.ndarray:
    """``point`` pulled towards the body axis until a vein of ``diameter`` around it is in ``shape``.

    Jittered vein ends near the wall stay in the cancellous bone instead of running into the cortex.
    """
    margin = 0.5 * diameter
    inset = shape.inset(margin, margin)
    p = np.asarray(point, dtype=np.float64).copy()
    for _ in range(60):
        if inset.inside(p)[0]:
            return p
        p[:2] *= 0.95
        p[2] = float(np.clip(p[2], -inset.half_height, inset.half_height))
    raise GeometryError(f"a vein of {1e3 * diameter:.2f} mm does not fit inside the cancellous bone")


def _vein_cells(vessels: EmbeddedVessels, node: int) -> np.ndarray:
    """Porous cells the vein through ``node`` drains: its well cells nearest the foramen."""
    # walk from the foramen node along the vein until nodes with well connections are found
    adjacency: dict[int, list[int]] = {}
    for a, b in zip(vessels.edge_a.tolist(), vessels.edge_b.tolist(), strict=True):
        adjacency.setdefault(a, []).append(b)
        adjacency.setdefault(b, []).append(a)
    seen, frontier = {node}, [node]
    while frontier:
        cells = vessels.well_cell[np.isin(vessels.well_node, frontier)]
        if cells.size:
            return np.unique(cells)
        frontier = [m for n in frontier for m in adjacency.get(n, []) if m not in seen]
        seen.update(frontier)
    return np.empty(0, dtype=np.int64)


def vein_tree(
    patient: PatientParams,
    dims: dict[str, Any],
    outer: BodyShape,
    inner: BodyShape,
    depth: float,
    t_cort: float,
) -> tuple[
    VesselTree, list[tuple[np.ndarray, np.ndarray, float]], list[tuple[str, str, np.ndarray, float, float]]
]:
    """The intraosseous veins of the patient in body-centred coordinates.

    Returns the vessel tree, the basivertebral canals (axis end points and radius, cut out of the
    marrow) and the exits (name, kind, outer opening, equivalent diameter, canal length).
    Basivertebral system: one or two foramina on the posterior wall (two share the width side by
    side; each elliptic, width x height, an
    equivalent Poiseuille diameter d^4 = 32 a^3 b^3 / (a^2 + b^2) for semi-axes a, b), each a canal
    ``basivertebral_canal_depth_fraction`` of the body depth deep, leading to a trunk that runs to a
    confluence near the body centre, from which ``basivertebral_branch_count`` tributaries fan
    antero-laterally; branch diameters from the trunk's by Murray's law (d_b = d_t / N^(1/3)).
    Nutrient veins: from each anterior and lateral foramen a channel through the cortex, then inward
    for ``nutrient_channel_length_fraction`` of the depth. Confluence, branch and channel end points
    get seeded jitter, each from its own stream.
    """
    jitter = dims["endpoint_jitter_m"] * float(patient.size_scale)
    z_bv = -outer.half_height + dims["basivertebral_cc_fraction"] * 2.0 * outer.half_height
    # two foramina share the measured opening side by side, each half as wide [U]
    n_foramina = int(patient.basivertebral_foramina)
    a_f = 0.5 * float(patient.basivertebral_foramen_width_m) / n_foramina
    b_f = 0.5 * float(patient.basivertebral_foramen_height_m)
    d_canal = float((32.0 * a_f**3 * b_f**3 / (a_f**2 + b_f**2)) ** 0.25)
    canal_len = dims["basivertebral_canal_depth_fraction"] * depth
    d_trunk = float(patient.intraosseous_vein_diameter_m)
    n_br = int(dims["basivertebral_branch_count"])
    d_branch = d_trunk / n_br ** (1.0 / 3.0)
    d_nut = float(patient.nutrient_foramen_diameter_m)

    points: list[np.ndarray] = []
    segments: list[VesselSegment] = []
    exits_pt: dict[str, int] = {}
    mouths: dict[int, float] = {}
    canals: list[tuple[np.ndarray, np.ndarray, float]] = []
    exit_specs: list[tuple[str, str, np.ndarray, float, float]] = []

    def point(p: np.ndarray) -> int:
        points.append(np.asarray(p, dtype=np.float64))
        return len(points) - 1

    x_offsets = [0.0] if n_foramina == 1 else [-(a_f + 0.25e-3), a_f + 0.25e-3]
    span = max(abs(x) for x in x_offsets) + a_f
    if span > outer.disc_radius:
        raise GeometryError(
            f"patient.basivertebral_foramen_width_mm = {2e3 * a_f * n_foramina:g} with "
            f"basivertebral_foramina = {n_foramina}: the foramina would reach {1e3 * span:.1f} mm from the "
            f"midline, beyond the posterior wall of the {dims['level']} body (its concave part spans "
            f"{1e3 * outer.disc_radius:.1f} mm)"
        )
    rng_c = feature_rng(patient.seed, "basivertebral_confluence")
    confluence = _inside(
        inner, np.array([0.0, 0.0, z_bv]) + rng_c.normal(0.0, jitter, 3) * np.array([1.0, 1.0, 0.5]), d_trunk
    )
    i_conf = point(confluence)
    for k, x0 in enumerate(x_offsets):
        name = "basivertebral" if n_foramina == 1 else f"basivertebral_{'right' if x0 < 0 else 'left'}"
        p_out = np.array([x0, float(outer.posterior_y(x0)), z_bv])
        p_in = p_out - np.array([0.0, canal_len, 0.0])
        i_out, i_in = point(p_out), point(p_in)
        segments.append(VesselSegment(f"{name}_canal", i_out, i_in, d_canal, False))
        segments.append(VesselSegment(f"{name}_trunk", i_in, i_conf, d_trunk, True))
        exits_pt[name] = i_out
        mouths[i_in] = float(np.sqrt(a_f * b_f))  # the canal opens into the marrow (equal-area disc)
        canals.append((p_out + np.array([0.0, 2.0 * t_cort, 0.0]), p_in, 0.5 * d_canal))
        exit_specs.append((name, "basivertebral", p_out, d_canal, canal_len))
        del k
    rng_b = feature_rng(patient.seed, "basivertebral_branches")
    for j, ang in enumerate(np.deg2rad(np.linspace(-BRANCH_FAN_DEG, BRANCH_FAN_DEG, n_br))):
        direction = np.array([np.sin(ang), -np.cos(ang), 0.0])
        reach = dims["branch_reach_fraction"] * _ray_to_wall(inner, confluence, direction)
        end = _inside(inner, confluence + reach * direction + rng_b.normal(0.0, jitter, 3), d_branch)
        segments.append(VesselSegment(f"basivertebral_branch_{j}", i_conf, point(end), d_branch, True))
    nut_len = dims["nutrient_channel_length_fraction"] * depth
    for kind, angle_key in (
        ("anterior", "anterior_foramen_angle_rad"),
        ("lateral", "lateral_foramen_angle_rad"),
    ):
        for side_name, side in (("left", 1.0), ("right", -1.0)):
            name = f"{kind}_{side_name}"
            p_out, normal = _wall_point(outer, dims[angle_key], side, z_bv)
            p_in = p_out - normal * t_cort
            rng_n = feature_rng(patient.seed, f"nutrient_{name}")
            end = _inside(
                inner,
                p_in - normal * nut_len + rng_n.normal(0.0, jitter, 3) * np.array([1.0, 1.0, 0.5]),
                d_nut,
            )
            i_out, i_in = point(p_out), point(p_in)
            segments.append(VesselSegment(f"foramen_{name}", i_out, i_in, d_nut, False))
            segments.append(VesselSegment(f"nutrient_{name}", i_in, point(end), d_nut, True))
            exits_pt[name] = i_out
            exit_specs.append((name, kind, p_out, d_nut, t_cort))
    return VesselTree(np.array(points), tuple(segments), exits_pt, mouths), canals, exit_specs


def _fracture_cleft(
    axes: _Axes, outer: BodyShape, porous: np.ndarray, cleft: FractureCleftParams
) -> np.ndarray:
    y_ant = float(outer.anterior_y(0.0))
    y_post = float(outer.posterior_y(0.0))
    yc = y_ant + float(cleft.center_ap_fraction) * (y_post - y_ant)
    zc = -outer.half_height + float(cleft.center_cc_fraction) * 2.0 * outer.half_height
    half_t = max(0.5 * float(cleft.thickness_m), 0.5 * axes.h)
    e = float(cleft.extent_fraction)
    X, Y = np.meshgrid(axes.x, axes.y, indexing="ij")
    foot = (X / (e * outer.a)) ** 2 + ((Y - yc) / (e * outer.b)) ** 2 <= 1.0
    slab = np.abs(axes.z - zc) <= half_t + 1e-12
    return foot[:, :, None] & slab[None, None, :] & porous


def _keep_drained_components(bone: BoneGrid, extra_cells: np.ndarray | None = None) -> int:
    """Drop porous cells not face-connected to any exit (they would make the pressure problem singular).

    Returns the number of cells removed. Exit cells that are no longer porous are dropped from
    their exit; an exit left without cells is a GeometryError naming it.
    """
    labels, _n = ndimage.label(bone.porous, structure=_FACE6)
    flat_labels = labels.reshape(-1)
    keep_labels = set()
    for ex in bone.exits:
        keep_labels.update(int(v) for v in np.unique(flat_labels[ex.cells]) if v > 0)
    if extra_cells is not None:
        keep_labels.update(int(v) for v in np.unique(flat_labels[extra_cells]) if v > 0)
    keep = np.isin(labels, np.fromiter(keep_labels, dtype=labels.dtype, count=len(keep_labels)))
    removed = bone.porous & ~keep
    n_removed = int(removed.sum())
    if n_removed:
        bone.porous &= keep
        bone.porosity[removed] = 0.0
        bone.permeability[:, removed] = 0.0
        if bone.channel is not None:
            bone.channel &= keep
        if bone.cleft is not None:
            bone.cleft &= keep
    return n_removed


# ----------------------------------------------------------------------------- needle


def _tip_point(shape: BodyShape, ap: float, lat: float, cc: float) -> np.ndarray:
    """Body-relative tip position from the fractions (see ``sim.core.config.NeedleConfig``)."""
    x = lat * shape.a
    y_ant = float(shape.anterior_y(x))
    y_post = float(shape.posterior_y(x))
    return np.array([x, y_ant + ap * (y_post - y_ant), -shape.half_height + cc * 2.0 * shape.half_height])


def place_needle(bone: BoneGrid, needle: NeedleParams) -> Needle:
    """Place the cannula(s) of ``needle`` in ``bone``.

    Modifies ``bone`` in place: the shaft's path cells stop being porous (porosity and
    permeability set to 0) and are dropped from exits. Raises GeometryError when a tip falls
    outside the porous region or a shaft leaves the body on its way to the tip.
    """
    approach = needle.approach
    if approach not in ("transpedicular", "extrapedicular"):
        raise ConfigError(f"needle.approach = {approach!r}: expected 'transpedicular' or 'extrapedicular'")
    if needle.side not in ("left", "right"):
        raise ConfigError(f"needle.side = {needle.side!r}: expected 'left' or 'right'")
    cannula = load_cannula(int(needle.gauge))
    r_in = 0.5 * cannula["inner_diameter_m"]
    r_out = 0.5 * cannula["outer_diameter_m"]
    meta = bone.meta
    if "outer_shape" not in meta:
        raise GeometryError(
            "place_needle needs a BoneGrid made by build_vertebral_body (meta['outer_shape'])"
        )
    shape = BodyShape.from_meta(meta["outer_shape"])
    center = np.asarray(meta["center_m"], dtype=np.float64)
    ped = meta["pedicle"]
    h = bone.spacing_m
    nx, ny, nz = bone.shape
    axes = _Axes(
        bone.origin_m[0] - center[0] + h * np.arange(nx),
        bone.origin_m[1] - center[1] + h * np.arange(ny),
        bone.origin_m[2] - center[2] + h * np.arange(nz),
        h,
    )
    ap, lat, cc = (
        float(needle.tip_ap_fraction),
        float(needle.tip_lateral_fraction),
        float(needle.tip_cc_fraction),
    )
    if bool(needle.bipedicular):
        sides = [1.0, -1.0]
        lats = [abs(lat), -abs(lat)]
    else:
        sides = [1.0 if needle.side == "left" else -1.0]
        lats = [lat]

    porous_flat = bone.porous.reshape(-1)
    body_flat = bone.body.reshape(-1)
    tips, tips_rel, entries, bases, tip_sets, path_sets, info = [], [], [], [], [], [], []
    x_ped = 0.5 * ped["canal_width_m"] + 0.5 * ped["pedicle_width_m"]
    for side, lat_k in zip(sides, lats, strict=True):
        side_name = "left" if side > 0 else "right"
        tip = _tip_point(shape, ap, lat_k, cc)
        tip_ijk = axes.ijk(tip)[0]
        tip_cell = axes.flat(tip_ijk)[0]
        where = (
            f"{side_name} cannula tip at (ap={ap:g}, lateral={lat_k:g}, cc={cc:g}) = "
            f"{np.round((tip + center) / MM_M, 2).tolist()} mm (patient frame, level {bone.level})"
        )
        if (
            np.any(np.abs(tip - axes.centers(np.array([tip_cell]))[0]) > 0.5 * h + 1e-12)
            or not porous_flat[tip_cell]
        ):
            raise GeometryError(f"{where} is not in the porous cancellous region (cortex, canal, or outside)")
        if approach == "transpedicular":
            x_b = side * x_ped
        else:
            x_b = side * min(x_ped + 0.5 * ped["pedicle_width_m"] + EXTRAPEDICULAR_OFFSET_M, 0.9 * shape.a)
        base = np.array(
            [x_b, float(shape.posterior_y(x_b)), shape.half_height - 0.5 * ped["pedicle_height_m"]]
        )
        shaft = tip - base
        length = float(np.linalg.norm(shaft))
        u = shaft / length
        s = np.arange(h, length, 0.5 * h)
        pts = base + s[:, None] * u
        outside = ~shape.inside(pts)
        if np.any(outside):
            first = pts[np.argmax(outside)]
            raise GeometryError(
                f"{where}: the shaft from the {side_name} {approach} entry leaves the vertebral body at "
                f"{np.round((first + center) / MM_M, 2).tolist()} mm (spinal canal or cortex in the way)"
            )
        # The cell that contains the open tip: kept clear of the shaft; the flow enters the ball of
        # cells around it once the shaft is carved (below; sim.physics.well_index).
        tip_cells = np.array([tip_cell], dtype=np.int64)
        # Path: body cells within the outer radius of the shaft, from the entry to TIP_CLEAR_RADII
        # outer radii behind the tip: the well model treats the tip as a source into the space
        # around it, and a shaft carved up to the tip would make that near field depend on how the
        # grid cuts the shaft (cells of 2 mm vs a 3 mm cannula).
        clear = TIP_CLEAR_RADII * r_out
        flat, ctr = _box_cells(axes, np.minimum(base, tip) - r_out - h, np.maximum(base, tip) + r_out + h)
        dist, s_ax = _segment_distance(ctr, base - u * h, tip)
        on_path = (dist <= r_out) & (s_ax <= length + h - clear) & (s_ax >= 0.0)
        on_path &= body_flat[flat]
        path = np.setdiff1d(flat[on_path], tip_cells)
        chain = _voxel_chain(axes, base, tip - u * clear) if length > clear else np.empty(0, np.int64)
        path = np.setdiff1d(np.union1d(path, chain[body_flat[chain]]), tip_cells)
        medial = float(np.degrees(np.arctan2(-side * u[0], -u[1])))
        caudal = float(np.degrees(np.arctan2(-u[2], np.hypot(u[0], u[1]))))
        entry = base - u * ped["pedicle_axis_length_m"]
        dev = ped["pedicle_axis_length_m"] * abs(
            np.tan(np.radians(medial)) - np.tan(ped["pedicle_transverse_angle_rad"])
        )
        info.append(
            {
                "side": side_name,
                "approach": approach,
                "medial_angle_deg": medial,
                "caudal_angle_deg": caudal,
                "pedicle_transverse_angle_deg": float(np.degrees(ped["pedicle_transverse_angle_rad"])),
                "pedicle_breach_m": float(max(0.0, dev + r_out - 0.5 * ped["pedicle_width_m"]))
                if approach == "transpedicular"
                else 0.0,
                "shaft_in_body_m": length,
                "n_path_cells": int(path.size),
            }
        )
        tips.append(tip + center)
        tips_rel.append(tip)
        entries.append(entry + center)
        bases.append(base + center)
        tip_sets.append(tip_cells)
        path_sets.append(path)

    path_cells = np.setdiff1d(np.unique(np.concatenate(path_sets)), np.concatenate(tip_sets)).astype(np.int64)

    # Carve the shaft out of the porous region.
    porous_flat[path_cells] = False
    bone.porosity.reshape(-1)[path_cells] = 0.0
    for c in range(3):
        bone.permeability[c].reshape(-1)[path_cells] = 0.0
    if bone.channel is not None:
        bone.channel.reshape(-1)[path_cells] = False
    if bone.cleft is not None:
        bone.cleft.reshape(-1)[path_cells] = False
    for ex in bone.exits:
        kept = ex.cells[porous_flat[ex.cells]]
        if kept.size == 0:
            raise GeometryError(f"needle shaft blocks every cell of venous exit {ex.name!r} ({bone.level})")
        ex.cells = kept
    removed = _keep_drained_components(bone, extra_cells=None)
    if not np.all(porous_flat[np.concatenate(tip_sets)]):
        raise GeometryError(
            f"needle tip cells of level {bone.level} are cut off from every venous exit by the cannula shaft"
        )
    # Each tip's flow enters the porous cells the ball of the kernel radius covers, in proportion to
    # the pore volume inside the ball (a uniformly filled bolus; sim.physics.well_index, ball kernel;
    # cut cells by their covered share, sim.physics.kernel_cover).
    rho = tip_kernel_radius(h, r_in)
    porosity_flat = bone.porosity.reshape(-1)
    all_cells, all_w, owner = [], [], []
    for j, tip in enumerate(tips_rel):
        flat, ctr = _box_cells(axes, tip - rho - h, tip + rho + h)
        cover = ball_cover(ctr, h, tip, rho)
        keep = (cover > 0.0) & porous_flat[flat]
        ball, vol = flat[keep], porosity_flat[flat[keep]] * cover[keep]
        all_cells.append(ball)
        all_w.append(vol / (vol.sum() * len(tips_rel)))
        owner.append(np.full(ball.size, j, dtype=np.int64))
        info[j]["n_tip_cells"] = int(ball.size)
        info[j]["tip_kernel_radius_m"] = rho
    cat = np.concatenate(all_cells)
    tip_cells, first, inv = np.unique(cat, return_index=True, return_inverse=True)
    tip_weights = np.bincount(inv, weights=np.concatenate(all_w))
    tip_weights /= tip_weights.sum()
    tip_cannula = np.concatenate(owner)[first]  # a cell in two balls belongs to the first cannula

    return Needle(
        tip_cells=tip_cells.astype(np.int64),
        tip_weights=tip_weights.astype(np.float64),
        tip_positions_m=np.array(tips),
        tip_radius_m=float(r_in),
        tip_kernel_radius_m=float(rho),
        tip_cannula=tip_cannula.astype(np.int64),
        entry_positions_m=np.array(entries),
        path_cells=path_cells,
        inner_diameter_m=float(cannula["inner_diameter_m"]),
        length_m=float(needle.cannula_length_m),
        meta={
            "gauge": cannula["gauge"],
            "outer_diameter_m": float(cannula["outer_diameter_m"]),
            "pedicle_base_positions_m": np.array(bases),
            "cannulas": info,
            "isolated_porous_cells_removed": removed,
            "sources": cannula["sources"],
        },
    )
