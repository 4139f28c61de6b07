"""pce-sim standard view: the treated vertebra with its cement, the venous network with leaked
cement, the pulmonary arterial tree and the emboli, in one patient frame (mm, DICOM LPS).

Run headless (this is what ``pce-sim view RUN_DIR --png FILE`` does)::

    pvbatch standard_view.py RUN_DIR --png view.png [--size 1800x1000] [--time SECONDS]

or from the ParaView GUI: set the environment variable ``PCE_SIM_RUN_DIR`` to a run folder (or
its ``vtk/`` sub-folder) and use *Tools > Python Shell > Run Script*, or start
``paraview --script=standard_view.py`` from inside the run folder. Without ``--png`` nothing is
saved and the pipeline stays open for exploring (every object is a named pipeline source).

Layout: left, an anterior-oblique overview of the thoraco-lumbar spine (context vertebrae),
the paravertebral/azygos veins as tubes at their true calibre coloured by cement fill (blue =
blood, yellow = cement), the pulmonary arteries as thin translucent red tubes and the emboli as
bright yellow tubes; right, a lateral close-up of the treated body (semi-transparent bone
contour, opaque cement iso-surface at cement fraction 0.5, cannula) like the lateral
fluoroscopy used during the procedure; for a run on a CT (``ct.vti``), a sagittal CT slice
through the body's centre behind the cement (grey, -200 .. 1200 HU). Files that are missing (no
emboli, no lungs, no CT ...) are simply left out.
"""

import argparse
import os
import sys

from paraview.simple import (
    CellDatatoPointData,
    Clip,
    ColorBy,
    Contour,
    CreateLayout,
    CreateView,
    GetAnimationScene,
    GetColorTransferFunction,
    GetScalarBar,
    PVDReader,
    RenameSource,
    SaveScreenshot,
    SetActiveView,
    Show,
    Slice,
    Text,
    Tube,
    XMLImageDataReader,
    XMLPolyDataReader,
)

BONE = [0.93, 0.86, 0.72]
CEMENT = [0.97, 0.97, 1.0]
EMBOLUS = [1.0, 0.85, 0.0]
ARTERY = [0.85, 0.25, 0.22]
NEEDLE = [0.55, 0.57, 0.6]
BACKGROUND = [0.08, 0.09, 0.12]


def _args():
    p = argparse.ArgumentParser(description="pce-sim standard ParaView view")
    p.add_argument("run_dir", nargs="?", default=os.environ.get("PCE_SIM_RUN_DIR", os.getcwd()))
    p.add_argument("--png", default=None, help="save the layout to this PNG (headless use)")
    p.add_argument("--size", default="1800x1000", help="PNG size WIDTHxHEIGHT in pixels")
    p.add_argument("--time", type=float, default=None, help="time to show (s); default: last step")
    p.add_argument("--title", default=None)
    argv = [a for a in sys.argv[1:] if a != "--"]
    return p.parse_known_args(argv)[0]


def _vtk_dir(run_dir):
    sub = os.path.join(run_dir, "vtk")
    return sub if os.path.isdir(sub) else run_dir


def _open(vtk_dir, stem, label):
    """A reader for stem.pvd (time series) or stem.vtp, or None when the run has neither."""
    pvd, vtp = os.path.join(vtk_dir, stem + ".pvd"), os.path.join(vtk_dir, stem + ".vtp")
    if os.path.isfile(pvd):
        src = PVDReader(FileName=pvd)
    elif os.path.isfile(vtp):
        src = XMLPolyDataReader(FileName=[vtp])
    else:
        print(f"pce-sim view: no {stem} in {vtk_dir} (left out)")
        return None
    RenameSource(label, src)
    return src


def _arrays(src, kind="POINTS"):
    info = src.GetPointDataInformation() if kind == "POINTS" else src.GetCellDataInformation()
    return set(info.keys())


def _tubes(src, label, time, radius_factor=1.0, sides=14):
    """Tubes at the true calibre (point array radius_mm); plain lines if a non-empty file lacks it."""
    if src is None:
        return None
    src.UpdatePipeline(time)
    if src.GetDataInformation().GetNumberOfPoints() > 0 and "radius_mm" not in _arrays(src):
        return src
    tube = Tube(Input=src)
    tube.Scalars = ["POINTS", "radius_mm"]
    tube.VaryRadius = "By Absolute Scalar"
    tube.RadiusFactor = radius_factor
    tube.NumberofSides = sides
    tube.Capping = 1
    RenameSource(label, tube)
    return tube


def _show_solid(src, view, color, opacity=1.0, specular=0.3):
    d = Show(src, view)
    d.ColorArrayName = ["POINTS", ""]
    d.AmbientColor = color
    d.DiffuseColor = color
    d.Opacity = opacity
    d.Specular = specular
    return d


def _bounds(srcs):
    lo, hi = [1e30] * 3, [-1e30] * 3
    for s in srcs:
        if s is None:
            continue
        b = s.GetDataInformation().GetBounds()
        if b[0] > b[1]:
            continue
        for i in range(3):
            lo[i], hi[i] = min(lo[i], b[2 * i]), max(hi[i], b[2 * i + 1])
    return (lo, hi) if lo[0] <= hi[0] else None


def _frame(view, bounds, direction, up, zoom=1.0):
    """Look at ``bounds`` along ``direction`` (unit, camera -> scene), fit it, then dolly by ``zoom``."""
    lo, hi = bounds
    c = [(a + b) / 2.0 for a, b in zip(lo, hi, strict=True)]
    view.CameraFocalPoint = c
    view.CameraPosition = [c[i] - direction[i] for i in range(3)]
    view.CameraViewUp = up
    view.CameraParallelProjection = 0
    view.CameraViewAngle = 30
    view.ResetCamera(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
    view.GetActiveCamera().Dolly(zoom)


def _label(view, text, size=20, location="Upper Left Corner"):
    t = Text(Text=text)
    d = Show(t, view)
    d.WindowLocation = location
    d.FontSize = size
    d.Color = [0.92, 0.92, 0.92]
    return t


def build(run_dir, title=None, time=None):
    vtk_dir = _vtk_dir(run_dir)
    bone = _open(vtk_dir, "bone", "bone")
    veins = _open(vtk_dir, "veins", "veins")
    lungs = _open(vtk_dir, "lungs", "pulmonary arteries")
    emboli = _open(vtk_dir, "emboli", "emboli")
    needle = _open(vtk_dir, "needle", "cannula")
    spine = _open(vtk_dir, "spine", "spine (context)")

    scene = GetAnimationScene()
    scene.UpdateAnimationUsingDataTimeSteps()
    steps = list(scene.TimeKeeper.TimestepValues or [])
    t_show = time if time is not None else (steps[-1] if steps else 0.0)
    scene.AnimationTime = t_show

    layout = CreateLayout("pce-sim")
    overview = CreateView("RenderView")
    closeup = CreateView("RenderView")
    layout.SplitHorizontal(0, 0.6)
    layout.AssignView(1, overview)
    layout.AssignView(2, closeup)
    for v in (overview, closeup):
        v.Background = BACKGROUND
        if hasattr(v, "UseColorPaletteForBackground"):
            v.UseColorPaletteForBackground = 0
        v.OrientationAxesVisibility = 1
        v.ViewTime = t_show

    # bone: body surface (translucent) and cement iso-surface (opaque)
    body_surface = cement_surface = None
    if bone is not None:
        pts = CellDatatoPointData(Input=bone)
        RenameSource("bone (point data)", pts)
        body_surface = Contour(Input=pts, ContourBy=["POINTS", "body"], Isosurfaces=[0.5])
        RenameSource("vertebral body", body_surface)
        cement_surface = Contour(Input=pts, ContourBy=["POINTS", "cement_fraction"], Isosurfaces=[0.5])
        RenameSource("cement (fraction 0.5)", cement_surface)
        for view, op in ((overview, 0.5), (closeup, 0.22)):
            _show_solid(body_surface, view, BONE, op, 0.1)
            _show_solid(cement_surface, view, CEMENT, 1.0, 0.6)

    vein_tubes = _tubes(veins, "veins (tubes)", t_show)
    if vein_tubes is not None:
        lut = GetColorTransferFunction("cement_fill")
        near = vein_tubes
        body_b = _bounds([body_surface])
        if body_b is not None:
            # close-up: only the paravertebral veins within 12 mm of the body (segmental veins
            # running towards the lateral camera would hide the vertebra)
            near = Clip(Input=vein_tubes, ClipType="Box", Invert=1, Exact=1)
            near.ClipType.Position = [lo - 12.0 for lo in body_b[0]]
            near.ClipType.Length = [hi - lo + 24.0 for lo, hi in zip(*body_b, strict=True)]
            RenameSource("veins near the body", near)
        for view, src, op in ((overview, vein_tubes, 0.9), (closeup, near, 0.45)):
            d = Show(src, view)
            if "cement_fill" in _arrays(vein_tubes, "CELLS"):
                ColorBy(d, ("CELLS", "cement_fill"))
            else:
                d.ColorArrayName = ["POINTS", ""]
                d.DiffuseColor = [0.15, 0.35, 0.85]
            d.Opacity = op
        lut.AutomaticRescaleRangeMode = "Never"
        lut.RGBPoints = [0.0, 0.15, 0.35, 0.85, 0.5, 0.55, 0.75, 0.95, 1.0, 1.0, 0.85, 0.0]
        lut.RescaleTransferFunction(0.0, 1.0)
        if "cement_fill" in _arrays(vein_tubes, "CELLS"):
            bar = GetScalarBar(lut, overview)
            bar.Title = "vein cement fill"
            bar.ComponentTitle = ""
            bar.Visibility = 1
            bar.WindowLocation = "Any Location"
            bar.Position = [0.02, 0.06]
            bar.ScalarBarLength = 0.22
            bar.TitleFontSize = 14
            bar.LabelFontSize = 12
            bar.RangeLabelFormat = "%.1f"
            bar.TitleColor = bar.LabelColor = [0.92, 0.92, 0.92]

    lung_tubes = _tubes(lungs, "pulmonary arteries (tubes)", t_show, 0.6, 8)
    if lung_tubes is not None:
        _show_solid(lung_tubes, overview, ARTERY, 0.2, 0.0)

    emb_tubes = _tubes(emboli, "emboli (tubes)", t_show, 1.5, 16)
    if emb_tubes is not None:
        for view in (overview, closeup):
            d = _show_solid(emb_tubes, view, EMBOLUS, 1.0, 0.8)
            d.Ambient = 0.5

    needle_tubes = _tubes(needle, "cannula (tube)", t_show, 1.0, 16)
    if needle_tubes is not None:
        for view in (overview, closeup):
            _show_solid(needle_tubes, view, NEEDLE, 1.0, 0.9)
    if spine is not None:
        _show_solid(spine, overview, BONE, 0.35, 0.05)

    ct_file = os.path.join(vtk_dir, "ct.vti")
    body_b = _bounds([body_surface])
    if os.path.isfile(ct_file) and body_b is not None:
        ct = XMLImageDataReader(FileName=[ct_file])
        RenameSource("CT", ct)
        ct_slice = Slice(Input=ct)
        ct_slice.SliceType = "Plane"
        ct_slice.SliceType.Origin = [(a + b) / 2.0 for a, b in zip(*body_b, strict=True)]
        ct_slice.SliceType.Normal = [1.0, 0.0, 0.0]
        RenameSource("CT sagittal slice", ct_slice)
        d = Show(ct_slice, closeup)
        ColorBy(d, ("CELLS", "hu"))
        hu_lut = GetColorTransferFunction("hu")
        hu_lut.ApplyPreset("Grayscale", True)
        hu_lut.AutomaticRescaleRangeMode = "Never"
        hu_lut.RescaleTransferFunction(-200.0, 1200.0)

    # cameras: overview from anterior-left-oblique (patient's left on screen right, as on an AP
    # film), close-up from the patient's left (lateral fluoroscopy)
    all_b = _bounds([body_surface, vein_tubes, lung_tubes, emb_tubes, spine])
    if all_b is not None:
        _frame(overview, all_b, [-0.34, 0.94, 0.0], [0.0, 0.0, 1.0], zoom=1.1)
    close_b = _bounds([body_surface]) or all_b
    if close_b is not None:
        lo, hi = close_b
        pad = [0.15 * (h - l) for l, h in zip(lo, hi, strict=True)]
        _frame(
            closeup,
            ([l - p for l, p in zip(lo, pad, strict=True)], [h + p for h, p in zip(hi, pad, strict=True)]),
            [-0.97, 0.24, 0.0],
            [0.0, 0.0, 1.0],
            zoom=1.0,
        )

    head = title or os.path.basename(os.path.abspath(run_dir.rstrip("/")))
    _label(overview, f"pce-sim  {head}   t = {t_show:.1f} s", 18)
    _label(
        overview,
        "veins: blue blood, yellow cement | pulmonary arteries: red | emboli: yellow",
        13,
        "Lower Right Corner",
    )
    _label(closeup, "treated vertebra (lateral): cement white, cannula grey", 14)
    if emboli is not None:
        emboli.UpdatePipeline(t_show)
        n = emboli.GetDataInformation().GetNumberOfCells()
        _label(closeup, f"{n} emboli drawn", 14, "Lower Left Corner")
    SetActiveView(overview)
    return layout, (overview, closeup)


def main():
    a = _args()
    layout, views = build(a.run_dir, a.title, a.time)
    if a.png:
        w, h = (int(x) for x in a.size.lower().split("x"))
        layout.SetSize(w, h)
        SaveScreenshot(a.png, layout, ImageResolution=[w, h])
        print(f"pce-sim view: wrote {a.png}")


if __name__ in ("__main__", "__vtkconsole__") or not hasattr(sys.modules.get("__main__"), "__file__"):
    main()
