"""Synthetic fluoroscopy of cement and the leak detector that drives the stop policy.

Images. A view projects cement thickness (metres of cement along the ray) on a detector plane
in the patient frame (parallel projection, no magnification): ``lateral`` projects along x onto
(y, z), ``ap`` along y onto (x, z); the field is centred on the body's continuous outline (its
``center_m``, where the C-arm is centred), so the pixel raster is the same on every grid. Two sources add up:
- bone: cement fraction * porosity of each cell times the cell size, summed along the ray, on the
  BoneGrid raster, sampled at the detector pixels (nearest cell);
- vein columns: each column is a cylinder along its edge polyline from the entry end to the front.
  The centreline is sampled every ~pixel/2; each sample deposits its volume (A ds) on the pixels
  within one radius of its projected axis, weighted by the chord length 2 sqrt(r^2 - s^2) of a
  cylinder seen side-on (times a one-pixel hat along the axis), normalised so the deposited
  volume is exact.

Fragments in transit. A piece torn off a column is cement in a vein too: it attenuates the beam
wherever it is. :mod:`sim.physics.fragment_tracks` moves each fragment shed before the leak is seen
along the veins (with the blood, a few cm/s in the plexus, tens of cm/s in the segmental and azygos
veins) and every frame draws it where it is at the frame's time, as a cylinder of its own diameter
and length on its vein, until it reaches the heart (outside the field; off-detector volume is
dropped in any case); a fragment at rest for good (lodged, or in a vein without flow) is drawn once
into a kept image. Frames fall on the ends of the venous steps while a leak could be seen; a frame
due inside a step without a push is taken before the step's shedding, so it sees the fragments
born by then. Limiting cases (tested): no fragments, the column image unchanged; a fragment at rest
is seen with its whole volume in every frame; columns and fragments add.

Detection. A leak is "seen" when the extra-vertebral cement (vein columns and fragments in transit)
of any view has a visible volume above ``visibility_threshold_m3``: the sum over pixels of thickness *
pixel area, counting only pixels whose extra-vertebral thickness is at least ``min_thickness_m`` and (with a
bone grid) only the share of each pixel's area outside the vertebral body's silhouette, where the body
and its cement hide small leaks. A detector pixel integrates the beam over its area, so a pixel the
silhouette's edge crosses shows the cement over its uncovered share (:func:`body_hidden_share`, 8 x 8
sub-samples per pixel); a rule that hid or showed the whole pixel by its centre made the visible volume
of a vein along the body's projected edge jump with where the pixel raster falls (session 32's cohort
patient 1: 1.8 to 3.8 mm^3 over tenth-pixel shifts of the C-arm). The silhouette comes from the body's
continuous outline, not its cells, so it is the same on every grid (:func:`body_silhouette`). Images are
taken every ``frame_interval_s``; the detection time is the first frame above threshold; the operator's
``reaction_delay_s`` belongs to the stop policy (:class:`sim.physics.injection_control.StopPolicy`).

Default threshold (config: 5 mm^3 above 0.5 mm thickness). A fluoroscopically visible leak needs
a radiopaque column of roughly a vein's diameter over a few millimetres: 5 mm^3 is ~1.6 mm of a
2 mm vein. Thin or overlapping leaks stay invisible: on lateral radiographs Yeom et al. 2003
(J Bone Joint Surg Br 85:83) missed or underestimated 93 % of basivertebral (type B) and 86 % of
segmental (type S) leaks that CT showed, so the threshold is a tunable modelling estimate [U],
not a measured detection limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sim.core.errors import ConfigError
from sim.core.geometry_data import load_geometry_yaml
from sim.core.grid import BoneGrid
from sim.core.parameters import FluoroscopyParams
from sim.physics.vein_columns import CementColumns

if TYPE_CHECKING:
    from sim.physics.fragment_tracks import FragmentTracks

VIEW_AXES = {"lateral": (0, (1, 2)), "ap": (1, (0, 2))}  # view -> (ray axis, image axes)


@dataclass(frozen=True)
class Detector:
    """Pixel grid of one view: image axes (a, b) in patient coordinates, pixel (i, j) centred at
    origin + (i + 1/2, j + 1/2) * pixel_size."""

    view: str
    origin_m: np.ndarray  # (2,) lower corner in the image axes
    shape: tuple[int, int]
    pixel_size_m: float

    @property
    def axes(self) -> tuple[int, int]:
        return VIEW_AXES[self.view][1]

    def pixel_centers(self) -> tuple[np.ndarray, np.ndarray]:
        h = self.pixel_size_m
        return (
            self.origin_m[0] + (np.arange(self.shape[0]) + 0.5) * h,
            self.origin_m[1] + (np.arange(self.shape[1]) + 0.5) * h,
        )


def make_detector(view: str, center_m: np.ndarray, half_extent_m: float, pixel_size_m: float) -> Detector:
    """Square field of view of side 2*half_extent centred on ``center_m`` (3-vector)."""
    if view not in VIEW_AXES:
        raise ConfigError(f"fluoroscopy view '{view}' unknown (known: {', '.join(VIEW_AXES)})")
    if not pixel_size_m > 0:
        raise ConfigError(f"fluoroscopy.pixel_size = {pixel_size_m}: must be > 0")
    a, b = VIEW_AXES[view][1]
    n = int(np.ceil(2.0 * half_extent_m / pixel_size_m))
    origin = np.array([center_m[a], center_m[b]]) - 0.5 * n * pixel_size_m
    return Detector(view=view, origin_m=origin, shape=(n, n), pixel_size_m=float(pixel_size_m))


def project_bone(
    det: Detector, bone: BoneGrid, cement_fraction: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(cement thickness image, body-silhouette mask) of the vertebral body on ``det``."""
    ray = VIEW_AXES[det.view][0]
    if cement_fraction is None:
        thick = np.zeros([s for k, s in enumerate(bone.shape) if k != ray])
    else:
        thick = (np.asarray(cement_fraction) * bone.porosity).sum(axis=ray) * bone.spacing_m
    return _on_detector(det, bone, thick, 0.0), body_silhouette(det, bone)


def body_silhouette(det: Detector, bone: BoneGrid) -> np.ndarray:
    """Pixels of ``det`` whose ray crosses the vertebral body (where the body hides small leaks).

    From the body's continuous outline (``bone.outline``: the parametric shape, or the CT
    segmentation on its working grid), so the same image at any grid spacing; the grid's body cells
    (with their one-cell shell) would put the edge up to about a cell outwards (0.7 mm at 1 mm,
    2.2 mm at 2 mm) and hide the first millimetres of a vein leaving the body. A grid without an
    outline (built by hand) falls back to its body cells.
    """
    return _silhouette_at(det.view, bone, *det.pixel_centers())


def _silhouette_at(view: str, bone: BoneGrid, u_m: np.ndarray, v_m: np.ndarray) -> np.ndarray:
    """Bool (len(u), len(v)): does the ray of ``view`` through image point (u, v) cross the body?"""
    ray = VIEW_AXES[view][0]
    if bone.outline is not None:
        return np.asarray(bone.outline.silhouette(ray, u_m, v_m), dtype=bool)
    return _sample_plane(bone, VIEW_AXES[view][1], bone.body.any(axis=ray), u_m, v_m, False)


HIDDEN_SUBSAMPLES = 8  # per pixel edge: a pixel's hidden share is read on 8 x 8 points (to 1/64)
_HIDDEN_BLOCK = 2**22  # sub-samples evaluated at once (bounds the memory on fine detectors)


def body_hidden_share(det: Detector, bone: BoneGrid, subsamples: int = HIDDEN_SUBSAMPLES) -> np.ndarray:
    """Share (0-1) of each pixel's area that lies behind the body's silhouette.

    The silhouette (:func:`body_silhouette`) evaluated at ``subsamples`` x ``subsamples`` points per
    pixel (the centres of a regular sub-division), averaged per pixel: the midpoint rule for the
    covered area, exact for a pixel wholly inside or outside and within 1/subsamples of the pixel for a
    straight edge across it. Limiting cases (tested): ``subsamples=1`` gives the centre rule; an edge
    through a pixel's centre parallel to its side gives 1/2; the hidden area summed over a band
    across the edge does not depend on where the raster falls (to one sub-row). Evaluated only over the
    pixels the body's box can reach (:func:`_body_window`; the rest of the image holds 0), in blocks of
    pixel rows (bounded memory on fine detectors), at coordinates computed once for the whole detector,
    so the result depends on neither the window nor the block size.
    """
    s = int(subsamples)
    if s < 1:
        raise ValueError(f"subsamples = {subsamples}: must be >= 1")
    n0, n1 = det.shape
    fine_h = det.pixel_size_m / s
    u = det.origin_m[0] + (np.arange(n0 * s) + 0.5) * fine_h
    v = det.origin_m[1] + (np.arange(n1 * s) + 0.5) * fine_h
    (i_lo, i_hi), (j_lo, j_hi) = _body_window(det, bone)
    share = np.zeros(det.shape)
    if i_lo >= i_hi or j_lo >= j_hi:
        return share
    v_win = v[j_lo * s : j_hi * s]
    rows = max(1, _HIDDEN_BLOCK // max(1, (j_hi - j_lo) * s * s))
    for i0 in range(i_lo, i_hi, rows):
        nb = min(rows, i_hi - i0)
        covered = _silhouette_at(det.view, bone, u[i0 * s : (i0 + nb) * s], v_win)
        share[i0 : i0 + nb, j_lo:j_hi] = covered.reshape(nb, s, j_hi - j_lo, s).sum(
            axis=(1, 3), dtype=np.int64
        ) / float(s * s)
    return share


def _body_window(det: Detector, bone: BoneGrid) -> tuple[tuple[int, int], tuple[int, int]]:
    """Pixel index ranges [lo, hi) per image axis that hold every pixel the body can cover: the box of
    the outline's ``bounds_m`` (or of the grid's cells) widened by one pixel. Outside it the silhouette
    is empty, so the window changes no value."""
    outline = bone.outline
    if outline is None:
        h = bone.spacing_m
        lo = np.asarray(bone.origin_m) - 0.5 * h
        hi = np.asarray(bone.origin_m) + (np.array(bone.body.shape) - 0.5) * h
    else:
        lo, hi = outline.bounds_m()
    out = []
    for k, ax in enumerate(det.axes):
        first = int(np.floor((lo[ax] - det.origin_m[k]) / det.pixel_size_m)) - 1
        last = int(np.ceil((hi[ax] - det.origin_m[k]) / det.pixel_size_m)) + 1
        out.append((max(0, first), min(det.shape[k], last)))
    return out[0], out[1]


def project_bone_mineral(det: Detector, bone: BoneGrid) -> np.ndarray:
    """Projected bone-mineral thickness (m) on ``det``: sum of (1 - porosity) h over body cells."""
    ray = VIEW_AXES[det.view][0]
    solid = np.where(bone.body, 1.0 - np.asarray(bone.porosity), 0.0).sum(axis=ray) * bone.spacing_m
    return _on_detector(det, bone, solid, 0.0)


def _on_detector(det: Detector, bone: BoneGrid, plane: np.ndarray, fill: float | bool) -> np.ndarray:
    """A projection of the bone grid (its two image axes) sampled at the detector pixels (nearest cell)."""
    return _sample_plane(bone, det.axes, plane, *det.pixel_centers(), fill)


def _sample_plane(
    bone: BoneGrid,
    axes: tuple[int, int],
    plane: np.ndarray,
    u_m: np.ndarray,
    v_m: np.ndarray,
    fill: float | bool,
) -> np.ndarray:
    """A projection of the bone grid onto patient axes ``axes`` sampled at the image points u x v (nearest
    cell; ``fill`` outside the grid)."""
    h = bone.spacing_m
    a, b = axes
    ia = np.rint((np.asarray(u_m) - bone.origin_m[a]) / h).astype(np.int64)
    ib = np.rint((np.asarray(v_m) - bone.origin_m[b]) / h).astype(np.int64)
    va = (ia >= 0) & (ia < plane.shape[0])
    vb = (ib >= 0) & (ib < plane.shape[1])
    img = np.full((len(ia), len(ib)), fill, dtype=plane.dtype)
    img[np.ix_(np.flatnonzero(va), np.flatnonzero(vb))] = plane[np.ix_(ia[va], ib[vb])]
    return img


def attenuation_coefficients() -> dict[str, float]:
    """Linear X-ray attenuation (1/m) of bone mineral and cement (geometries/imaging.yaml)."""
    data = load_geometry_yaml("imaging.yaml")["attenuation_per_m"]
    return {name: float(entry[0]) for name, entry in data.items()}


def column_samples(
    columns: CementColumns, max_step_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centreline samples of the vein columns: points (n, 3), radius, volume (n,), unit tangent (n, 3)."""
    net = columns.network
    lengths = columns.fill_length_m()
    pts, rad, vol, tan = [], [], [], []
    for e in np.flatnonzero((columns.fill_m3 > 0.0) & (columns.entry_end >= 0)):
        poly = net.polylines[e] if columns.entry_end[e] == 0 else net.polylines[e][::-1]
        seg_vec = np.diff(poly, axis=0)
        seg = np.linalg.norm(seg_vec, axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        length = float(lengths[e])
        n = max(int(np.ceil(length / max_step_m)), 1)
        s = (np.arange(n) + 0.5) * (length / n)
        pts.append(np.column_stack([np.interp(s, cum, poly[:, k]) for k in range(3)]))
        i_seg = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        tan.append(seg_vec[i_seg] / np.maximum(seg[i_seg], 1e-300)[:, None])
        rad.append(np.full(n, 0.5 * columns.col_diameter_m[e]))
        # the whole column volume (incl. any overfill beyond the edge end) is drawn
        vol.append(np.full(n, columns.fill_m3[e] / n))
    if not pts:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros((0, 3))
    return np.vstack(pts), np.concatenate(rad), np.concatenate(vol), np.vstack(tan)


def fragment_samples(
    network, edge: np.ndarray, from_u_m: np.ndarray, diameter_m: np.ndarray, length_m: np.ndarray,
    volume_m3: np.ndarray, max_step_m: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Centreline samples of fragments on their edges: points (n, 3), radius, volume, unit tangent.

    Fragment k lies on ``network.polylines[edge[k]]`` centred ``from_u_m[k]`` from the edge's u end,
    over its length (clipped to the edge); its volume is spread evenly over its samples.
    """
    pts, rad, vol, tan = [], [], [], []
    for k in range(len(edge)):
        poly = network.polylines[int(edge[k])]
        seg_vec = np.diff(poly, axis=0)
        seg = np.linalg.norm(seg_vec, axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        lo = float(np.clip(from_u_m[k] - 0.5 * length_m[k], 0.0, cum[-1]))
        hi = float(np.clip(from_u_m[k] + 0.5 * length_m[k], 0.0, cum[-1]))
        n = max(int(np.ceil((hi - lo) / max_step_m)), 1)
        s_k = lo + (np.arange(n) + 0.5) * ((hi - lo) / n)
        pts.append(np.column_stack([np.interp(s_k, cum, poly[:, j]) for j in range(3)]))
        i_seg = np.clip(np.searchsorted(cum, s_k, side="right") - 1, 0, len(seg) - 1)
        tan.append(seg_vec[i_seg] / np.maximum(seg[i_seg], 1e-300)[:, None])
        rad.append(np.full(n, 0.5 * float(diameter_m[k])))
        vol.append(np.full(n, float(volume_m3[k]) / n))
    if not pts:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros((0, 3))
    return np.vstack(pts), np.concatenate(rad), np.concatenate(vol), np.vstack(tan)


def project_points(
    det: Detector,
    pts: np.ndarray,
    radius: np.ndarray,
    volume: np.ndarray,
    tangent: np.ndarray | None = None,
) -> np.ndarray:
    """Thickness image of cylinder samples; volume-exact splats (volume off the detector is dropped).

    With the centreline ``tangent`` a sample is a short cylinder: weight = chord 2 sqrt(r^2 - s^2)
    across the projected axis (s the perpendicular distance) times a hat of one pixel along it, so
    a column seen side-on shows its diameter as peak thickness. Samples seen nearly end-on, or
    without tangent, use the disc footprint 2 sqrt(r^2 - |delta|^2).
    """
    img = np.zeros(det.shape)
    if pts.shape[0] == 0:
        return img
    h = det.pixel_size_m
    a, b = det.axes
    pa = (pts[:, a] - det.origin_m[0]) / h - 0.5  # continuous pixel coordinates
    pb = (pts[:, b] - det.origin_m[1]) / h - 0.5
    k = int(np.ceil(radius.max() / h)) + 1
    off = np.arange(-k, k + 1)
    ia = np.rint(pa).astype(np.int64)[:, None, None] + off[None, :, None]
    ib = np.rint(pb).astype(np.int64)[:, None, None] + off[None, None, :]
    da = (ia - pa[:, None, None]) * h
    db = (ib - pb[:, None, None]) * h
    r = radius[:, None, None]
    disc = 2.0 * np.sqrt(np.maximum(r**2 - (da**2 + db**2), 0.0))
    if tangent is None:
        w = disc
    else:
        ta, tb = tangent[:, a], tangent[:, b]
        tn = np.hypot(ta, tb)
        side = tn > 0.3  # axis visibly inclined to the ray
        ua = np.where(side, ta / np.maximum(tn, 1e-300), 0.0)[:, None, None]
        ub = np.where(side, tb / np.maximum(tn, 1e-300), 0.0)[:, None, None]
        s_par = da * ua + db * ub
        s_perp2 = da**2 + db**2 - s_par**2
        chord = 2.0 * np.sqrt(np.maximum(r**2 - s_perp2, 0.0))
        hat = np.maximum(1.0 - np.abs(s_par) / h, 0.0)
        w = np.where(side[:, None, None], chord * hat, disc)
    wsum = w.sum(axis=(1, 2))
    tiny = wsum <= 0.0
    if np.any(tiny):  # radius below the pixel: all volume to the nearest pixel
        w[tiny, k, k] = 1.0
        wsum[tiny] = 1.0
    w = w * (volume / wsum)[:, None, None]
    ia = np.broadcast_to(ia, w.shape)
    ib = np.broadcast_to(ib, w.shape)
    ok = (ia >= 0) & (ia < det.shape[0]) & (ib >= 0) & (ib < det.shape[1]) & (w > 0)
    if not np.any(ok):
        return img
    ia, ib, w = ia[ok], ib[ok], w[ok]
    a0, b0 = int(ia.min()), int(ib.min())
    na, nb = int(ia.max()) - a0 + 1, int(ib.max()) - b0 + 1
    box = np.bincount((ia - a0) * nb + (ib - b0), weights=w, minlength=na * nb).reshape(na, nb)
    img[a0 : a0 + na, b0 : b0 + nb] += box / (h * h)
    return img


def visible_volume_m3(
    extra_thickness: np.ndarray, pixel_size_m: float, min_thickness_m: float, hidden: np.ndarray | None = None
) -> float:
    """Cement volume in pixels where extra-vertebral thickness >= min_thickness, each pixel counted over
    the share of its area not hidden: ``hidden`` is that share (0-1, :func:`body_hidden_share`) or a
    bool mask (whole pixels hidden)."""
    seen = extra_thickness >= max(min_thickness_m, 1e-300)
    if hidden is None:
        return float(extra_thickness[seen].sum() * pixel_size_m**2)
    shown = 1.0 - np.asarray(hidden, dtype=np.float64)[seen]
    return float((extra_thickness[seen] * shown).sum() * pixel_size_m**2)


RISE_WINDOW_S = 2.0  # the visible volume's rise before detection is read over this long (four default frames)


def detection_shift_per_percent_s(
    frames_m3: list[float], threshold_m3: float, frame_interval_s: float
) -> float | None:
    """Seconds the detecting frame moves for a 1 % error in the visible volume; None for a leak not seen.

    The visible volume rose at r = (V_k - V_(k-n)) / (n dt) over the last n frames before it passed the
    threshold V_th (n dt = RISE_WINDOW_S, or the frames there are: a single frame's rise is often one
    pixel passing the visible thickness); an error of 1 % of V_th in it shifts the crossing by about
    0.01 V_th / r (infinite when it did not rise). It says how well conditioned a run's detection time is:
    the seed case's leak crosses its 5 mm^3 within a frame (milliseconds per per cent), cohort patient 1's
    grazes its threshold (tenths of a second per per cent), so errors of a few per cent in where the cement
    sits move its detection by seconds (README: Grid convergence). Limiting case (tested): a visible
    volume rising linearly at r gives 0.01 V_th / r.
    """
    if len(frames_m3) < 2 or frames_m3[-1] <= threshold_m3:
        return None
    n = max(1, min(len(frames_m3) - 1, round(RISE_WINDOW_S / frame_interval_s)))
    rate = (frames_m3[-1] - frames_m3[-1 - n]) / (n * frame_interval_s)
    return 0.01 * threshold_m3 / rate if rate > 0.0 else float("inf")


class LeakDetector:
    """Frame-by-frame detection of extra-vertebral cement on synthetic fluoroscopy.

    ``center_m`` is the image centre (the treated level's body centre); ``half_extent_m`` the
    half field of view (default 0.1 m, a 20 cm image intensifier).
    """

    def __init__(
        self,
        params: FluoroscopyParams,
        center_m: np.ndarray,
        bone: BoneGrid | None = None,
        half_extent_m: float = 0.1,
    ):
        self.params = params
        self.pixel_size_m = float(params.pixel_size_m)
        self.threshold_m3 = float(params.visibility_threshold_m3)
        self.min_thickness_m = float(params.min_thickness_m)
        self.frame_interval_s = float(params.frame_interval_s)
        views = list(params.views)
        if not views:
            raise ConfigError("fluoroscopy.views is empty: at least one of 'lateral', 'ap' is needed")
        if not self.frame_interval_s > 0:
            raise ConfigError(f"fluoroscopy.frame_interval = {self.frame_interval_s}: must be > 0")
        self.bone = bone
        self.detectors = {
            v: make_detector(v, np.asarray(center_m), half_extent_m, self.pixel_size_m) for v in views
        }
        self.hidden = {  # each pixel's share of area behind the body
            v: body_hidden_share(d, bone) if bone is not None else None for v, d in self.detectors.items()
        }
        self.next_frame_s = 0.0
        self.detection_time_s: float | None = None
        self.frames_t: list[float] = []
        self.frames_visible_m3: list[float] = []
        self._last_fill: np.ndarray | None = None  # columns of the kept column images
        self._column_img: dict[str, np.ndarray] = {}
        self._column_drawn = False  # the kept column images have a positive pixel
        self._rest_img: dict[str, np.ndarray] = {}  # fragments at rest for good, drawn once
        self.tracks: FragmentTracks | None = None  # fragments in the veins (set by the venous system)

    def extra_vertebral_image(self, view: str, columns: CementColumns) -> np.ndarray:
        det = self.detectors[view]
        return project_points(det, *column_samples(columns, 0.5 * self.pixel_size_m))

    def visible_m3(self, columns: CementColumns) -> float:
        """Largest visible extra-vertebral volume of the vein columns over the views."""
        if columns.total_m3() <= 0.0:
            return 0.0
        samples = column_samples(columns, 0.5 * self.pixel_size_m)
        return self._visible({v: project_points(d, *samples) for v, d in self.detectors.items()})

    def _visible(self, images: dict[str, np.ndarray]) -> float:
        return max(
            visible_volume_m3(img, self.pixel_size_m, self.min_thickness_m, self.hidden[view])
            for view, img in images.items()
        )

    def _column_images(self, columns: CementColumns) -> dict[str, np.ndarray]:
        """Thickness image of the vein columns per view, kept while the columns do not change."""
        if self._last_fill is None or not np.array_equal(self._last_fill, columns.fill_m3):
            samples = column_samples(columns, 0.5 * self.pixel_size_m)
            self._column_img = {v: project_points(d, *samples) for v, d in self.detectors.items()}
            self._column_drawn = any(np.any(img > 0.0) for img in self._column_img.values())
            self._last_fill = columns.fill_m3.copy()
        return self._column_img

    def frames_due_in(self, t0: float, t1: float) -> list[float]:
        """Frames still to take in (t0, t1), 1 ns clear of both ends (none once the leak is seen)."""
        if self.detection_time_s is not None:
            return []
        out, f = [], self.next_frame_s
        while f < t1 - 1e-9:
            if f > t0 + 1e-9:
                out.append(f)
            f += self.frame_interval_s
        return out

    def update(self, t: float, columns: CementColumns, before: bool = False) -> float | None:
        """Take every frame due up to time t (``before``: only those due before t, for frames that
        must not see what happens at t); returns the detection time once detected.

        A frame's image is the columns' plus that of the fragments in the veins at the frame's time
        (:mod:`sim.physics.fragment_tracks`): those at rest for good are drawn once into a kept image,
        the moving ones at their positions; the projection is linear, so the images add.
        """
        limit = t - 1e-12 if before else t + 1e-12
        while self.detection_time_s is None and self.next_frame_s <= limit:
            f = self.next_frame_s
            images = self._column_images(columns)
            drawn = self._column_drawn
            if self.tracks is not None:
                step = 0.5 * self.pixel_size_m
                rest = self.tracks.take_at_rest(f)
                if rest[0].size:
                    rest_samples = fragment_samples(self.tracks.network, *rest, step)
                    for v, d in self.detectors.items():
                        self._rest_img[v] = self._rest_img.get(v, 0.0) + project_points(d, *rest_samples)
                self.tracks.prune(f)
                moving = self.tracks.at(f)
                if moving[0].size or self._rest_img:
                    drawn = True  # an image with nothing drawn sees 0 mm^3 either way
                    moving_samples = fragment_samples(self.tracks.network, *moving, step)
                    images = {
                        v: images[v] + self._rest_img.get(v, 0.0) + project_points(d, *moving_samples)
                        for v, d in self.detectors.items()
                    }
            # images known to hold nothing are not read (a read of empty images gives 0 exactly as well)
            vis = self._visible(images) if drawn else 0.0
            self.frames_t.append(f)
            self.frames_visible_m3.append(vis)
            if vis > self.threshold_m3:
                self.detection_time_s = f
                self.tracks = None  # no frame is taken once the leak is seen
                self._rest_img = {}
            self.next_frame_s += self.frame_interval_s
        return self.detection_time_s

    def radiograph(
        self, view: str, columns: CementColumns, cement_fraction: np.ndarray | None = None
    ) -> np.ndarray:
        """Attenuation line integral mu_b t_bone + mu_c t_cement of a view (dimensionless).

        Beer-Lambert: the detector sees exp(-integral) (soft tissue adds a uniform background that
        a display window removes). Bone is the vertebral body's mineral, cement that of the bone
        field and the veins; coefficients from geometries/imaging.yaml.
        """
        mu = attenuation_coefficients()
        line = mu["cement"] * self.image(view, columns, cement_fraction)
        if self.bone is not None:
            line = line + mu["bone_mineral"] * project_bone_mineral(self.detectors[view], self.bone)
        return line

    def image(
        self, view: str, columns: CementColumns, cement_fraction: np.ndarray | None = None
    ) -> np.ndarray:
        """Total projected cement thickness (m) of a view: bone field (if a grid is known) + veins."""
        if view not in self.detectors:
            raise ConfigError(f"fluoroscopy view '{view}' not configured (have {', '.join(self.detectors)})")
        img = self.extra_vertebral_image(view, columns)
        if self.bone is not None and cement_fraction is not None:
            img = img + project_bone(self.detectors[view], self.bone, cement_fraction)[0]
        return img
