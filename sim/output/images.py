"""PNG images of a run: synthetic fluoroscopy frames (matplotlib, headless Agg backend).

A fluoroscopy frame is the projected cement thickness of one view (``sim.physics.fluoroscopy``: parallel
projection; ``lateral`` images the (y, z) plane, ``ap`` the (x, z) plane of the patient frame).
It is drawn the way the C-arm monitor shows radio-opaque material: dense = dark, on a light
field, with millimetre axes in the patient frame (cranial up; on the lateral view anterior to the
left, on the AP view the patient's right on the viewer's left, as on a radiograph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sim.core.errors import GeometryError

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
    value_scale: float = 1.0e3,
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
    a0, b0 = (v * 1e3 for v in origin_m)
    h = pixel_size_m * 1e3
    extent = (a0, a0 + img.shape[0] * h, b0, b0 + img.shape[1] * h)
    vmax = float(np.percentile(vals[vals > 0], 99.5)) if np.any(vals > 0) else 1.0
    fig, ax = plt.subplots(figsize=(6.0, 6.4), dpi=120)
    shown = ax.imshow(vals.T, origin="lower", extent=extent, cmap="gray_r" if dense_dark else "gray",
                      vmin=0.0, vmax=max(vmax, 1e-12), interpolation="nearest")  # fmt: skip
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=10)
    fig.colorbar(shown, ax=ax, label=value_label, shrink=0.8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _snapshot_at(injection: Any, t: float) -> np.ndarray | None:
    """Bone cement fraction at time t.

    At or after the end of injection: the final field. Before it: the final field restricted to
    the cells the cement had reached by t (arrival time, S >= 0.5, at or before t), which is exact
    for the cells that count on a radiograph; without arrival times, the last snapshot at or
    before t.
    """
    final = getattr(injection, "cement_fraction", None)
    end = getattr(injection, "end_time_s", None)
    if final is not None and (end is None or t >= float(end) - 1e-9):
        return final
    arrival = getattr(injection, "arrival_time_s", None)
    if final is not None and arrival is not None:
        arrival = np.asarray(arrival, dtype=float)
        return np.where(np.isfinite(arrival) & (arrival <= t + 1e-9), final, 0.0)
    snaps = list(getattr(injection, "snapshots", None) or [])
    before = [s for s in snaps if s[0] <= t + 1e-9]
    if before:
        frame = before[-1][1]
        return frame["cement_fraction"] if isinstance(frame, dict) else frame
    return final


def write_fluoroscopy_pngs(out_dir: str | Path, result: Any) -> list[Path]:
    """Fluoroscopy PNGs of a run at the end (and at leak detection when the venous state was kept).

    Duck-typed on ``result.artifacts``: ``venous`` must offer ``fluoroscopy_image(view,
    cement_fraction)`` and ``detector.detectors`` (view -> Detector with ``origin_m`` and
    ``pixel_size_m``); ``injection`` gives the bone cement. The detection-time frame needs the
    vein columns as they were then: it is written when ``venous.columns_at_detection`` exists.
    Returns the files written (none when the run has no venous system).
    """
    art = getattr(result, "artifacts", None) or {}
    venous, injection = art.get("venous"), art.get("injection")
    detector = getattr(venous, "detector", None)
    if venous is None or detector is None or not hasattr(venous, "fluoroscopy_image"):
        return []
    out = Path(out_dir)
    t_end = float(getattr(injection, "end_time_s", 0.0) or 0.0)
    t_det = getattr(venous, "detection_time_s", None)
    frames: list[tuple[str, float, Any]] = [("end", t_end, None)]
    cols_det = getattr(venous, "columns_at_detection", None)
    if t_det is not None and cols_det is not None:
        frames.insert(0, ("detection", float(t_det), cols_det))
    written = []
    for tag, t, cols in frames:
        cf = _snapshot_at(injection, t) if injection is not None else None
        for view, det in detector.detectors.items():
            if cols is None:
                img = venous.fluoroscopy_image(view, cf)
            else:
                img = detector.image(view, cols, cf)
            if tag == "detection":
                label = f"leak seen, t = {t:.1f} s"
            else:
                seen = "" if t_det is None else f", leak seen {float(t_det):.1f} s"
                label = f"{tag}, t = {t:.1f} s{seen}"
            written.append(
                write_grayscale_png(
                    out / f"fluoroscopy_{view}_{tag}.png",
                    img,
                    float(det.pixel_size_m),
                    f"{view} fluoroscopy, {label}",
                    origin_m=tuple(np.asarray(det.origin_m, dtype=float)[:2]),
                    axis_labels=VIEW_AXES.get(view, ("[mm]", "[mm]")),
                )
            )
    return written
