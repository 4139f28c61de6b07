"""PNG images of a run: synthetic fluoroscopy frames (matplotlib, headless Agg backend).

A fluoroscopy frame is one view of the patient (``sim.physics.fluoroscopy``: parallel projection;
``lateral`` images the (y, z) plane, ``ap`` the (x, z) plane of the patient frame), drawn the way
the C-arm monitor shows it: the X-ray transmission exp(-integral of the attenuation) of bone
mineral and radiopaque cement (:meth:`sim.physics.fluoroscopy.LeakDetector.radiograph`), soft
tissue a light field, the vertebral body grey and cement dark, with millimetre axes in the patient
frame (cranial up; on the lateral view anterior to the left, on the AP view the patient's right on
the viewer's left, as on a radiograph).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sim.core.errors import GeometryError
from sim.core.units import MM_M

if TYPE_CHECKING:
    from sim.physics.injection import InjectionResult
    from sim.physics.vein_columns import CementColumns
    from sim.run.results import RunResult

VIEW_AXES = {
    "lateral": ("y (posterior) [mm]", "z (cranial) [mm]"),
    "ap": ("x (patient left) [mm]", "z (cranial) [mm]"),
}


def write_grayscale_png(
    path: str | Path,
    image_2d: np.ndarray,
    pixel_size_m: float,
    title: str,
    origin_m: tuple[float, float] = (0.0, 0.0),
    axis_labels: tuple[str, str] = ("[mm]", "[mm]"),
    value_label: str = "cement thickness [mm]",
    value_scale: float = 1.0 / MM_M,
    dense_dark: bool = True,
) -> Path:
    """Write ``image_2d[a, b]`` (a horizontal, b vertical) as a grey PNG with mm axes and a colour bar.

    ``origin_m`` is the lower corner of pixel (0, 0) in the image plane; values are multiplied by
    ``value_scale`` for the bar (default: metres of cement shown in mm).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = np.asarray(image_2d, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 1:
        raise GeometryError(f"write_grayscale_png: image for '{title}' has shape {img.shape}; expected 2-D")
    if not pixel_size_m > 0:
        raise GeometryError(f"write_grayscale_png: pixel size {pixel_size_m} m must be > 0")
    vals = np.nan_to_num(img, nan=0.0) * value_scale
    a0, b0 = (v / MM_M for v in origin_m)
    h = pixel_size_m / MM_M
    extent = (a0, a0 + img.shape[0] * h, b0, b0 + img.shape[1] * h)
    vmax = float(np.percentile(vals[vals > 0], 99.5)) if np.any(vals > 0) else 1.0
    fig, ax = plt.subplots(figsize=(6.0, 6.4), dpi=120, layout="constrained")
    shown = ax.imshow(vals.T, origin="lower", extent=extent, cmap="gray_r" if dense_dark else "gray",
                      vmin=0.0, vmax=max(vmax, 1e-12), interpolation="nearest")  # fmt: skip
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=10)
    fig.colorbar(shown, ax=ax, label=value_label, shrink=0.8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_radiograph_png(
    path: str | Path,
    line_integral: np.ndarray,
    pixel_size_m: float,
    title: str,
    origin_m: tuple[float, float] = (0.0, 0.0),
    axis_labels: tuple[str, str] = ("[mm]", "[mm]"),
) -> Path:
    """A fluoroscopy frame as the C-arm monitor shows it: transmission exp(-integral), dense = dark.

    ``line_integral[a, b]`` is the attenuation line integral (a horizontal, b vertical); soft tissue
    is a light field, bone grey, radiopaque cement dark.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = np.asarray(line_integral, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 1:
        raise GeometryError(f"write_radiograph_png: image for '{title}' has shape {img.shape}; expected 2-D")
    transmission = np.exp(-np.nan_to_num(img, nan=0.0))
    a0, b0 = (v / MM_M for v in origin_m)
    h = pixel_size_m / MM_M
    extent = (a0, a0 + img.shape[0] * h, b0, b0 + img.shape[1] * h)
    fig, ax = plt.subplots(figsize=(5.6, 6.0), dpi=120, layout="constrained")
    # display window: the soft-tissue field light grey, full attenuation black
    ax.imshow(transmission.T, origin="lower", extent=extent, cmap="gray", vmin=0.0, vmax=1.15,
              interpolation="bilinear")  # fmt: skip
    ax.set_facecolor("black")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def cement_seen_by(injection: InjectionResult, t: float) -> np.ndarray:
    """Bone cement fraction as a radiograph at time ``t`` shows it.

    At or after the end of injection: the final field. Before it: the final field restricted to
    the cells the cement had reached by t (arrival time, S >= 0.5, at or before t), which is exact
    for the cells that count on a radiograph.
    """
    final = injection.cement_fraction
    if t >= float(injection.end_time_s) - 1e-9:
        return final
    arrival = np.asarray(injection.arrival_time_s, dtype=float)
    return np.where(np.isfinite(arrival) & (arrival <= t + 1e-9), final, 0.0)


def write_fluoroscopy_pngs(out_dir: str | Path, result: RunResult) -> list[Path]:
    """Fluoroscopy PNGs of a run at the end, and at the moment the leak was seen (if it was)."""
    art = result.artifacts
    if art is None:
        return []
    venous, injection, recording = art.venous, art.injection, art.recording
    detector = venous.detector
    out = Path(out_dir)
    t_end = float(injection.end_time_s)
    t_det = venous.detection_time_s
    frames: list[tuple[str, float, CementColumns]] = [("end", t_end, venous.columns)]
    if t_det is not None and recording.columns_at_detection is not None:
        frames.insert(0, ("detection", float(t_det), recording.columns_at_detection))
    written = []
    for tag, t, cols in frames:
        cf = cement_seen_by(injection, t)
        for view, det in detector.detectors.items():
            img = detector.radiograph(view, cols, cf)
            if tag == "detection":
                label = f"leak seen, t = {t:.1f} s"
            else:
                seen = "" if t_det is None else f", leak seen {float(t_det):.1f} s"
                label = f"{tag}, t = {t:.1f} s{seen}"
            written.append(
                write_radiograph_png(
                    out / f"fluoroscopy_{view}_{tag}.png",
                    img,
                    float(det.pixel_size_m),
                    f"{view} fluoroscopy, {label}",
                    origin_m=tuple(np.asarray(det.origin_m, dtype=float)[:2]),
                    axis_labels=VIEW_AXES.get(view, ("[mm]", "[mm]")),
                )
            )
    return written
