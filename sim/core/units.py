"""Clinical units at the edges, SI inside: the one place where units are converted.

Config fields carry their unit in the name (``volume_ml``, ``diameter_mm``, ``cvp_mmhg``).
:func:`to_si` walks a validated scenario and renames every such field to its SI twin
(``volume_m3``, ``diameter_m``, ``cvp_pa``) with the value converted. Fields whose name
has no clinical unit suffix are passed through unchanged (they are SI or dimensionless).
Reports convert back with the ``*_TO_*`` helpers below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MMHG_PA = 133.322387415  # 1 mmHg in Pa
CMH2O_PA = 98.0665  # 1 cmH2O in Pa
ML_M3 = 1.0e-6  # 1 ml in m^3
MM_M = 1.0e-3  # 1 mm in m
MIN_S = 60.0  # 1 min in s
MPA_PA = 1.0e6  # 1 MPa in Pa
KPA_PA = 1.0e3
MN_PER_M_N_PER_M = 1.0e-3  # 1 mN/m (interfacial tension) in N/m
CELSIUS_K = 273.15
L_PER_MIN_M3_PER_S = 1.0e-3 / 60.0
ML_PER_MIN_M3_PER_S = 1.0e-6 / 60.0
GAS_CONSTANT = 8.314462618  # J/(mol K)

# (clinical suffix, SI suffix, converter). Longest suffixes first so "_ml_per_s" wins over "_s".
_SUFFIXES: tuple[tuple[str, str, Any], ...] = (
    ("_kpa_per_ml_per_min", "_pa_s_per_m3", lambda v: v * KPA_PA / ML_PER_MIN_M3_PER_S),
    ("_ml_per_min", "_m3_per_s", lambda v: v * ML_PER_MIN_M3_PER_S),
    ("_l_per_min", "_m3_per_s", lambda v: v * L_PER_MIN_M3_PER_S),
    ("_ml_per_s", "_m3_per_s", lambda v: v * ML_M3),
    ("_kj_per_mol", "_j_per_mol", lambda v: v * 1.0e3),
    ("_mn_per_m", "_n_per_m", lambda v: v * MN_PER_M_N_PER_M),
    ("_mm3", "_m3", lambda v: v * MM_M**3),
    ("_mm2", "_m2", lambda v: v * MM_M**2),
    ("_ml", "_m3", lambda v: v * ML_M3),
    ("_mm", "_m", lambda v: v * MM_M),
    ("_per_mmhg", "_per_pa", lambda v: v / MMHG_PA),
    ("_mmhg", "_pa", lambda v: v * MMHG_PA),
    ("_cmh2o", "_pa", lambda v: v * CMH2O_PA),
    ("_mpa", "_pa", lambda v: v * MPA_PA),
    ("_kpa", "_pa", lambda v: v * KPA_PA),
    ("_min", "_s", lambda v: v * MIN_S),
    ("_c", "_k", lambda v: v + CELSIUS_K),
)


# SI name suffix -> (report suffix, factor) for tables and files a person reads (mm, ml, ml/s).
_REPORT: tuple[tuple[str, str, float], ...] = (
    ("_m3_per_s", "_ml_per_s", 1.0 / ML_M3),
    ("_m3_s", "_ml_per_s", 1.0 / ML_M3),
    ("_m3", "_mm3", 1.0 / MM_M**3),
    ("_m2", "_mm2", 1.0 / MM_M**2),
    ("_m", "_mm", 1.0 / MM_M),
)


def report_units(name: str, values: Any) -> tuple[str, Any]:
    """An SI-suffixed column in report units: ``diameter_m`` -> ``diameter_mm``, ``x_m3`` -> ``x_mm3``."""
    for si, rep, factor in _REPORT:
        if name.endswith(si):
            return name[: -len(si)] + rep, np.asarray(values, dtype=np.float64) * factor
    return name, values


def si_name(name: str) -> str:
    """SI field name for a clinical field name (unchanged when it has no clinical suffix)."""
    for clinical, si, _ in _SUFFIXES:
        if name.endswith(clinical):
            return name[: -len(clinical)] + si
    return name


def _convert_value(name: str, value: Any) -> tuple[str, Any]:
    for clinical, si, fn in _SUFFIXES:
        if name.endswith(clinical):
            if value is None:
                return name[: -len(clinical)] + si, None
            if isinstance(value, list | tuple):
                return name[: -len(clinical)] + si, [fn(float(v)) for v in value]
            return name[: -len(clinical)] + si, fn(float(value))
    return name, value


def to_si(data: Any) -> Any:
    """Convert a nested dict (a dumped scenario) from clinical to SI units, renaming fields."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out[key] = to_si(value)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                out[key] = [to_si(v) for v in value]
            else:
                new_key, new_value = _convert_value(key, value)
                out[new_key] = new_value
        return out
    return data
