"""A synthetic CT and label map of pce-sim's own parametric vertebra, with known porosity.

The twin of a parametric scenario: the vertebral body is the parametric kidney-shaped body of the
scenario's level (``sim.physics.bone.BodyShape``), with its cortex and endplates; the posterior
elements are two pedicles (the table's width and height, from the posterior wall backwards),
a lamina closing the spinal canal and a spinous process; an inferior vena cava runs antero-right
of the body. Hounsfield units: soft tissue and blood 40 HU [TB], cortex and posterior elements
1000 HU [U, any value above the marrow's], cancellous bone the inverse of the CT path's density
relation (:func:`sim.anatomy.ct_bone.hu_from_porosity`) applied to the parametric porosity field
of the same seed (the same ``FourierField``, at the voxel centres), so running the CT path on it
must reproduce the parametric run. Written as int16 HU and uint8 labels with an RAS affine that
places the body centre at an arbitrary scanner position; ``flip`` and ``permute`` store the same
anatomy with flipped or permuted array axes (and the matching affine) for orientation tests.

Usage: ``python -m sim.anatomy.synthetic_ct OUT_DIR [--scenario configs/lai2025_case.yaml]
[--voxel-mm 0.5]`` writes ``OUT_DIR/synthetic_<level>_ct.nii.gz`` and
``OUT_DIR/synthetic_<level>_labels.nii.gz`` from the scenario's patient (level, size, porosity
field: its ``patient`` section), the default scenario's without ``--scenario``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sim.anatomy.ct_bone import hu_from_porosity
from sim.core.config import Scenario, load_scenario
from sim.core.parameters import PatientParams, RunParameters
from sim.core.units import MM_M
from sim.physics.bone import FOURIER_MODES, POROSITY_CLIP, BodyShape, feature_rng, load_vertebra
from sim.physics.random_field import FourierField

VERTEBRA_LABEL = 1
IVC_LABEL = 2
HU_SOFT_TISSUE = 40.0
HU_CORTEX = 1000.0
IVC_DIAMETER_M = 22.0e-3  # [S~] infrarenal IVC ~ 20-25 mm wide in adults (CT)
SCANNER_CENTER_LPS_M = np.array([0.0123, -0.0347, 0.4102])  # where the body centre sits in the scanner
LAMINA_THICKNESS_M = 6.0e-3  # [U]
SPINOUS_LENGTH_M = 25.0e-3  # [U]
SPINOUS_WIDTH_M = 6.0e-3  # [U]


def synthetic_arrays(
    patient: PatientParams, voxel_m: float = 0.5e-3, slope: float = 1.0, intercept: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU (int16), labels (uint8) on voxels indexed (x, y, z) LPS, and the RAS affine (mm)."""
    dims = load_vertebra(patient.level)
    s = float(patient.size_scale)
    width, depth, height = (s * dims[k] for k in ("width_m", "depth_m", "height_m"))
    outer = BodyShape.from_dims(
        width, depth, height, dims["concavity_depth_fraction"], dims["concavity_radius_fraction"]
    )
    inner = outer.inset(dims["cortical_thickness_m"], dims["endplate_thickness_m"])
    pw, ph = s * dims["pedicle_width_m"], s * dims["pedicle_height_m"]
    x_ped = 0.5 * s * dims["canal_width_m"] + 0.5 * pw
    y_ped0 = float(outer.posterior_y(x_ped)) - 1.0e-3
    y_lam = y_ped0 + s * dims["pedicle_axis_length_m"]
    z_ped = outer.half_height - 0.5 * ph
    x_ivc, y_ivc = -0.3 * width, -outer.b - 0.5 * IVC_DIAMETER_M - 2.0e-3

    margin = 6.0e-3 + 0.3 * voxel_m  # off the shape's symmetry planes, as a real scan would be
    lo = np.array([-outer.a - margin, y_ivc - 0.5 * IVC_DIAMETER_M - margin, -outer.half_height - margin])
    hi = np.array(
        [outer.a + margin, y_lam + LAMINA_THICKNESS_M + SPINOUS_LENGTH_M + margin, outer.half_height + margin]
    )
    n = np.ceil((hi - lo) / voxel_m).astype(int) + 1
    x, y, z = (lo[d] + voxel_m * np.arange(n[d]) for d in range(3))
    X, Y = np.meshgrid(x, y, indexing="ij")
    in_z_body = np.abs(z) <= outer.half_height
    body = outer.inside_xy(X, Y)[:, :, None] & in_z_body[None, None, :]
    canc = inner.inside_xy(X, Y)[:, :, None] & (np.abs(z) <= inner.half_height)[None, None, :]
    in_z_ped = (np.abs(z - z_ped) <= 0.5 * ph)[None, None, :]
    pedicles = ((np.abs(np.abs(X) - x_ped) <= 0.5 * pw) & (Y >= y_ped0) & (Y <= y_lam))[:, :, None] & in_z_ped
    lamina = ((np.abs(X) <= x_ped + 0.5 * pw) & (Y >= y_lam) & (Y <= y_lam + LAMINA_THICKNESS_M))[:, :, None]
    spinous = (
        (np.abs(X) <= 0.5 * SPINOUS_WIDTH_M)
        & (Y >= y_lam)
        & (Y <= y_lam + LAMINA_THICKNESS_M + SPINOUS_LENGTH_M)
    )
    posterior = pedicles | ((lamina | spinous[:, :, None]) & in_z_ped)
    ivc = (((X - x_ivc) ** 2 + (Y - y_ivc) ** 2) <= (0.5 * IVC_DIAMETER_M) ** 2)[:, :, None] & np.ones(
        z.size, dtype=bool
    )[None, None, :]

    field = FourierField.draw(
        float(patient.porosity_correlation_m), feature_rng(patient.seed, "porosity"), FOURIER_MODES
    ).on_grid(lo, voxel_m, tuple(int(v) for v in n), cell_average=False)
    phi = np.clip(float(patient.porosity_mean) + float(patient.porosity_sd) * field, *POROSITY_CLIP)
    hu = np.full(tuple(n), HU_SOFT_TISSUE)
    hu[body | posterior] = HU_CORTEX
    hu[canc] = hu_from_porosity(phi[canc], slope, intercept)
    labels = np.zeros(tuple(n), dtype=np.uint8)
    labels[ivc] = IVC_LABEL
    labels[body | posterior] = VERTEBRA_LABEL

    lps0 = lo + SCANNER_CENTER_LPS_M  # world position of voxel (0, 0, 0): the body centre at the scanner's
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) * voxel_m / MM_M
    affine[:3, 3] = np.array([-lps0[0], -lps0[1], lps0[2]]) / MM_M
    return np.rint(hu).astype(np.int16), labels, affine


def reorient(
    arrays: tuple[np.ndarray, ...],
    affine: np.ndarray,
    flip: tuple[int, ...] = (),
    permute: tuple[int, ...] = (0, 1, 2),
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The same image stored with array axes ``flip``-ped, then transposed by ``permute``; affine to match."""
    aff = affine.copy()
    out = list(arrays)
    shape = arrays[0].shape
    for ax in flip:
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (shape[ax] - 1)
        aff[:3, ax] = -aff[:3, ax]
        out = [np.flip(a, axis=ax) for a in out]
    perm = tuple(int(p) for p in permute)
    aff2 = aff.copy()
    aff2[:3, :3] = aff[:3, list(perm)]
    return tuple(np.ascontiguousarray(np.transpose(a, perm)) for a in out), aff2


def write_synthetic_ct(
    out_dir: str | Path,
    patient: PatientParams | None = None,
    voxel_mm: float = 0.5,
    flip: tuple[int, ...] = (),
    permute: tuple[int, ...] = (0, 1, 2),
    stem: str | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>_ct.nii.gz`` and ``<stem>_labels.nii.gz``; returns their paths."""
    import nibabel as nib

    patient = patient or RunParameters.from_scenario(Scenario()).patient
    stem = stem or f"synthetic_{patient.level}"
    hu, labels, affine = synthetic_arrays(patient, voxel_mm * MM_M)
    (hu, labels), affine = reorient((hu, labels), affine, flip, permute)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / f"{stem}_ct.nii.gz", out / f"{stem}_labels.nii.gz")
    for data, path in zip((hu, labels), paths, strict=True):
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--voxel-mm", type=float, default=0.5)
    ap.add_argument(
        "--scenario", default=None, help="scenario YAML whose patient is imaged (default: defaults)"
    )
    args = ap.parse_args(argv)
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    ct, lab = write_synthetic_ct(args.out_dir, RunParameters.from_scenario(scenario).patient, args.voxel_mm)
    print(f"wrote {ct} and {lab} (vertebra label {VERTEBRA_LABEL}, IVC label {IVC_LABEL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
