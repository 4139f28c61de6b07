"""A CT volume and its label map (NIfTI) in pce-sim's patient frame, with the checks a user needs.

Library: nibabel (NiPy project, maintained, pure Python on numpy, a few MB). It reads NIfTI-1/2
(``.nii``, ``.nii.gz``), the format TotalSegmentator and 3D Slicer write label maps in, gives the
voxel-to-world affine from the header (sform, else qform) and reads sub-blocks lazily, so only
the region around the treated vertebra is held in memory. SimpleITK / itk would add DICOM-series
reading but are compiled wheels of 50-100 MB; a DICOM series is converted to NIfTI first (e.g.
dcm2niix, or 3D Slicer's export), which also fixes its orientation in the header.

Frame. A NIfTI affine maps voxel indices (i, j, k) to RAS+ millimetres (+x towards the patient's
right, +y anterior, +z superior). pce-sim's patient frame is DICOM LPS in
metres (+x left, +y posterior, +z cranial): x_LPS = -x_RAS, y_LPS = -y_RAS, z_LPS = z_RAS, times
1e-3. DICOM patient coordinates follow the patient, not the table, so a prone scan (the
vertebroplasty position) needs nothing more. The translation to the L1-centred origin is made by
:mod:`sim.anatomy.ct_bone` from the segmented body.

Every problem is a one-line :class:`~sim.core.errors.ConfigError` that starts with the file's path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.core.errors import ConfigError
from sim.core.units import MM_M

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
GEOMETRY_TOL_MM = 1.0e-3  # CT and label map must share the affine to this (mm)
CROP_MARGIN_M = 12.0e-3  # context kept around the treated vertebra
# A segmentation labels tens to a few hundred structures (TotalSegmentator: 117); a map with more
# distinct values than this is more likely a CT given in its place (said in the refusal, not refused).
MAX_LABELS = 1000
# A whole-body CT is about 512 x 512 x 2,000 voxels; the label map is read whole, so a header declaring more
# (a small gzip can: 2 MB of zeros for 1300^3 voxels took 53 s and 4.4 GB) is refused before its data is read.
MAX_CT_VOXELS = 580_000_000
# A "CT" holding the vertebra's label value on at least this share of the vertebra's voxels is a label
# map (a CT's intensities vary over the bone).
LABEL_MAP_SHARE = 0.9


@dataclass
class Volume:
    """A 3D image block: values, and the affine from its voxel indices to LPS metres."""

    path: str
    data: np.ndarray
    affine_m: np.ndarray  # (4, 4): (i, j, k, 1) -> (x, y, z, 1) LPS metres

    @property
    def spacing_m(self) -> np.ndarray:
        """Edge length of a voxel along each array axis."""
        return np.linalg.norm(self.affine_m[:3, :3], axis=0)

    def to_voxel(self, points_m: np.ndarray) -> np.ndarray:
        """Fractional voxel indices (n, 3) of LPS points (n, 3)."""
        inv = np.linalg.inv(self.affine_m)
        return points_m @ inv[:3, :3].T + inv[:3, 3]

    def to_world(self, ijk: np.ndarray) -> np.ndarray:
        """LPS points (n, 3) of voxel indices (n, 3)."""
        return np.asarray(ijk, dtype=np.float64) @ self.affine_m[:3, :3].T + self.affine_m[:3, 3]


def _open(path: str, what: str):
    """The nibabel image of ``path`` (header only), or a ConfigError naming the file."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such file (patient.anatomy.{what})")
    if not p.is_file():
        raise ConfigError(f"{path}: not a regular file (patient.anatomy.{what})")
    try:
        img = nib.load(str(p))
    except (ImageFileError, OSError, ValueError, EOFError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not a readable NIfTI image ({text})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ConfigError(f"{path}: a {type(img).__name__}, expected NIfTI (.nii or .nii.gz)")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise ConfigError(f"{path}: image of shape {shape}, expected a 3D volume")
    voxels = math.prod(shape)
    if voxels > MAX_CT_VOXELS:  # before any data is read: a small .nii.gz can declare gigabytes
        raise ConfigError(
            f"{path}: image of shape {shape} holds {voxels:,} voxels (allowed: at most {MAX_CT_VOXELS:,}, "
            "a 512 x 512 x 2,200 scan); crop the scan around the treated vertebra"
        )
    aff = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ConfigError(f"{path}: voxel-to-world affine is not finite or singular: {aff[:3].tolist()}")
    return img


def _affine_lps_m(img) -> np.ndarray:
    out = np.eye(4)
    aff = np.asarray(img.affine, dtype=np.float64)
    out[:3, :3] = RAS_TO_LPS @ aff[:3, :3] * MM_M
    out[:3, 3] = RAS_TO_LPS @ aff[:3, 3] * MM_M
    return out


def _read_block(img, path: str, block: tuple[slice, ...], as_float: bool) -> np.ndarray:
    try:
        data = np.asarray(img.dataobj[block] if img.ndim == 3 else img.dataobj[(*block, 0)])
    except (OSError, ValueError, EOFError, MemoryError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: image data cannot be read ({text})") from None
    return data.astype(np.float32) if as_float else data


def load_ct_pair(
    ct_path: str, labels_path: str, vertebra_label: int, extra_labels: tuple[int, ...] = ()
) -> tuple[Volume, Volume, dict[int, int], dict[str, np.ndarray]]:
    """Read the CT and its label map around the treated vertebra.

    Returns the CT block (Hounsfield units, float32) and the label block (integers) around the
    vertebra with label ``vertebra_label`` (plus ``CROP_MARGIN_M``), the voxel count of every
    label in ``extra_labels`` over the whole map, and per extra label present the (n, 3) LPS
    centres of its voxels (keyed by the label value as text). Refuses: a missing or
    unreadable file, CT and labels of different shape or affine, a label map that is not integer or
    holds negative values (a CT in its place), a vertebra label absent from the map, non-finite CT
    values around the vertebra, a "CT" holding the vertebra's label value on the vertebra (a label map
    in its place).
    """
    if Path(ct_path).exists() and Path(labels_path).exists() and os.path.samefile(ct_path, labels_path):
        raise ConfigError(
            f"{labels_path}: is the file ct_path names too; the label map is a second file on the CT's voxels"
        )
    ct_img = _open(ct_path, "ct_path")
    lab_img = _open(labels_path, "labels_path")
    if tuple(ct_img.shape[:3]) != tuple(lab_img.shape[:3]):
        raise ConfigError(
            f"{labels_path}: label map of shape {tuple(lab_img.shape[:3])} does not match the CT "
            f"{ct_path} of shape {tuple(ct_img.shape[:3])} (same voxel grid required)"
        )
    diff = np.abs(np.asarray(ct_img.affine) - np.asarray(lab_img.affine)).max()
    if not diff <= GEOMETRY_TOL_MM:
        raise ConfigError(
            f"{labels_path}: voxel-to-world affine differs from the CT {ct_path} by {diff:.3g} mm "
            "(label map and CT must share the voxel grid)"
        )
    full = (slice(None),) * 3
    labels_all = _read_block(lab_img, labels_path, full, as_float=False)
    if not np.issubdtype(labels_all.dtype, np.integer):
        if not np.all(np.isfinite(labels_all)) or np.any(labels_all != np.rint(labels_all)):
            raise ConfigError(f"{labels_path}: label values are not integers (is this the CT instead?)")
        labels_all = labels_all.astype(np.int64)
    lowest = int(labels_all.min()) if labels_all.size else 0
    if lowest < 0:
        raise ConfigError(
            f"{labels_path}: label values are negative (lowest {lowest}); a label map holds non-negative "
            "integers (is this the CT instead?)"
        )
    mask = labels_all == vertebra_label
    if not mask.any():
        present = np.unique(labels_all)
        present = present[present != 0]
        shown = ", ".join(str(int(v)) for v in present[:12]) + (" ..." if present.size > 12 else "")
        hint = " (is this the CT instead?)" if present.size > MAX_LABELS else ""
        raise ConfigError(
            f"{labels_path}: label value {vertebra_label} (patient.anatomy.vertebra_label) is not in the "
            f"label map (values present: {shown or 'none'}){hint}"
        )
    counts = {int(v): int(np.count_nonzero(labels_all == v)) for v in extra_labels}
    extra_voxels = {}
    aff = _affine_lps_m(lab_img)
    for v in extra_labels:
        if counts[int(v)]:
            extra_voxels[str(int(v))] = np.argwhere(labels_all == v)
    idx = np.argwhere(mask)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    pad = np.ceil(CROP_MARGIN_M / spacing).astype(int)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, np.array(labels_all.shape))
    block = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    labels = np.ascontiguousarray(labels_all[block])
    del labels_all, mask
    ct = _read_block(ct_img, ct_path, block, as_float=True)
    bad = int(np.count_nonzero(~np.isfinite(ct)))
    if bad:
        raise ConfigError(
            f"{ct_path}: {bad} non-finite intensities (NaN or inf) around label {vertebra_label}"
        )
    on_vertebra = ct[labels == vertebra_label]
    if np.count_nonzero(on_vertebra == vertebra_label) >= LABEL_MAP_SHARE * on_vertebra.size:
        raise ConfigError(
            f"{ct_path}: holds the vertebra_label's value {vertebra_label} on the vertebra's voxels, as a "
            "label map does (is this the label map instead? a CT holds Hounsfield units)"
        )
    shift = np.eye(4)
    shift[:3, 3] = lo
    block_aff = aff @ shift
    world = {k: v @ aff[:3, :3].T + aff[:3, 3] for k, v in extra_voxels.items()}
    return Volume(ct_path, ct, block_aff), Volume(labels_path, labels, block_aff), counts, world
