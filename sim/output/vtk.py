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
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

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

MM_PER_M = 1.0e3
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


# ---------------------------------------------------------------------------- duck-typed columns


def columns_of(obj: Any) -> dict[str, Any]:
    """Name -> value of a dict, a FragmentSet-like object (``as_columns``), a dataclass or an object."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "as_columns"):
        return dict(obj.as_columns())
    if is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclass_fields(obj)}
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


# SI name suffix -> (report suffix, factor): what a user reads next to a paper.
_REPORT_UNITS: tuple[tuple[str, str, float], ...] = (
    ("_m3_per_s", "_ml_per_s", 1.0e6),
    ("_m3_s", "_ml_per_s", 1.0e6),
    ("_m3", "_mm3", 1.0e9),
    ("_m2", "_mm2", 1.0e6),
    ("_m", "_mm", 1.0e3),
)


def report_units(name: str, values: np.ndarray) -> tuple[str, np.ndarray]:
    """Rename/convert an SI-suffixed array to the unit used in the files (m -> mm, m^3/s -> ml/s, ...)."""
    for si, rep, factor in _REPORT_UNITS:
        if name.endswith(si):
            return name[: -len(si)] + rep, np.asarray(values, dtype=np.float64) * factor
    return name, values


def per_element_arrays(obj: Any, n: int, skip: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Every 1-D attribute of length ``n`` (numbers, bools or labels), converted to report units."""
    skip = set(skip)
    out: dict[str, np.ndarray] = {}
    for name, value in columns_of(obj).items():
        if name in skip or not isinstance(value, np.ndarray | list | tuple):
            continue
        a = np.asarray(value)
        if a.ndim != 1 or a.shape[0] != n or a.dtype.kind not in "biufUS":
            continue
        new_name, a = report_units(name, a) if a.dtype.kind in "iuf" else (name, a)
        out[new_name] = a
    return out


# ---------------------------------------------------------------------------- one run folder

TISSUE_LABELS = ("outside", "cortex", "cancellous", "venous_channel", "cleft", "cannula")
_TIME_COLUMNS = ("lodge_time_s", "lodged_time_s", "time_s", "arrival_time_s", "birth_time_s")


def bone_static_fields(bone: Any, needle: Any = None) -> dict[str, np.ndarray]:
    """Time-independent bone arrays: tissue label, body mask, porosity, permeability (vector and mean)."""
    porous = np.asarray(bone.porous, dtype=bool)
    body = np.asarray(getattr(bone, "body", porous), dtype=bool)
    tissue = np.where(porous, 2, np.where(body, 1, 0)).astype(np.uint8)
    for code, attr in ((3, "channel"), (4, "cleft")):
        mask = getattr(bone, attr, None)
        if mask is not None:
            tissue[np.asarray(mask, dtype=bool)] = code
    path_cells = getattr(needle, "path_cells", None)
    if path_cells is not None and len(path_cells):
        tissue.ravel()[np.asarray(path_cells, dtype=np.int64)] = 5
    out = {"tissue": tissue, "body": (body | porous).astype(np.uint8)}
    if getattr(bone, "porosity", None) is not None:
        out["porosity"] = np.asarray(bone.porosity, dtype=np.float32)
    k = getattr(bone, "permeability", None)
    if k is not None:
        k = np.asarray(k, dtype=np.float32)
        if k.ndim == 4:
            out["permeability_m2"] = k
            out["permeability_mean_m2"] = k.mean(axis=0)
        else:
            out["permeability_m2"] = k
    return out


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
    injection: Any, shape: tuple[int, int, int], interval_s: float | None
) -> tuple[list[float], list[dict[str, np.ndarray]]]:
    """Per-output-time cement fields from an InjectionResult-like object (``snapshots`` + final fields).

    ``arrival_time_s`` of a frame is the final arrival time where it is <= the frame's time (NaN
    elsewhere); ``pressure_pa`` is only known at the end, so it is NaN in every earlier frame
    unless a snapshot carries its own (a snapshot may be ``(t, fraction)`` or ``(t, {name: field})``).
    """
    snaps = list(getattr(injection, "snapshots", None) or [])
    final_cf = getattr(injection, "cement_fraction", None)
    if not snaps and final_cf is not None:
        snaps = [(float(getattr(injection, "end_time_s", 0.0)), final_cf)]
    times = [float(t) for t, _ in snaps]
    keep = select_times(times, interval_s)
    arrival = getattr(injection, "arrival_time_s", None)
    arrival = None if arrival is None else np.asarray(arrival, dtype=np.float32)
    pressure = getattr(injection, "pressure_pa", None)
    nan = np.full(shape, np.nan, dtype=np.float32)
    frames: list[dict[str, np.ndarray]] = []
    for n, i in enumerate(keep):
        t, snap = snaps[i]
        frame = dict(snap) if isinstance(snap, Mapping) else {"cement_fraction": snap}
        frame = {k: np.asarray(v, dtype=np.float32) for k, v in frame.items()}
        if arrival is not None and "arrival_time_s" not in frame:
            frame["arrival_time_s"] = np.where(arrival <= t * (1 + 1e-9) + 1e-12, arrival, np.float32(np.nan))
        if pressure is not None and "pressure_pa" not in frame:
            last = n == len(keep) - 1
            frame["pressure_pa"] = np.asarray(pressure, dtype=np.float32) if last else nan
        frames.append(frame)
    return [times[i] for i in keep], frames


def venous_edge_data(venous: Any) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """(polylines m, diameters m, cell arrays) of a VenousSystem (network, flow, columns) or a network."""
    net = getattr(venous, "network", venous)
    diam = np.asarray(net.edge_diameter_m, dtype=np.float64)
    ne = diam.shape[0]
    polys = getattr(net, "polylines", None)
    if polys is None or len(polys) != ne:
        pos = np.asarray(net.node_pos_m, dtype=np.float64)
        polys = [pos[[u, v]] for u, v in zip(net.edge_u, net.edge_v, strict=True)]
    cells: dict[str, np.ndarray] = {"length_mm": np.asarray(net.edge_length_m) * MM_PER_M}
    for attr in ("edge_kind", "edge_route"):
        if getattr(net, attr, None) is not None:
            cells[attr[5:]] = np.asarray(getattr(net, attr)).astype(str)
    flow = getattr(venous, "flow", None)
    if flow is not None and getattr(flow, "edge_flow_m3_s", None) is not None:
        q = np.asarray(flow.edge_flow_m3_s, dtype=np.float64)
        cells["blood_flow_ml_per_s"] = q * 1.0e6
        cells["blood_flow_abs_ml_per_s"] = np.abs(q) * 1.0e6
    base = getattr(venous, "baseline_flow", None)
    if base is not None and getattr(base, "edge_flow_m3_s", None) is not None:
        cells["baseline_flow_abs_ml_per_s"] = np.abs(np.asarray(base.edge_flow_m3_s)) * 1.0e6
    cols = getattr(venous, "columns", None)
    if cols is not None:
        from sim.physics.vein_columns import lumen_fill_fraction

        fill = np.asarray(cols.fill_m3, dtype=np.float64)
        cells["cement_volume_mm3"] = fill * 1.0e9
        cells["cement_fill"] = lumen_fill_fraction(net, fill)
        cells["cement_column_diameter_mm"] = np.asarray(cols.col_diameter_m) * MM_PER_M
        if hasattr(cols, "occluded"):
            cells["occluded"] = np.asarray(cols.occluded()).astype(np.uint8)
    return list(polys), diam, cells


_POS_NAMES = ("node_pos_m", "node_position_m", "positions_m", "pos_m", "points_m")
_DIAM_NAMES = ("edge_diameter_m", "diameter_m", "vessel_diameter_m")
_SEGMENT_NAMES = (("start_m", "end_m"), ("proximal_m", "distal_m"), ("p0_m", "p1_m"))


def network_geometry(net: Any) -> tuple[Any, Any, np.ndarray | None, dict[str, np.ndarray]]:
    """(points_m or None, edges (E,2) or polylines, diameters m, per-edge cell arrays) of any vessel tree.

    Recognised layouts: ``polylines`` per edge; node positions (``node_pos_m`` ...) with
    ``edge_u``/``edge_v``, ``edges`` (E, 2) or ``parent`` (per node, -1 at roots); or per-vessel
    end points (``start_m``/``end_m``). Every other 1-D attribute with one value per edge is
    written as cell data in report units (``edge_`` prefixes dropped); a ``flow`` attribute
    holding per-edge arrays is merged the same way.
    """
    cols = columns_of(net)
    pos = next((np.asarray(cols[k], dtype=np.float64) for k in _POS_NAMES if k in cols), None)
    pick = None  # index into per-node arrays when edges come from a parent array
    points, edges = pos, None
    if "edge_u" in cols and "edge_v" in cols:
        edges = np.stack([np.asarray(cols["edge_u"]), np.asarray(cols["edge_v"])], axis=1).astype(np.int64)
    elif "edges" in cols and np.ndim(cols["edges"]) == 2:
        edges = np.asarray(cols["edges"], dtype=np.int64)
    elif "parent" in cols and pos is not None:
        parent = np.asarray(cols["parent"], dtype=np.int64)
        pick = np.flatnonzero(parent >= 0)
        edges = np.stack([parent[pick], pick], axis=1)
    else:
        for a, b in _SEGMENT_NAMES:
            if a in cols and b in cols:
                p0, p1 = np.asarray(cols[a], dtype=np.float64), np.asarray(cols[b], dtype=np.float64)
                points = np.stack([p0, p1], axis=1).reshape(-1, 3)
                edges = np.arange(points.shape[0], dtype=np.int64).reshape(-1, 2)
                break
    polys = cols.get("polylines")
    if edges is None and polys is None:
        raise GeometryError(
            f"{type(net).__name__}: no vessel geometry found (expected polylines, node_pos_m with "
            "edge_u/edge_v, edges or parent, or start_m/end_m)"
        )
    if edges is not None and points is None:
        raise GeometryError(
            f"{type(net).__name__}: edges given but no node positions ({', '.join(_POS_NAMES)})"
        )
    ne = edges.shape[0] if edges is not None else len(polys)
    if polys is not None and len(polys) == ne:
        geom: Any = list(polys)
        points = None
    else:
        geom = edges
    skip = (
        set(_POS_NAMES)
        | {"edge_u", "edge_v", "edges", "parent", "polylines"}
        | {n for ab in _SEGMENT_NAMES for n in ab}
    )
    if pick is not None:
        src = {k: np.asarray(v)[pick] for k, v in per_element_arrays(net, len(pos), skip).items()}
    else:
        src = per_element_arrays(net, ne, skip)
    flow = cols.get("flow")
    if flow is not None and not isinstance(flow, np.ndarray):
        src.update(per_element_arrays(flow, ne))
    cells: dict[str, np.ndarray] = {}
    for name, values in src.items():
        cells[name[5:] if name.startswith("edge_") else name] = values
    diam = None
    for k in _DIAM_NAMES:
        if k in cols and np.shape(cols[k]) in ((ne,), (len(pos) if pos is not None else -1,)):
            d = np.asarray(cols[k], dtype=np.float64)
            diam = d[pick] if pick is not None else d
            cells.pop(report_units(k, d)[0].removeprefix("edge_"), None)
            break
    return points, geom, diam, cells


def emboli_columns(emboli: Any) -> dict[str, np.ndarray] | None:
    """Centres (m), axes, lengths (m), diameters (m), time (s) and data of an emboli table/object.

    Accepts a dict or object with ``position_m`` / ``center_m`` (n, 3) or ``x_m, y_m, z_m`` (or the
    same in mm), ``length_m``/``length_mm``, ``diameter_m``/``diameter_mm``, optional
    ``direction`` (n, 3) and a time column (lodging time preferred). An object with an
    ``emboli`` attribute (a transport result) is unwrapped. Rows without a finite position
    (fragments that passed beyond the modelled tree) are dropped.
    """
    if emboli is None:
        return None
    if not isinstance(emboli, Mapping) and getattr(emboli, "emboli", None) is not None:
        emboli = emboli.emboli
    cols = {k: v for k, v in columns_of(emboli).items() if isinstance(v, np.ndarray | list | tuple)}
    if not cols:
        return None
    centers = None
    for scale, names in (
        (1.0, ("position_m", "center_m", "centers_m", "pos_m")),
        (1e-3, ("position_mm", "center_mm")),
    ):
        for k in names:
            if k in cols and np.ndim(cols[k]) == 2:
                centers = np.asarray(cols[k], dtype=np.float64) * scale
    for scale, sfx in ((1.0, "_m"), (1e-3, "_mm")):
        if centers is None and all(f"{a}{sfx}" in cols for a in "xyz"):
            centers = (
                np.stack([np.asarray(cols[f"{a}{sfx}"], dtype=np.float64) for a in "xyz"], axis=1) * scale
            )
    if centers is None:
        return None
    n = centers.shape[0]

    def metres(base: str, default: float) -> np.ndarray:
        if f"{base}_m" in cols:
            return np.asarray(cols[f"{base}_m"], dtype=np.float64)
        if f"{base}_mm" in cols:
            return np.asarray(cols[f"{base}_mm"], dtype=np.float64) * 1e-3
        return np.full(n, default)

    length, diam = metres("length", 1e-3), metres("diameter", 1e-3)
    direction = next(
        (np.asarray(cols[k], dtype=np.float64) for k in ("direction", "axis") if k in cols), None
    )
    time = next((np.asarray(cols[k], dtype=np.float64) for k in _TIME_COLUMNS if k in cols), None)
    ok = np.all(np.isfinite(centers), axis=1)
    skip = {"position_m", "center_m", "centers_m", "pos_m", "position_mm", "center_mm", "direction", "axis"}
    skip |= {f"{a}{s}" for a in "xyz" for s in ("_m", "_mm")} | {
        "length_m",
        "length_mm",
        "diameter_m",
        "diameter_mm",
    }
    data = {k: v[ok] for k, v in per_element_arrays(emboli, n, skip).items()}
    return {
        "centers_m": centers[ok],
        "directions": None if direction is None else direction[ok],
        "lengths_m": length[ok],
        "diameters_m": diam[ok],
        "time_s": None if time is None else time[ok],
        "data": data,
    }


def needle_polydata(needle: Any) -> vtkPolyData | None:
    """The cannula(s): from the tip back along the shaft for the cannula length (out of the patient)."""
    tips = getattr(needle, "tip_positions_m", None)
    entries = getattr(needle, "entry_positions_m", None)
    if tips is None or entries is None:
        return None
    tips = np.asarray(tips, dtype=np.float64).reshape(-1, 3)
    entries = np.asarray(entries, dtype=np.float64).reshape(-1, 3)
    axis = entries - tips
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    axis = axis / np.where(norm > 0, norm, 1.0)
    length = float(getattr(needle, "length_m", 0.125) or 0.125)
    ends = tips + length * axis
    pts = np.stack([tips, ends], axis=1).reshape(-1, 3)
    edges = np.arange(pts.shape[0], dtype=np.int64).reshape(-1, 2)
    d = float(getattr(needle, "inner_diameter_m", 2.5e-3))
    return line_polydata(
        pts, edges, None, None, np.full(len(tips), d), field_data={"note": "cannula inner diameter"}
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
    from sim.core.geometry_data import load_geometry_yaml

    table = load_geometry_yaml("vertebrae.yaml")["levels"]
    out = {}
    for name, lv in table.items():
        if name == skip:
            continue

        def mm(key: str, lv: Mapping[str, Any] = lv) -> float:
            v = lv[key]
            return float(v[0] if isinstance(v, list | tuple) else v) * 1e-3

        height = 0.5 * (mm("height_anterior_mm") + mm("height_posterior_mm"))
        out[name] = {
            "width_m": mm("width_mm"),
            "depth_m": mm("depth_mm"),
            "height_m": height,
            "z_m": mm("z_center_mm"),
        }
    return out


def write_run_vtk(
    out_dir: str | Path,
    result: Any = None,
    *,
    bone: Any = None,
    needle: Any = None,
    injection: Any = None,
    venous: Any = None,
    tree: Any = None,
    emboli: Any = None,
    venous_series: Iterable[tuple[float, Mapping[str, np.ndarray]]] | None = None,
    interval_s: float | None = None,
    spine: bool = True,
) -> Path:
    """Write whatever is given as ParaView files in ``out_dir``; returns ``out_dir/pce_sim.pvd``.

    ``result`` (a RunResult) supplies missing arguments from ``result.artifacts`` (``bone``,
    ``needle``, ``injection``, ``venous``, ``tree``, ``transport`` for emboli) and the interval from
    ``result.scenario.output.vtk_interval_s``. Files (one ``.pvd`` per object, plus
    ``pce_sim.pvd`` holding all of them as parts of one multiblock time series):

    - ``bone.pvd`` + ``bone/bone_NNNN.vti``: cement_fraction, arrival_time_s, pressure_pa, tissue,
      body, porosity, permeability_m2 (kx, ky, kz), permeability_mean_m2, one frame per output
      time (snapshots at least ``interval_s`` apart, plus the last);
    - ``veins.pvd`` (+ ``veins/veins_NNNN.vtp`` when ``venous_series`` gives per-edge arrays over
      time): vessel lines with diameter, blood flow, cement fill, occluded, kind, route;
    - ``lungs.pvd`` / ``lungs.vtp``: the pulmonary arterial tree (any per-vessel arrays it has);
    - ``emboli.pvd`` + ``emboli/emboli_NNNN.vtp``: emboli present by each output time (all in one
      file when they carry no time); ``needle.vtp``: the cannula; ``spine.vtp`` (with ``bone`` and
      ``spine``): the other tabulated vertebral bodies as context.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if result is not None:
        art = getattr(result, "artifacts", None) or {}
        bone = bone if bone is not None else art.get("bone")
        needle = needle if needle is not None else art.get("needle")
        injection = injection if injection is not None else art.get("injection")
        venous = venous if venous is not None else art.get("venous")
        tree = tree if tree is not None else art.get("tree")
        if emboli is None:
            emboli = art.get("emboli", art.get("transport"))
            if emboli_columns(emboli) is None and getattr(result, "emboli", None):
                emboli = result.emboli
        if interval_s is None:
            interval_s = getattr(
                getattr(getattr(result, "scenario", None), "output", None), "vtk_interval_s", None
            )
    parts: list[tuple[str, list[tuple[float, str]]]] = []
    t_end = 0.0

    if bone is not None or injection is not None:
        grid_src = bone if bone is not None else injection
        spacing, origin = float(grid_src.spacing_m), np.asarray(grid_src.origin_m, dtype=np.float64)
        static = bone_static_fields(bone, needle) if bone is not None else {}
        shape = tuple(static["body"].shape) if static else tuple(np.shape(injection.cement_fraction))
        times, frames = bone_frames(injection, shape, interval_s) if injection is not None else ([0.0], [{}])
        field = {"level": str(getattr(bone, "level", ""))}
        if static:
            field["tissue_labels"] = list(TISSUE_LABELS)
        pvd = write_image_series(
            out, "bone", times, ({**f, **static} for f in frames), spacing, origin, field
        )
        parts.append(("bone", read_pvd(pvd)))
        t_end = max(t_end, times[-1])

    if needle is not None:
        poly = needle_polydata(needle)
        if poly is not None:
            write_polydata(out / "needle.vtp", poly)
            parts.append(("needle", [(0.0, "needle.vtp")]))

    if bone is not None and spine:
        try:
            levels = spine_levels_from_geometry(skip=str(getattr(bone, "level", "")))
        except (OSError, KeyError) as exc:
            raise GeometryError(f"spine context: geometries/vertebrae.yaml unreadable ({exc})") from exc
        write_polydata(out / "spine.vtp", spine_polydata(levels))
        parts.append(("spine", [(0.0, "spine.vtp")]))

    if venous is not None:
        polys, diam, cells = venous_edge_data(venous)
        series = list(venous_series or [])
        if not series and hasattr(venous, "edge_series"):
            full = venous.edge_series()
            series = [full[i] for i in select_times([t for t, _ in full], interval_s)]
        if series:
            entries = []
            _check_times("veins", [t for t, _ in series])
            for i, (t, extra) in enumerate(series):
                rel = f"veins/veins_{i:04d}.vtp"
                step = dict(cells)
                step.update(dict(report_units(k, np.asarray(v)) for k, v in extra.items()))
                write_network_vtp(out / rel, None, polys, step, diameter_m=diam, time_s=float(t))
                entries.append((float(t), rel))
            t_end = max(t_end, entries[-1][0])
        else:
            write_network_vtp(out / "veins.vtp", None, polys, cells, diameter_m=diam)
            entries = [(0.0, "veins.vtp")]
        write_pvd(out / "veins.pvd", entries)
        parts.append(("veins", entries))

    if tree is not None:
        points, geom, diam, cells = network_geometry(tree)
        write_network_vtp(out / "lungs.vtp", points, geom, cells, diameter_m=diam)
        write_pvd(out / "lungs.pvd", [(0.0, "lungs.vtp")])
        parts.append(("lungs", [(0.0, "lungs.vtp")]))

    emb = emboli_columns(emboli)
    if emb is not None:
        entries = []
        if emb["time_s"] is None:
            write_emboli_vtp(out / "emboli.vtp", emb["centers_m"], emb["directions"], emb["lengths_m"],
                             emb["diameters_m"], emb["data"])  # fmt: skip
            entries = [(0.0, "emboli.vtp")]
        else:
            t_emb = emb["time_s"]
            bone_times = [t for t, _ in parts[0][1]] if parts and parts[0][0] == "bone" else [0.0]
            finite = t_emb[np.isfinite(t_emb)]
            late = {float(finite.max())} if finite.size and finite.max() > bone_times[-1] else set()
            steps = sorted(set(bone_times) | late)
            for i, t in enumerate(steps):
                sel = np.isfinite(t_emb) & (t_emb <= t * (1 + 1e-12))
                rel = f"emboli/emboli_{i:04d}.vtp"
                write_emboli_vtp(
                    out / rel,
                    emb["centers_m"][sel],
                    None if emb["directions"] is None else emb["directions"][sel],
                    emb["lengths_m"][sel],
                    emb["diameters_m"][sel],
                    {k: v[sel] for k, v in emb["data"].items()} | {"time_s": t_emb[sel]},
                    time_s=t,
                )
                entries.append((t, rel))
            t_end = max(t_end, steps[-1])
        write_pvd(out / "emboli.pvd", entries)
        parts.append(("emboli", entries))

    all_entries = [(t, rel, p) for p, (_, entries) in enumerate(parts) for t, rel in entries]
    top = write_pvd(out / "pce_sim.pvd", all_entries)
    _write_index(out, [name for name, _ in parts], t_end)
    return top


def _write_index(out: Path, names: list[str], t_end: float) -> None:
    """``pce_sim_parts.txt``: part order of pce_sim.pvd (block i = line i), read by the state script."""
    (out / "pce_sim_parts.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
