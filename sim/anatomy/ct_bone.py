"""The treated vertebral body from a CT and its label map, as the same BoneGrid the parametric body gives.

Steps (all in the patient frame, DICOM LPS metres; :mod:`sim.anatomy.ct_image` reads the files)

1. Working grid. The label map and the CT are sampled on an axis-aligned grid of the patient frame
   whose spacing is the CT's finest voxel edge and whose nodes are the vertebra's own voxel centres
   when the scan is axis-aligned (labels by nearest voxel, HU trilinear). Flipping or permuting the
   file's axes (with its affine) therefore gives the same working grid, bit for bit.
2. One bone. The vertebra label must be one connected piece (26-connectivity); pieces smaller than
   ``MINOR_COMPONENT_FRACTION`` of it (segmentation specks) are dropped, larger ones are an error.
3. Body versus posterior elements. In every axial slice the vertebra mask is opened (eroded, then
   dilated) with a disc of radius ``OPENING_PEDICLE_FRACTION`` x the level's tabulated pedicle
   width: the pedicles, laminae and processes are narrower than that disc and vanish, the body
   (30-50 mm across) keeps its section. The largest face-connected piece left is the body; its
   interior holes are filled. Opening slice by slice leaves the endplate rims square.
4. Cortex and endplates. The cancellous region is the body minus a shell: in-plane distance to the
   outside above the level's cortical thickness and axial distance above its endplate thickness
   (distances between voxel centres, plus half a voxel to the surface between them). Partial volume:
   the HU of cancellous voxels within 1.5 voxels of the shell are replaced by those of the nearest
   deeper voxel, so a bright cortex does not leak into the marrow's density.
5. Density. Porosity from Hounsfield units (:func:`porosity_from_hu`), clipped to the parametric
   model's 0.5 .. 0.99; permeability from it by the scenario's permeability law (by default
   a network of trabecular rods normalised to ``permeability_ref_m2`` at ``porosity_mean``,
   :mod:`sim.physics.permeability`).
6. Shape for placement. A kidney section (:class:`~sim.physics.bone.BodyShape`) is fitted to the
   body: width from its lateral extent, height from its axial extent, the anterior wall from its
   anterior extent, and the depth so that the shape's section area equals the body's mean
   mid-height section area (concavity fractions from the morphometry table). The body's centre
   (centre of the fitted shape) is put at (0, 0, z_center) of its level, the origin convention
   of the parametric model. The foramina, the intraosseous veins, the needle's tip fractions and
   the fracture cleft are placed on that shape by the parametric rules
   (:func:`sim.physics.bone.vein_tree`), so the veins start from the same anatomical landmarks
   relative to the patient's own body.
7. Simulation grid. The grid is the parametric one for the fitted shape; a cell is porous when the
   cancellous indicator interpolated at its centre is at least 1/2 (the parametric rule "centre in
   the inner shape"), its porosity the mean over the cancellous voxels in the cell;
   :func:`sim.physics.bone.assemble_body` does the rest, as for the parametric body.

Assumptions and costs
    * The vertebra's axes are taken as the patient frame's (no tilt correction for lordosis or
      scoliosis): a body tilted by theta shifts the fitted landmarks by about half its height x theta.
    * No calibration phantom: the defaults BMD = 1.0 mg/cm^3 per HU (intercept 0) are [U] (scanner,
      kV and reconstruction kernel dependent; internal or asynchronous calibration against phantom
      QCT deviates by about 8 % RMS, Kaesmacher et al. 2017, J Comput Assist Tomogr 41:217). 8 % in
      BMD is 8 % in BV/TV: at BV/TV = 0.10, phi = 0.900 +- 0.008 and, through the default
      rod-network law (d ln k / d phi = 17.5 there; Kozeny-Carman's 3/phi + 2/(1 - phi) = 23), the
      permeability +- 14 % (+- 19 % with Kozeny-Carman). Contrast-enhanced scans
      raise HU and bias porosity low. With a phantom, give its regression as
      ``bmd_slope_mg_per_cm3_per_hu`` and ``bmd_intercept_mg_per_cm3``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage, optimize

from sim.anatomy.ct_image import Volume, load_ct_pair
from sim.core.errors import ConfigError, GeometryError
from sim.core.grid import BoneGrid, MaskOutline
from sim.core.parameters import CtAnatomyParams, PatientParams
from sim.core.units import MM_M
from sim.physics.bone import (
    POROSITY_CLIP,
    BodyShape,
    _Axes,
    _symmetric_axis,
    assemble_body,
    load_vertebra,
)
from sim.physics.permeability import PermeabilityLaw, default_permeability

# BV/TV = BMD / TMD with TMD = 1200 mg HA/cm^3, the fully mineralised trabecular tissue assumed by
# the standard HR-pQCT density-derived BV/TV (Laib & Ruegsegger 1999, Comput Med Imaging Graph 23:69) [S~]
TISSUE_MINERAL_DENSITY_MG_PER_CM3 = 1200.0
OPENING_PEDICLE_FRACTION = 0.6  # [U] disc radius / pedicle width: removes pedicles up to 1.2x the table
MINOR_COMPONENT_FRACTION = 0.01  # [U] label pieces below this share of the vertebra are specks
MAX_VOXEL_TO_GRID = 2.0  # [U] largest voxel edge / grid spacing: finer grids would invent the shape
_FACE6 = ndimage.generate_binary_structure(3, 1)
_FULL26 = ndimage.generate_binary_structure(3, 3)


def porosity_from_hu(hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Marrow porosity from CT attenuation: phi = 1 - BV/TV, BV/TV = (slope HU + intercept) / TMD.

    BMD (mg HA/cm^3) = slope x HU + intercept is the scanner calibration (phantom regression, or the
    phantomless default 1.0, 0 [U]); BV/TV = BMD / 1200 mg/cm^3 (fully mineralised tissue,
    Laib & Ruegsegger 1999 [S~]). Limiting cases (tested): HU such that BMD = 0 (marrow, no
    mineral) gives phi = 1; BMD = TMD gives phi = 0. Not clipped (the caller clips).
    """
    bmd = slope * np.asarray(hu, dtype=np.float64) + intercept
    return 1.0 - bmd / TISSUE_MINERAL_DENSITY_MG_PER_CM3


def hu_from_porosity(phi: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Inverse of :func:`porosity_from_hu` (for synthetic scans)."""
    return ((1.0 - np.asarray(phi, dtype=np.float64)) * TISSUE_MINERAL_DENSITY_MG_PER_CM3 - intercept) / slope


# ----------------------------------------------------------------------------- working grid


def working_grid(labels: Volume, ct: Volume, vertebra_label: int) -> dict[str, Any]:
    """Labels (nearest) and HU (trilinear) on an axis-aligned patient-frame grid around the vertebra.

    The grid's spacing is the finest voxel edge; its first node is the lowest corner of the vertebra
    voxels' centres (minus the crop margin), so an axis-aligned scan lands on its own voxel centres.
    """
    w = float(np.min(labels.spacing_m))
    idx = np.argwhere(labels.data == vertebra_label)
    pts = labels.to_world(idx)
    lo_v, hi_v = pts.min(axis=0), pts.max(axis=0)
    corners = labels.to_world(
        np.array([[i, j, k] for i in (0, labels.data.shape[0] - 1) for j in (0, labels.data.shape[1] - 1)
                  for k in (0, labels.data.shape[2] - 1)])
    )  # fmt: skip
    box_lo, box_hi = corners.min(axis=0), corners.max(axis=0)
    n_lo = np.floor((lo_v - box_lo) / w + 1e-6).astype(int)
    n_hi = np.floor((box_hi - hi_v) / w + 1e-6).astype(int)
    origin = lo_v - n_lo * w
    shape = tuple(int(n) for n in (n_lo + n_hi + np.rint((hi_v - lo_v) / w).astype(int) + 1))
    axes = [origin[d] + w * np.arange(shape[d]) for d in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    vox = labels.to_voxel(grid).T
    near = np.rint(vox).astype(np.int64)
    inside = np.all((near >= 0) & (near < np.array(labels.data.shape)[:, None]), axis=0)
    lab = np.zeros(grid.shape[0], dtype=labels.data.dtype)
    lab[inside] = labels.data[tuple(near[:, inside])]
    hu = ndimage.map_coordinates(ct.data, vox, order=1, mode="nearest")
    return {
        "origin_m": origin,
        "spacing_m": w,
        "labels": lab.reshape(shape),
        "hu": hu.reshape(shape).astype(np.float32),
    }


# ----------------------------------------------------------------------------- segmentation


def single_bone(mask: np.ndarray, path: str, label: int) -> tuple[np.ndarray, int]:
    """The vertebra as one piece: drops specks, refuses a mask of several sizeable pieces."""
    lab, n = ndimage.label(mask, structure=_FULL26)
    if n <= 1:
        return mask, 0
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    big = sizes[order] >= MINOR_COMPONENT_FRACTION * sizes.sum()
    if big.sum() > 1:
        shown = ", ".join(str(int(s)) for s in sizes[order][big][:5])
        raise ConfigError(
            f"{path}: label {label} has {int(big.sum())} separate pieces of {shown} voxels (one vertebra "
            "expected; check the label value or the segmentation)"
        )
    return lab == order[0] + 1, int(n - 1)


def _disc(radius_vox: float) -> np.ndarray:
    r = int(np.floor(radius_vox))
    x, y = np.mgrid[-r : r + 1, -r : r + 1]
    return (x**2 + y**2 <= radius_vox**2)[:, :, None]


def vertebral_body(vertebra: np.ndarray, w: float, pedicle_width_m: float) -> np.ndarray:
    """The body of a vertebra mask (axial-slice opening, largest piece, holes filled)."""
    radius = OPENING_PEDICLE_FRACTION * pedicle_width_m / w
    padded = np.pad(vertebra, int(np.ceil(radius)) + 1)
    opened = ndimage.binary_opening(padded, structure=_disc(radius))
    p = int(np.ceil(radius)) + 1
    opened = opened[p:-p, p:-p, p:-p]
    lab, n = ndimage.label(opened, structure=_FACE6)
    if n == 0:
        return opened
    sizes = np.bincount(lab.ravel())[1:]
    return ndimage.binary_fill_holes(lab == int(np.argmax(sizes)) + 1)


def cancellous_region(body: np.ndarray, w: float, t_cort: float, t_end: float) -> np.ndarray:
    """Body voxels farther than the cortex in-plane and the endplate axially from the outside."""
    big = 1.0e3 * w
    padded = np.pad(body, 1)
    d_xy = ndimage.distance_transform_edt(padded, sampling=(w, w, big))[1:-1, 1:-1, 1:-1]
    d_z = ndimage.distance_transform_edt(padded, sampling=(big, big, w))[1:-1, 1:-1, 1:-1]
    return body & (d_xy > t_cort + 0.5 * w) & (d_z > t_end + 0.5 * w)


def guarded_porosity(hu: np.ndarray, cancellous: np.ndarray, w: float, calib: CtAnatomyParams) -> np.ndarray:
    """Porosity of the cancellous voxels, the outer 1.5-voxel layer taking its nearest deeper value."""
    phi = porosity_from_hu(hu, calib.bmd_slope_mg_per_cm3_per_hu, calib.bmd_intercept_mg_per_cm3)
    depth = ndimage.distance_transform_edt(np.pad(cancellous, 1))[1:-1, 1:-1, 1:-1]
    deep = cancellous & (depth > 1.5)
    if deep.any():
        _, ind = ndimage.distance_transform_edt(~deep, return_indices=True)
        phi = phi[tuple(ind)]
    out = np.zeros_like(phi)
    out[cancellous] = np.clip(phi[cancellous], *POROSITY_CLIP)
    del w
    return out


def fit_shape(
    body: np.ndarray, w: float, depth_fraction: float, radius_fraction: float
) -> tuple[BodyShape, np.ndarray]:
    """Kidney section fitted to a body mask; returns the shape and its centre in working-grid metres.

    Width and the anterior wall from the extents (voxel edges), height and mid-plane from the mean
    length and centre of the central columns (middle half of width and depth); the concavity from the
    morphometry table's fractions; the depth so that the shape's section area equals the body's
    mean section area over the middle half of its height (an area is a sum over many voxels, so
    it is far less sensitive to the voxel grid than the posterior extent or the concavity).
    """
    idx = np.argwhere(body)
    lo = idx.min(axis=0) * w - 0.5 * w
    hi = idx.max(axis=0) * w + 0.5 * w
    width = hi[0] - lo[0]
    # height and mid-plane from the central columns (middle half of width and depth): a column's voxel
    # count is its length / w without the half-voxel error of an extent
    i0, i1 = idx[:, 0].min(), idx[:, 0].max()
    j0, j1 = idx[:, 1].min(), idx[:, 1].max()
    core = body[
        int(i0 + 0.25 * (i1 - i0)) : int(i0 + 0.75 * (i1 - i0)) + 1,
        int(j0 + 0.25 * (j1 - j0)) : int(j0 + 0.75 * (j1 - j0)) + 1,
    ]
    counts = core.sum(axis=2)
    cols = counts > 0
    kk = np.arange(body.shape[2]) * w
    height = float(counts[cols].mean()) * w
    z_mid = float((core * kk).sum(axis=2)[cols].sum() / counts[cols].sum())
    k0, k1 = idx[:, 2].min(), idx[:, 2].max()
    mid = slice(int(k0 + 0.25 * (k1 - k0)), int(k0 + 0.75 * (k1 - k0)) + 1)
    area = float(body[:, :, mid].sum(axis=(0, 1)).mean()) * w * w

    def shape_of(depth: float) -> BodyShape:
        return BodyShape.from_dims(width, depth, height, depth_fraction, radius_fraction)

    span = hi[1] - lo[1]
    d_lo, d_hi = 0.5 * span, 2.0 * span
    if not shape_of(d_lo).area() < area < shape_of(d_hi).area():
        raise GeometryError(
            f"the segmented vertebral body ({1e3 * width:.1f} x {1e3 * span:.1f} x {1e3 * height:.1f} mm, "
            f"section {1e6 * area:.0f} mm^2) has no kidney-shaped fit"
        )
    depth = float(optimize.brentq(lambda d: shape_of(d).area() - area, d_lo, d_hi, xtol=1e-8))
    center = np.array([0.5 * (lo[0] + hi[0]), lo[1] + 0.5 * depth, z_mid])
    return shape_of(depth), center


# ----------------------------------------------------------------------------- IVC and lungs


def vessel_anatomy(
    src: CtAnatomyParams,
    extra: dict[str, int],
    counts: dict[int, int],
    voxels: dict[str, np.ndarray],
    labels: Volume,
) -> dict[str, Any]:
    """IVC calibre and lung-lobe volumes from their labels (those the scenario names).

    IVC: equivalent diameter d = 2 sqrt(A / pi) of its mean cross-section A = V / L, V the label's
    volume and L its cranio-caudal extent (a cylinder of the same volume and length; limiting case:
    a straight circular tube gives its diameter). Lobes: the label volumes, which set the lobar
    perfusion shares (:func:`sim.physics.pulmonary_tree.lobe_fractions_from_volumes`).
    A named label absent from the map is an error.
    """
    voxel_volume = float(abs(np.linalg.det(labels.affine_m[:3, :3])))
    out: dict[str, Any] = {}
    lobes: dict[str, float] = {}
    for name, value in extra.items():
        if counts.get(int(value), 0) == 0:
            field = "ivc_label" if name == "IVC" else f"lung_lobe_labels.{name}"
            raise ConfigError(
                f"{src.labels_path}: label value {value} (patient.anatomy.{field}) is not in the label map"
            )
        volume = counts[int(value)] * voxel_volume
        if name == "IVC":
            z = voxels[str(int(value))][:, 2]
            dz = float(np.abs(labels.affine_m[2, :3]).max())
            length = float(z.max() - z.min()) + dz
            out["ivc_diameter_m"] = float(2.0 * np.sqrt(volume / length / np.pi))
        else:
            lobes[name] = volume
    if lobes:
        out["lobe_volumes_m3"] = lobes
    return out


# ----------------------------------------------------------------------------- build


def _sample(field: np.ndarray, origin: np.ndarray, w: float, points: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(field, ((points - origin) / w).T, order=1, mode="constant", cval=0.0)


def build_ct_vertebral_body(
    patient: PatientParams, spacing_m: float, permeability: PermeabilityLaw | None = None
) -> BoneGrid:
    """The patient's vertebral body from ``patient.anatomy`` (a CT source), on a grid of ``spacing_m``.

    Same contract as :func:`sim.physics.bone.build_vertebral_body`; see the module docstring for
    the method. ``bone.meta["ct"]`` records the files, the frame shift and the segmentation sizes;
    ``bone.meta["ct_view"]`` the HU and labels on the working grid (for ParaView).
    """
    src = patient.anatomy
    if not isinstance(src, CtAnatomyParams):
        raise ConfigError("patient.anatomy: a CT source is required here")
    h = float(spacing_m)
    dims = dict(load_vertebra(patient.level))
    extra = {
        **({"IVC": int(src.ivc_label)} if src.ivc_label is not None else {}),
        **(src.lung_lobe_labels or {}),
    }
    ct, labels, counts, voxels = load_ct_pair(
        src.ct_path, src.labels_path, int(src.vertebra_label), tuple(int(v) for v in extra.values())
    )
    vessels = vessel_anatomy(src, extra, counts, voxels, labels)
    coarse = float(np.max(labels.spacing_m))
    if coarse > MAX_VOXEL_TO_GRID * h:
        raise ConfigError(
            f"{src.ct_path}: voxels of {np.round(labels.spacing_m / MM_M, 3).tolist()} mm are too coarse for "
            f"grid.spacing_mm = {h / MM_M:g} (largest voxel edge at most {MAX_VOXEL_TO_GRID:g} x the grid "
            f"spacing: use grid.spacing_mm >= {coarse / MAX_VOXEL_TO_GRID / MM_M:.3g} or a finer scan)"
        )
    wg = working_grid(labels, ct, int(src.vertebra_label))
    w = wg["spacing_m"]
    vertebra, specks = single_bone(
        wg["labels"] == src.vertebra_label, src.labels_path, int(src.vertebra_label)
    )
    body = vertebral_body(vertebra, w, dims["pedicle_width_m"])
    t_cort, t_end = dims["cortical_thickness_m"], dims["endplate_thickness_m"]
    canc = cancellous_region(body, w, t_cort, t_end)
    if canc.sum() * w**3 < 1.0e-6:
        raise ConfigError(
            f"{src.labels_path}: label {src.vertebra_label} has no vertebral body of cancellous bone "
            f"(body {body.sum() * w**3 / MM_M**3:.0f} mm^3 after removing the posterior elements)"
        )
    phi_w = guarded_porosity(wg["hu"], canc, w, src)
    outer, c_work = fit_shape(body, w, dims["concavity_depth_fraction"], dims["concavity_radius_fraction"])
    inner = outer.inset(t_cort, t_end)

    axes = _Axes(
        _symmetric_axis(outer.a, h, 2),
        _symmetric_axis(outer.b, h, 2),
        _symmetric_axis(outer.half_height, h, 2, fit_half=inner.half_height),
        h,
    )
    X, Y, Z = np.meshgrid(axes.x, axes.y, axes.z, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=-1) + c_work  # working-grid metres
    del X, Y, Z
    origin_w = np.zeros(3)
    porous = (_sample(canc.astype(np.float32), origin_w, w, pts) >= 0.5).reshape(axes.shape)
    outer_mask = (_sample(body.astype(np.float32), origin_w, w, pts) >= 0.5).reshape(axes.shape)
    body_grid = outer_mask | ndimage.binary_dilation(porous, structure=_FACE6)
    size = max(1, int(round(h / w)))
    phi_sum = ndimage.uniform_filter(phi_w, size=size, mode="constant")
    canc_sum = ndimage.uniform_filter(canc.astype(np.float64), size=size, mode="constant")
    num = _sample(phi_sum, origin_w, w, pts).reshape(axes.shape)
    den = _sample(canc_sum, origin_w, w, pts).reshape(axes.shape)
    phi = np.zeros(axes.shape)
    ok = porous & (den > 1e-9)
    phi[ok] = np.clip(num[ok] / den[ok], *POROSITY_CLIP)
    phi[porous & ~ok] = float(np.mean(phi_w[canc]))

    center = np.array([0.0, 0.0, dims["z_center_m"]])
    # patient = world - world_centre + centre; the working grid's origin is at world wg["origin_m"]
    world_center = wg["origin_m"] + c_work
    shift = center - world_center
    law = permeability or default_permeability(patient)
    bone = assemble_body(
        patient,
        dims,
        axes,
        outer,
        inner,
        center,
        porous,
        body_grid,
        phi,
        law,
        {
            "width_m": 2.0 * outer.a,
            "depth_m": 2.0 * outer.b,
            "height_m": 2.0 * outer.half_height,
            "porosity_model": (
                f"CT: phi = 1 - (slope HU + intercept) / {TISSUE_MINERAL_DENSITY_MG_PER_CM3:g} mg/cm^3, "
                f"slope {src.bmd_slope_mg_per_cm3_per_hu:g}, intercept {src.bmd_intercept_mg_per_cm3:g}, "
                "clipped to 0.5 .. 0.99, averaged over each cell"
            ),
            "shell_rule": "porous: CT cancellous indicator >= 1/2 at the centre; body: CT body + 1-cell "
            "dilation",
            "anatomy": "ct",
            "ct": {
                "ct_path": src.ct_path,
                "labels_path": src.labels_path,
                "vertebra_label": int(src.vertebra_label),
                "voxel_spacing_m": labels.spacing_m.tolist(),
                "working_spacing_m": w,
                "world_to_patient_shift_m": shift.tolist(),
                "specks_dropped": specks,
                "vertebra_volume_m3": float(vertebra.sum() * w**3),
                "body_volume_m3": float(body.sum() * w**3),
                "cancellous_volume_m3_voxels": float(canc.sum() * w**3),
                "mean_porosity_voxels": float(np.mean(phi_w[canc])),
                **vessels,
            },
            "ct_view": {
                "origin_m": wg["origin_m"] + shift,
                "spacing_m": w,
                "hu": wg["hu"],
                "labels": wg["labels"].astype(np.int32),
                "body": body,
                "cancellous": canc,
            },
        },
        outline=MaskOutline.from_mask(body, wg["origin_m"] + shift, w),
    )
    for ex in bone.exits:
        if ex.cells.size == 0:
            raise GeometryError(
                f"{src.labels_path}: no cancellous bone around the {ex.name} foramen placed on the segmented "
                f"body (grid.spacing_mm = {h / MM_M:g})"
            )
    return bone
