"""ParaView output: XML VTK files (ImageData ``.vti``, PolyData ``.vtp``) and ``.pvd`` time collections.

Everything is written with the ``vtk`` library's XML writers (appended raw binary, zlib
compression, 64-bit headers) so ParaView opens exactly what VTK's own readers read back in the
tests.

Frame and units in the files
    Geometry is in **millimetres** in the patient frame (DICOM LPS: +x patient left, +y posterior,
    +z cranial; origin = centre of the L1 body, see docs/architecture.md), so the vertebral body,
    the veins and the lungs written by different stages overlay in one ParaView view and the
    ruler reads in the unit clinicians use. Data arrays carry their unit in their name
    (``diameter_mm``, ``blood_flow_ml_per_s``, ``pressure_pa``); times in ``.pvd`` files and in
    the ``TimeValue`` field array are seconds from the start of the injection.

Grids
    A :class:`~sim.core.grid.BoneGrid` array has shape ``(nx, ny, nz)`` (C order) and ``origin_m`` is
    the centre of cell (0, 0, 0). Fields are written as **cell data**: the image's points are
    the cell corners, so its VTK origin is ``origin - spacing/2`` and its dimensions
    ``(nx+1, ny+1, nz+1)``; VTK's x-fastest cell order is the Fortran ravel of the array. A
    ``(3, nx, ny, nz)`` or ``(nx, ny, nz, k)`` array becomes a k-component cell array.

Networks and emboli
    Vessel networks are PolyData lines, one line cell per vessel segment (an edge between two
    nodes, or the edge's own polyline), with cell data per vessel. When a diameter is given the
    writer adds point data ``radius_mm`` so ParaView's *Tube* filter ("Vary Radius: By Absolute
    Scalar", radius factor 1) draws every vessel at its true calibre. Emboli are written the same
    way: one straight two-point line per fragment (centre +- length/2 along its axis) with
    ``radius_mm`` point data, rather than pre-built tube surfaces: files stay ~50x smaller and
    the tube resolution is chosen at view time (the shipped state script does this).

Categorical (string) per-vessel labels such as ``kind`` or ``lobe`` are stored as integer codes
(cell array ``kind``) plus the code-to-label table as a field string array ``kind_labels``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
from vtkmodules.vtkCommonCore import vtkPoints, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkIOXML import (
    vtkXMLImageDataReader,
    vtkXMLImageDataWriter,
    vtkXMLPolyDataReader,
    vtkXMLPolyDataWriter,
)

from sim.core.errors import GeometryError, PceSimError
from sim.core.units import ML_M3, MM_M, report_units
from sim.physics.vein_columns import lumen_fill_fraction

if TYPE_CHECKING:
    from sim.core.grid import BoneGrid, Needle
    from sim.physics.injection import InjectionResult
    from sim.physics.pulmonary_tree import PulmonaryTree
    from sim.run.results import RunResult
    from sim.run.venous_system import VenousSystem

MM_PER_M = 1.0 / MM_M
FRAME_NOTE = (
    "coordinates in mm, patient frame DICOM LPS (+x left, +y posterior, +z cranial), origin L1 centre"
)
COMPRESSION_LEVEL = 1  # zlib level: 1 is ~3x faster than 6 for <10 % larger files on these fields

# ---------------------------------------------------------------------------- array helpers


def _vtk_array(name: str, values: Any):
    """A named VTK data array holding a copy of ``values`` (bool -> uint8; (n, k) -> k components)."""
    a = np.asarray(values)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.kind not in "fiu":
        raise GeometryError(f"VTK array '{name}': dtype {a.dtype} is not numeric (use string labels)")
    if a.ndim not in (1, 2):
        raise GeometryError(f"VTK array '{name}': shape {a.shape}; expected (n,) or (n, k)")
    arr = numpy_to_vtk(np.ascontiguousarray(a), deep=1)
    arr.SetName(name)
    return arr


def _string_array(name: str, labels: Sequence[str]) -> vtkStringArray:
    arr = vtkStringArray()
    arr.SetName(name)
    for s in labels:
        arr.InsertNextValue(str(s))
    return arr


def _add_arrays(target, data: Mapping[str, Any] | None, n: int, what: str, field) -> None:
    """Add per-element arrays (length n) to a vtkPointData/vtkCellData; strings become coded labels."""
    for name, values in (data or {}).items():
        a = np.asarray(values)
        if a.shape[:1] != (n,):
            raise GeometryError(f"{what} array '{name}' has shape {a.shape}; expected first dimension {n}")
        if a.dtype.kind in "USO":
            labels, codes = np.unique(a.astype(str), return_inverse=True)
            target.AddArray(_vtk_array(name, codes.astype(np.int32)))
            field.AddArray(_string_array(f"{name}_labels", labels))
        else:
            target.AddArray(_vtk_array(name, a))


def _add_field(dataset, field_data: Mapping[str, Any] | None, time_s: float | None) -> None:
    fd = dataset.GetFieldData()
    if time_s is not None:
        fd.AddArray(_vtk_array("TimeValue", np.array([float(time_s)])))
    fd.AddArray(_string_array("frame", [FRAME_NOTE]))
    for name, value in (field_data or {}).items():
        if isinstance(value, str):
            fd.AddArray(_string_array(name, [value]))
        elif isinstance(value, list | tuple) and value and isinstance(value[0], str):
            fd.AddArray(_string_array(name, value))
        else:
            fd.AddArray(_vtk_array(name, np.atleast_1d(np.asarray(value, dtype=np.float64))))


def _configure(writer, path: Path) -> None:
    writer.SetFileName(str(path))
    writer.SetDataModeToAppended()
    writer.EncodeAppendedDataOff()
    writer.SetCompressorTypeToZLib()
    writer.SetCompressionLevel(COMPRESSION_LEVEL)
    writer.SetHeaderTypeToUInt64()


def _write(writer, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _configure(writer, path)
    if writer.Write() != 1:
        raise PceSimError(f"{path}: VTK writer failed (disk full or folder not writable?)")
    return path


def _read_arrays(attrs) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for i in range(attrs.GetNumberOfArrays()):
        arr = attrs.GetAbstractArray(i)
        if isinstance(arr, vtkStringArray):
            out[arr.GetName()] = np.array([arr.GetValue(j) for j in range(arr.GetNumberOfValues())])
        else:
            out[arr.GetName()] = vtk_to_numpy(arr).copy()
    return out


# ---------------------------------------------------------------------------- image data (.vti)


def _grid_component_arrays(name: str, a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(ncells,) or (ncells, k) in VTK (x-fastest) order from a (nx,ny,nz[,k]) or (k,nx,ny,nz) array."""
    if a.shape == shape:
        return a.ravel(order="F")
    if a.ndim == 4 and a.shape[1:] == shape:
        return np.stack([c.ravel(order="F") for c in a], axis=1)
    if a.ndim == 4 and a.shape[:3] == shape:
        return np.stack([a[..., c].ravel(order="F") for c in range(a.shape[3])], axis=1)
    raise GeometryError(
        f"grid array '{name}' has shape {a.shape}; expected {shape}, (k, *{shape}) or (*{shape}, k)"
    )


def _spacing3(spacing_m: float | Sequence[float]) -> np.ndarray:
    s = np.broadcast_to(np.asarray(spacing_m, dtype=np.float64), (3,)).copy()
    if not np.all(s > 0):
        raise GeometryError(f"grid spacing {spacing_m} m must be > 0")
    return s


def image_data(
    arrays: Mapping[str, np.ndarray],
    spacing_m: float | Sequence[float],
    origin_m: Sequence[float],
    time_s: float | None = None,
    field_data: Mapping[str, Any] | None = None,
) -> vtkImageData:
    """vtkImageData (mm, cell data) of grid arrays; ``origin_m`` is the centre of cell (0, 0, 0)."""
    if not arrays:
        raise GeometryError("image_data: no arrays given")
    scalar = [np.shape(v) for v in arrays.values() if np.ndim(v) == 3]
    if not scalar:
        raise GeometryError(f"image_data: no (nx, ny, nz) array among {list(arrays)} to fix the grid shape")
    shape = tuple(int(n) for n in scalar[0])
    h = _spacing3(spacing_m)
    o = np.asarray(origin_m, dtype=np.float64).reshape(3)
    img = vtkImageData()
    img.SetDimensions(shape[0] + 1, shape[1] + 1, shape[2] + 1)
    img.SetSpacing(*(h * MM_PER_M))
    img.SetOrigin(*((o - 0.5 * h) * MM_PER_M))
    cd = img.GetCellData()
    for name, values in arrays.items():
        cd.AddArray(_vtk_array(name, _grid_component_arrays(name, np.asarray(values), shape)))
    _add_field(img, field_data, time_s)
    return img


def write_image_data(
    path: str | Path,
    arrays: Mapping[str, np.ndarray],
    spacing_m: float | Sequence[float],
    origin_m: Sequence[float],
    time_s: float | None = None,
    field_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write grid arrays ``(nx, ny, nz)`` as cell data of a ``.vti`` file (mm, patient frame)."""
    writer = vtkXMLImageDataWriter()
    writer.SetInputData(image_data(arrays, spacing_m, origin_m, time_s, field_data))
    return _write(writer, Path(path))


def write_image_series(
    out_dir: str | Path,
    name: str,
    times_s: Sequence[float],
    frames: Iterable[Mapping[str, np.ndarray]],
    spacing_m: float | Sequence[float],
    origin_m: Sequence[float],
    field_data: Mapping[str, Any] | None = None,
) -> Path:
    """One ``.vti`` per frame in ``out_dir/name/`` and ``out_dir/name.pvd`` listing them; returns the pvd."""
    out = Path(out_dir)
    times = _check_times(name, times_s)
    entries: list[tuple[float, str]] = []
    n_frames = 0
    for i, (t, frame) in enumerate(zip(times, frames, strict=False)):
        rel = f"{name}/{name}_{i:04d}.vti"
        write_image_data(out / rel, frame, spacing_m, origin_m, time_s=t, field_data=field_data)
        entries.append((t, rel))
        n_frames += 1
    if n_frames != len(times):
        raise GeometryError(f"image series '{name}': {len(times)} times but {n_frames} frames")
    return write_pvd(out / f"{name}.pvd", entries)


def read_vti(path: str | Path) -> dict[str, Any]:
    """Read a ``.vti``: shape, spacing_mm, origin_mm (corner), cell arrays (nx, ny, nz[, k]), field data."""
    img = _read_xml(vtkXMLImageDataReader(), path)
    dims = img.GetDimensions()
    shape = (dims[0] - 1, dims[1] - 1, dims[2] - 1)
    cell = {}
    for name, flat in _read_arrays(img.GetCellData()).items():
        if flat.ndim == 1:
            cell[name] = flat.reshape(shape, order="F")
        else:
            cell[name] = np.stack(
                [flat[:, c].reshape(shape, order="F") for c in range(flat.shape[1])], axis=-1
            )
    return {
        "shape": shape,
        "spacing_mm": np.array(img.GetSpacing()),
        "origin_mm": np.array(img.GetOrigin()),
        "cell": cell,
        "field": _read_arrays(img.GetFieldData()),
    }


# ---------------------------------------------------------------------------- poly data (.vtp)


def line_polydata(
    points_m: np.ndarray | None,
    edges: np.ndarray | Sequence[np.ndarray],
    cell_data: Mapping[str, Any] | None = None,
    point_data: Mapping[str, Any] | None = None,
    diameter_m: np.ndarray | None = None,
    time_s: float | None = None,
    field_data: Mapping[str, Any] | None = None,
) -> vtkPolyData:
    """PolyData lines in mm: ``edges`` (E, 2) node pairs into ``points_m``, or a list of (k, 3) polylines.

    With polylines ``points_m`` is ignored and ``point_data`` is per polyline vertex (all
    polylines concatenated). ``diameter_m`` (E,) adds cell ``diameter_mm`` and point
    ``radius_mm`` (for shared nodes, the largest radius of the edges meeting there).
    """
    if isinstance(edges, np.ndarray) and edges.ndim == 2 and edges.shape[1] == 2 and edges.dtype.kind in "iu":
        if points_m is None:
            raise GeometryError("line_polydata: edges given as node pairs but points_m is None")
        pts = np.asarray(points_m, dtype=np.float64).reshape(-1, 3)
        e = np.asarray(edges, dtype=np.int64)
        n_cells = e.shape[0]
        if n_cells and (e.min() < 0 or e.max() >= pts.shape[0]):
            bad = int(np.flatnonzero((e < 0).any(axis=1) | (e >= pts.shape[0]).any(axis=1))[0])
            raise GeometryError(f"line_polydata: edge {bad} = {e[bad].tolist()} refers to a missing point")
        offsets = np.arange(0, 2 * n_cells + 1, 2, dtype=np.int64)
        conn = e.ravel()
        owner = None
    else:
        polys = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in edges]
        for i, p in enumerate(polys):
            if p.shape[0] < 2:
                raise GeometryError(f"line_polydata: polyline {i} has {p.shape[0]} point(s); needs >= 2")
        n_cells = len(polys)
        counts = np.array([p.shape[0] for p in polys], dtype=np.int64)
        pts = np.concatenate(polys) if polys else np.zeros((0, 3))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        conn = np.arange(pts.shape[0], dtype=np.int64)
        owner = np.repeat(np.arange(n_cells), counts)
    if not np.all(np.isfinite(pts)):
        raise GeometryError("line_polydata: non-finite point coordinates")
    poly = vtkPolyData()
    vpts = vtkPoints()
    vpts.SetData(numpy_to_vtk(np.ascontiguousarray(pts * MM_PER_M), deep=1))
    poly.SetPoints(vpts)
    lines = vtkCellArray()
    lines.SetData(numpy_to_vtk(offsets, deep=1), numpy_to_vtk(np.ascontiguousarray(conn), deep=1))
    poly.SetLines(lines)
    fd = poly.GetFieldData()
    _add_arrays(poly.GetCellData(), cell_data, n_cells, "cell", fd)
    _add_arrays(poly.GetPointData(), point_data, pts.shape[0], "point", fd)
    if diameter_m is not None:
        d = np.asarray(diameter_m, dtype=np.float64)
        if d.shape != (n_cells,):
            raise GeometryError(f"line_polydata: diameter_m has shape {d.shape}; expected ({n_cells},)")
        poly.GetCellData().AddArray(_vtk_array("diameter_mm", d * MM_PER_M))
        if owner is None:
            r = np.zeros(pts.shape[0])
            np.maximum.at(r, conn, np.repeat(0.5 * d, 2))
        else:
            r = 0.5 * d[owner]
        poly.GetPointData().AddArray(_vtk_array("radius_mm", r * MM_PER_M))
        poly.GetPointData().SetActiveScalars("radius_mm")
    _add_field(poly, field_data, time_s)
    return poly


def write_polydata(path: str | Path, poly: vtkPolyData) -> Path:
    writer = vtkXMLPolyDataWriter()
    writer.SetInputData(poly)
    return _write(writer, Path(path))


def write_network_vtp(
    path: str | Path,
    points_m: np.ndarray | None,
    edges: np.ndarray | Sequence[np.ndarray],
    cell_data: Mapping[str, Any] | None = None,
    point_data: Mapping[str, Any] | None = None,
    diameter_m: np.ndarray | None = None,
    time_s: float | None = None,
    field_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write a vessel network as ``.vtp`` lines (see :func:`line_polydata`)."""
    poly = line_polydata(points_m, edges, cell_data, point_data, diameter_m, time_s, field_data)
    return write_polydata(path, poly)


def emboli_polydata(
    centers_m: np.ndarray,
    directions: np.ndarray | None,
    lengths_m: np.ndarray,
    diameters_m: np.ndarray,
    data: Mapping[str, Any] | None = None,
    time_s: float | None = None,
) -> vtkPolyData:
    """One straight line per embolus: centre +- length/2 along its unit axis (z when unknown)."""
    c = np.asarray(centers_m, dtype=np.float64).reshape(-1, 3)
    n = c.shape[0]
    length = np.broadcast_to(np.asarray(lengths_m, dtype=np.float64), (n,))
    diam = np.broadcast_to(np.asarray(diameters_m, dtype=np.float64), (n,))
    if directions is None:
        u = np.tile([0.0, 0.0, 1.0], (n, 1))
    else:
        u = np.asarray(directions, dtype=np.float64).reshape(n, 3)
        norm = np.linalg.norm(u, axis=1)
        u = np.where(norm[:, None] > 0, u / np.where(norm > 0, norm, 1.0)[:, None], [0.0, 0.0, 1.0])
    ends = np.empty((2 * n, 3))
    ends[0::2] = c - 0.5 * length[:, None] * u
    ends[1::2] = c + 0.5 * length[:, None] * u
    edges = np.arange(2 * n, dtype=np.int64).reshape(n, 2)
    cells = {"length_mm": length * MM_PER_M}
    cells.update(data or {})
    return line_polydata(ends, edges, cells, None, diam, time_s)


def write_emboli_vtp(
    path: str | Path,
    centers_m: np.ndarray,
    directions: np.ndarray | None,
    lengths_m: np.ndarray,
    diameters_m: np.ndarray,
    data: Mapping[str, Any] | None = None,
    time_s: float | None = None,
) -> Path:
    """Write emboli as two-point lines with cell ``length_mm``, ``diameter_mm`` and point ``radius_mm``."""
    return write_polydata(path, emboli_polydata(centers_m, directions, lengths_m, diameters_m, data, time_s))


def read_vtp(path: str | Path) -> tuple[np.ndarray, list[np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Read a ``.vtp``: points (mm), line cells (point indices), and {"cell", "point", "field"} arrays."""
    poly = _read_xml(vtkXMLPolyDataReader(), path)
    pts = poly.GetPoints()
    points = vtk_to_numpy(pts.GetData()).copy() if pts is not None else np.zeros((0, 3))
    ca = poly.GetLines()
    offsets = vtk_to_numpy(ca.GetOffsetsArray()).astype(np.int64)
    conn = vtk_to_numpy(ca.GetConnectivityArray()).astype(np.int64)
    lines = [conn[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    data = {
        "cell": _read_arrays(poly.GetCellData()),
        "point": _read_arrays(poly.GetPointData()),
        "field": _read_arrays(poly.GetFieldData()),
    }
    return points, lines, data


def _read_xml(reader, path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise PceSimError(f"{p}: no such VTK file")
    reader.SetFileName(str(p))
    reader.Update()
    out = reader.GetOutput()
    if reader.GetErrorCode() != 0 or out is None:
        raise PceSimError(f"{p}: VTK reader failed")
    return out


# ---------------------------------------------------------------------------- collections (.pvd)


def _check_times(name: str, times_s: Sequence[float]) -> list[float]:
    t = [float(x) for x in times_s]
    if not all(np.isfinite(t)):
        raise GeometryError(f"time series '{name}': non-finite time in {t}")
    for i in range(1, len(t)):
        if not t[i] > t[i - 1]:
            raise GeometryError(
                f"time series '{name}': times must increase (t[{i - 1}] = {t[i - 1]}, t[{i}] = {t[i]})"
            )
    return t


def write_pvd(path: str | Path, entries: Sequence[tuple[float, str] | tuple[float, str, int]]) -> Path:
    """A ParaView collection: one ``DataSet`` per (time_s, file relative to the pvd[, part])."""
    p = Path(path)
    root = ET.Element("VTKFile", type="Collection", version="0.1", byte_order="LittleEndian")
    coll = ET.SubElement(root, "Collection")
    for entry in entries:
        t, rel = float(entry[0]), str(entry[1])
        part = int(entry[2]) if len(entry) > 2 else 0
        if os.path.isabs(rel):
            raise GeometryError(f"{p}: pvd entry '{rel}' must be relative to the pvd's folder")
        ET.SubElement(coll, "DataSet", timestep=repr(t), group="", part=str(part), file=Path(rel).as_posix())
    ET.indent(root)
    p.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(p, encoding="utf-8", xml_declaration=True)
    return p


def read_pvd(
    path: str | Path, with_parts: bool = False
) -> list[tuple[float, str]] | list[tuple[float, str, int]]:
    """(time_s, relative file) per ``DataSet`` of a ``.pvd``, in file order (with the part if asked)."""
    p = Path(path)
    if not p.is_file():
        raise PceSimError(f"{p}: no such .pvd file")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise PceSimError(f"{p}: not a valid .pvd ({exc})") from exc
    out = []
    for ds in root.iter("DataSet"):
        t, f = float(ds.get("timestep", "0")), str(ds.get("file"))
        out.append((t, f, int(ds.get("part", "0"))) if with_parts else (t, f))
    return out


# ---------------------------------------------------------------------------- one run folder

TISSUE_LABELS = ("outside", "cortex", "cancellous", "venous_channel", "cleft", "cannula")


def bone_static_fields(bone: BoneGrid, needle: Needle | None = None) -> dict[str, np.ndarray]:
    """Time-independent bone arrays: tissue label, body mask, porosity, permeability (vector and mean)."""
    porous = np.asarray(bone.porous, dtype=bool)
    body = np.asarray(bone.body, dtype=bool)
    tissue = np.where(porous, 2, np.where(body, 1, 0)).astype(np.uint8)
    for code, mask in ((3, bone.channel), (4, bone.cleft)):
        if mask is not None:
            tissue[np.asarray(mask, dtype=bool)] = code
    if needle is not None and len(needle.path_cells):
        tissue.ravel()[np.asarray(needle.path_cells, dtype=np.int64)] = 5
    k = np.asarray(bone.permeability, dtype=np.float32)
    return {
        "tissue": tissue,
        "body": (body | porous).astype(np.uint8),
        "porosity": np.asarray(bone.porosity, dtype=np.float32),
        "permeability_m2": k,
        "permeability_mean_m2": k.mean(axis=0),
    }


def select_times(times_s: Sequence[float], interval_s: float | None) -> list[int]:
    """Indices of ``times_s`` at least ``interval_s`` apart, always keeping the first and the last."""
    n = len(times_s)
    if n == 0:
        return []
    if interval_s is None or interval_s <= 0:
        return list(range(n))
    keep = [0]
    for i in range(1, n - 1):
        if times_s[i] >= times_s[keep[-1]] + interval_s * (1.0 - 1e-9):
            keep.append(i)
    if n > 1:
        keep.append(n - 1)
    return keep


def bone_frames(
    snapshots: Sequence[tuple[float, np.ndarray]], injection: InjectionResult, interval_s: float | None
) -> tuple[list[float], list[dict[str, np.ndarray]]]:
    """Per-output-time cement fields: the recorded cement-fraction snapshots plus the final fields.

    ``arrival_time_s`` of a frame is the final arrival time where it is <= the frame's time (NaN
    elsewhere); ``pressure_pa`` is only known at the end, so it is NaN in every earlier frame.
    """
    snaps = list(snapshots) or [(float(injection.end_time_s), injection.cement_fraction)]
    times = [float(t) for t, _ in snaps]
    keep = select_times(times, interval_s)
    arrival = np.asarray(injection.arrival_time_s, dtype=np.float32)
    shape = arrival.shape
    nan = np.full(shape, np.nan, dtype=np.float32)
    frames: list[dict[str, np.ndarray]] = []
    for n, i in enumerate(keep):
        t, fraction = snaps[i]
        last = n == len(keep) - 1
        frames.append(
            {
                "cement_fraction": np.asarray(fraction, dtype=np.float32),
                "arrival_time_s": np.where(arrival <= t * (1 + 1e-9) + 1e-12, arrival, np.float32(np.nan)),
                "pressure_pa": np.asarray(injection.pressure_pa, dtype=np.float32) if last else nan,
            }
        )
    return [times[i] for i in keep], frames


def venous_edge_data(venous: VenousSystem) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(polylines m, diameters m, cell arrays) of the venous side at the end of the run."""
    net = venous.network
    diam = np.asarray(net.edge_diameter_m, dtype=np.float64)
    fill = np.asarray(venous.columns.fill_m3, dtype=np.float64)
    q = np.asarray(venous.flow.edge_flow_m3_s, dtype=np.float64)
    cells: dict[str, np.ndarray] = {
        "length_mm": np.asarray(net.edge_length_m) * MM_PER_M,
        "kind": np.asarray(net.edge_kind).astype(str),
        "route": np.asarray(net.edge_route).astype(str),
        "blood_flow_ml_per_s": q / ML_M3,
        "blood_flow_abs_ml_per_s": np.abs(q) / ML_M3,
        "baseline_flow_abs_ml_per_s": np.abs(np.asarray(venous.baseline_flow.edge_flow_m3_s)) / ML_M3,
        "cement_volume_mm3": fill / MM_M**3,
        "cement_fill": lumen_fill_fraction(net, fill),
        "cement_column_diameter_mm": np.asarray(venous.columns.col_diameter_m) * MM_PER_M,
        "occluded": np.asarray(venous.columns.occluded()).astype(np.uint8),
    }
    return list(net.polylines), diam, cells


def tree_geometry(tree: PulmonaryTree) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(points m, edges (n, 2), diameters m, cell arrays) of the pulmonary tree, one line per vessel."""
    n = tree.n_vessels
    points = np.stack([tree.start_m, tree.end_m], axis=1).reshape(-1, 3)
    edges = np.arange(2 * n, dtype=np.int64).reshape(-1, 2)
    lobe = np.where(tree.lobe >= 0, np.asarray(tree.lobe_names, dtype=object)[np.maximum(tree.lobe, 0)], "")
    cells = {
        "order": np.asarray(tree.order),
        "depth": np.asarray(tree.depth),
        "lobe": lobe.astype(str),
        "segment": np.asarray(tree.segment),
        "is_leaf": np.asarray(tree.is_leaf).astype(np.uint8),
        "length_mm": np.asarray(tree.length_m) * MM_PER_M,
        "baseline_flow_ml_per_s": np.asarray(tree.baseline_flow_m3_s) / ML_M3,
    }
    return points, edges, np.asarray(tree.diameter_m, dtype=np.float64), cells


# emboli table columns (transport SI names) that are geometry, not data
_EMBOLI_GEOMETRY = ("x_m", "y_m", "z_m", "length_m", "diameter_m")


def emboli_columns(
    emboli: Mapping[str, np.ndarray], tree: PulmonaryTree | None = None
) -> dict[str, Any] | None:
    """Centres, axes, lengths and diameters (m), lodging times (s) and data of a transport emboli table.

    Each embolus is a cast along the vessel it lodged in: its axis is that vessel's axis (from the
    tree), or none for emboli that stopped elsewhere. Rows without a finite position (fragments that
    passed beyond the modelled tree) are dropped; None when there is nothing to draw.
    """
    if not emboli or len(emboli["x_m"]) == 0:
        return None
    centers = np.stack([np.asarray(emboli[f"{a}_m"], dtype=np.float64) for a in "xyz"], axis=1)
    ok = np.all(np.isfinite(centers), axis=1)
    if not ok.any():
        return None
    directions = None
    if tree is not None:
        vessel = np.asarray(emboli["vessel_id"], dtype=np.int64)
        axis = tree.end_m - tree.start_m
        directions = np.where((vessel >= 0)[:, None], axis[np.maximum(vessel, 0)], np.array([0.0, 0.0, 1.0]))
        directions = directions[ok]
    data: dict[str, np.ndarray] = {}
    for name, values in emboli.items():
        a = np.asarray(values)
        if name in _EMBOLI_GEOMETRY or a.ndim != 1:
            continue
        new_name, a = report_units(name, a) if a.dtype.kind in "iuf" else (name, a)
        data[new_name] = a[ok]
    if tree is not None and "lobe" in emboli:
        idx = np.asarray(emboli["lobe"], dtype=np.int64)[ok]
        data["lobe"] = np.where(idx >= 0, np.asarray(tree.lobe_names, dtype=object)[np.maximum(idx, 0)], "")
        data["lobe"] = data["lobe"].astype(str)
    return {
        "centers_m": centers[ok],
        "directions": directions,
        "lengths_m": np.asarray(emboli["length_m"], dtype=np.float64)[ok],
        "diameters_m": np.asarray(emboli["diameter_m"], dtype=np.float64)[ok],
        "time_s": np.asarray(emboli["time_s"], dtype=np.float64)[ok],
        "data": data,
    }


_NO_EMBOLI: dict[str, Any] = {
    "centers_m": np.empty((0, 3)),
    "directions": None,
    "lengths_m": np.empty(0),
    "diameters_m": np.empty(0),
    "time_s": np.empty(0),
    "data": {},
}


def needle_polydata(needle: Needle) -> vtkPolyData:
    """The cannula(s): from the tip back along the shaft for the cannula length (out of the patient)."""
    tips = np.asarray(needle.tip_positions_m, dtype=np.float64).reshape(-1, 3)
    entries = np.asarray(needle.entry_positions_m, dtype=np.float64).reshape(-1, 3)
    axis = entries - tips
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    axis = axis / np.where(norm > 0, norm, 1.0)
    ends = tips + float(needle.length_m) * axis
    pts = np.stack([tips, ends], axis=1).reshape(-1, 3)
    edges = np.arange(pts.shape[0], dtype=np.int64).reshape(-1, 2)
    return line_polydata(
        pts,
        edges,
        None,
        None,
        np.full(len(tips), float(needle.inner_diameter_m)),
        field_data={"note": "cannula inner diameter"},
    )


def spine_polydata(levels: Mapping[str, Mapping[str, float]], n_around: int = 40) -> vtkPolyData:
    """Closed elliptic cylinders (mm) for vertebral bodies: ``{level: {width_m, depth_m, height_m, z_m}}``.

    Context for the view only (neighbouring levels around the simulated body, at their
    morphometric size and height in the patient frame); cell data ``level_index`` numbers them.
    """
    pts: list[np.ndarray] = []
    offsets, conn, level_index = [0], [], []
    ang = np.linspace(0.0, 2.0 * np.pi, n_around, endpoint=False)
    for li, (name, lv) in enumerate(levels.items()):
        a, b, h, z = (float(lv[k]) for k in ("width_m", "depth_m", "height_m", "z_m"))
        if not (a > 0 and b > 0 and h > 0):
            raise GeometryError(f"spine level {name}: width/depth/height must be > 0 (got {a}, {b}, {h})")
        ring = np.stack([0.5 * a * np.cos(ang), 0.5 * b * np.sin(ang), np.zeros(n_around)], axis=1)
        base = sum(p.shape[0] for p in pts)
        pts.append(ring + [0.0, 0.0, z - 0.5 * h])
        pts.append(ring + [0.0, 0.0, z + 0.5 * h])
        i = np.arange(n_around)
        j = (i + 1) % n_around
        cells = np.stack([base + i, base + j, base + n_around + j, base + n_around + i], axis=1).tolist()
        cells.append(list(range(base + n_around - 1, base - 1, -1)))
        cells.append(list(range(base + n_around, base + 2 * n_around)))
        for c in cells:
            conn.extend(c)
            offsets.append(offsets[-1] + len(c))
            level_index.append(li)
    poly = vtkPolyData()
    vpts = vtkPoints()
    xyz = np.concatenate(pts) if pts else np.zeros((0, 3))
    vpts.SetData(numpy_to_vtk(np.ascontiguousarray(xyz * MM_PER_M), deep=1))
    poly.SetPoints(vpts)
    polys = vtkCellArray()
    polys.SetData(
        numpy_to_vtk(np.asarray(offsets, dtype=np.int64), deep=1),
        numpy_to_vtk(np.asarray(conn, dtype=np.int64), deep=1),
    )
    poly.SetPolys(polys)
    poly.GetCellData().AddArray(_vtk_array("level_index", np.asarray(level_index, dtype=np.int32)))
    _add_field(poly, {"level_names": list(levels)}, None)
    return poly


def spine_levels_from_geometry(skip: str | None = None) -> dict[str, dict[str, float]]:
    """Body size and height of every tabulated level (``geometries/vertebrae.yaml``), SI."""
    from sim.core.config import LEVELS
    from sim.physics.bone import load_vertebra

    out = {}
    for name in LEVELS:
        if name == skip:
            continue
        lv = load_vertebra(name)
        out[name] = {k: lv[k] for k in ("width_m", "depth_m", "height_m")} | {"z_m": lv["z_center_m"]}
    return out


def write_ct_vti(path: str | Path, ct_view: Mapping[str, Any]) -> Path:
    """The patient's CT around the treated vertebra in the patient frame (``ct.vti``, mm).

    Cell data: ``hu`` (Hounsfield units), ``label`` (the label map's values), ``ct_body`` (the
    vertebral body the model kept) and ``ct_cancellous`` (its cancellous region), on the working grid
    of :mod:`sim.anatomy.ct_bone` (axis-aligned, the scan's finest voxel edge), so a slice through it
    shows the cement of ``bone.pvd`` inside the patient's own bone.
    """
    arrays = {
        "hu": np.asarray(ct_view["hu"], dtype=np.float32),
        "label": np.asarray(ct_view["labels"], dtype=np.int32),
        "ct_body": np.asarray(ct_view["body"], dtype=np.uint8),
        "ct_cancellous": np.asarray(ct_view["cancellous"], dtype=np.uint8),
    }
    return write_image_data(path, arrays, float(ct_view["spacing_m"]), np.asarray(ct_view["origin_m"]))


def write_run_vtk(out_dir: str | Path, result: RunResult, spine: bool = True) -> Path:
    """Write a run as ParaView files in ``out_dir``; returns ``out_dir/pce_sim.pvd``.

    Files (one ``.pvd`` per object, plus ``pce_sim.pvd`` holding all of them as parts of one
    multiblock time series, ``pce_sim_parts.txt`` naming the parts in order):

    - ``bone.pvd`` + ``bone/bone_NNNN.vti``: cement_fraction, arrival_time_s, pressure_pa, tissue,
      body, porosity, permeability_m2 (kx, ky, kz), permeability_mean_m2, one frame per output
      time (the recorded snapshots at least ``output.vtk_interval_s`` apart, plus the last);
    - ``veins.pvd`` + ``veins/veins_NNNN.vtp``: vessel lines with diameter, blood flow, cement fill,
      occluded, kind, route, over time;
    - ``lungs.pvd`` / ``lungs.vtp``: the pulmonary arterial tree;
    - ``emboli.pvd`` + ``emboli/emboli_NNNN.vtp``: the emboli lodged by each output time, each a cast
      along its vessel; ``needle.vtp``: the cannula; ``spine.vtp`` (with ``spine``): the other
      tabulated vertebral bodies as context;
    - ``ct.vti`` (CT anatomy only): the scan and its labels around the vertebra (:func:`write_ct_vti`).
    """
    art = result.artifacts
    if art is None:
        raise PceSimError("write_run_vtk: the run result holds no stage objects (was it read from disk?)")
    interval_s = result.scenario.output.vtk_interval_s
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[str, list[tuple[float, str]]]] = []

    bone, injection = art.bone, art.injection
    static = bone_static_fields(bone, art.needle)
    times, frames = bone_frames(art.recording.bone_snapshots, injection, interval_s)
    field = {"level": str(bone.level), "tissue_labels": list(TISSUE_LABELS)}
    pvd = write_image_series(
        out, "bone", times, ({**f, **static} for f in frames), bone.spacing_m, bone.origin_m, field
    )
    parts.append(("bone", read_pvd(pvd)))
    t_end = times[-1]

    write_polydata(out / "needle.vtp", needle_polydata(art.needle))
    parts.append(("needle", [(0.0, "needle.vtp")]))

    ct_view = bone.meta.get("ct_view")
    if ct_view is not None:
        write_ct_vti(out / "ct.vti", ct_view)
        parts.append(("ct", [(0.0, "ct.vti")]))

    if spine:
        try:
            levels = spine_levels_from_geometry(skip=str(bone.level))
        except (OSError, KeyError) as exc:
            raise GeometryError(f"spine context: geometries/vertebrae.yaml unreadable ({exc})") from exc
        write_polydata(out / "spine.vtp", spine_polydata(levels))
        parts.append(("spine", [(0.0, "spine.vtp")]))

    polys, diam, cells = venous_edge_data(art.venous)
    full = art.recording.edge_series()
    series = [full[i] for i in select_times([t for t, _ in full], interval_s)]
    _check_times("veins", [t for t, _ in series])
    entries = []
    for i, (t, extra) in enumerate(series):
        rel = f"veins/veins_{i:04d}.vtp"
        step = dict(cells)
        step.update(dict(report_units(k, np.asarray(v)) for k, v in extra.items()))
        write_network_vtp(out / rel, None, polys, step, diameter_m=diam, time_s=float(t))
        entries.append((float(t), rel))
    t_end = max(t_end, entries[-1][0])
    write_pvd(out / "veins.pvd", entries)
    parts.append(("veins", entries))

    points, edges, tdiam, tcells = tree_geometry(art.tree)
    write_network_vtp(out / "lungs.vtp", points, edges, tcells, diameter_m=tdiam)
    write_pvd(out / "lungs.pvd", [(0.0, "lungs.vtp")])
    parts.append(("lungs", [(0.0, "lungs.vtp")]))

    # an empty series too when nothing embolised, so every run folder has the same files
    emb = emboli_columns(art.transport.emboli, art.tree) or _NO_EMBOLI
    t_emb = emb["time_s"]
    finite = t_emb[np.isfinite(t_emb)]
    late = {float(finite.max())} if finite.size and finite.max() > times[-1] else set()
    entries = []
    for i, t in enumerate(sorted(set(times) | late)):
        sel = np.isfinite(t_emb) & (t_emb <= t * (1 + 1e-12))
        rel = f"emboli/emboli_{i:04d}.vtp"
        write_emboli_vtp(
            out / rel,
            emb["centers_m"][sel],
            None if emb["directions"] is None else emb["directions"][sel],
            emb["lengths_m"][sel],
            emb["diameters_m"][sel],
            {k: v[sel] for k, v in emb["data"].items()},
            time_s=t,
        )
        entries.append((t, rel))
    t_end = max(t_end, entries[-1][0])
    write_pvd(out / "emboli.pvd", entries)
    parts.append(("emboli", entries))

    top = write_pvd(out / "pce_sim.pvd", _every_part_at_every_time(parts))
    _write_index(out, [name for name, _ in parts], t_end)
    return top


def _every_part_at_every_time(
    parts: list[tuple[str, list[tuple[float, str]]]],
) -> list[tuple[float, str, int]]:
    """Entries of the multiblock collection: every part at every time of any part.

    ParaView's PVD reader shows, per part, only a dataset stamped with the current time, so each part
    is listed at every time with its latest file at or before it (its first before it has any).
    """
    times = sorted({t for _, entries in parts for t, _ in entries})
    out = []
    for t in times:
        for p, (_, entries) in enumerate(parts):
            ts = [te for te, _ in entries]
            i = max(int(np.searchsorted(ts, t * (1 + 1e-12) + 1e-15, side="right")) - 1, 0)
            out.append((t, entries[i][1], p))
    return out


def _write_index(out: Path, names: list[str], t_end: float) -> None:
    """``pce_sim_parts.txt``: part order of pce_sim.pvd (block i = line i), read by the state script."""
    (out / "pce_sim_parts.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
