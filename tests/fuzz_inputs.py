"""Generator of bad (and some good) scenario files for ``tests/test_fuzz_inputs.py``.

Every case says what a correct answer looks like, derived from how it was made, never from what
pce-sim currently prints: ``bad`` cases must be refused (exit 2, no traceback, a short message that
names ``field``, the dotted path as written in the file, or the file itself); ``bad=False`` cases
are files every check must accept (the issue's cases that must now run); ``bad=None`` cases (a
valid config with a section deleted) may go either way, but only as one line or a clean start.

Kinds: each numeric field of the scenario model below and above its range, as a boolean and as
NaN / inf (ranges read from the model's own metadata); wrong types; unknown keys and sections
given as scalars or lists; literal fields with rich-markup strings; integers of thousands of
digits; nesting 40 to 5,000 deep; repeated keys; YAML tags; alias bombs and recursive aliases;
broken and non-UTF-8 YAML; cross-field cases of issue 14; special files (pipe, folder, long name,
oversized, missing, path through a file); and random mutations of the shipped ``configs/*.yaml``
scenarios drawn from a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel

from sim.core.config import Scenario
from sim.validation.experiments import merge

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_CONFIGS = ("default.yaml", "lai2025_case.yaml", "lai2025_stop_at_detection.yaml")
MARKUP = ("[/]", "[/x]", "[bold red]x", "[link=file:///etc/passwd]y[/link]", ":thumbs_up: [red]", "\\[x]")
# Keeps the preflight of accepted files cheap (2 mm grid); every other field is as the case makes it.
FAST = {"grid": {"spacing_mm": 2.0}}


@dataclass(frozen=True)
class FuzzCase:
    """One generated input: its file content (or a special file kind) and what the answer must be."""

    name: str
    kind: str
    text: bytes | None
    field: str
    bad: bool | None = True  # None: either answer is right (e.g. a deleted section), only the form is checked
    special: str = ""


@dataclass(frozen=True)
class Leaf:
    """A leaf field of the scenario model: dotted path, annotation and numeric bounds (if any)."""

    path: str
    annotation: Any
    lo: float | None
    lo_strict: bool
    hi: float | None
    hi_strict: bool
    default: Any


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(inner type, metadata) of Annotated / Optional annotations."""
    metas: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            args = typing.get_args(annotation)
            metas.extend(args[1:])
            annotation = args[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, metas
            annotation = args[0]
        else:
            return annotation, metas


def _model(annotation: Any) -> type[BaseModel] | None:
    inner, _ = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def scenario_leaves(model: type[BaseModel] = Scenario, prefix: str = "") -> list[Leaf]:
    """Every leaf field of the scenario model with its bounds, in declaration order."""
    out: list[Leaf] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _model(info.annotation)
        if sub is not None:
            out.extend(scenario_leaves(sub, path + "."))
            continue
        inner, metas = _unwrap(info.annotation)
        metas = [*info.metadata, *metas]
        lo = hi = None
        lo_strict = hi_strict = False
        for meta in metas:
            for m in (meta, *getattr(meta, "metadata", [])):
                if getattr(m, "ge", None) is not None:
                    lo, lo_strict = float(m.ge), False
                if getattr(m, "gt", None) is not None:
                    lo, lo_strict = float(m.gt), True
                if getattr(m, "le", None) is not None:
                    hi, hi_strict = float(m.le), False
                if getattr(m, "lt", None) is not None:
                    hi, hi_strict = float(m.lt), True
        out.append(Leaf(path, inner, lo, lo_strict, hi, hi_strict, info.default))
    return out


def is_number(leaf: Leaf) -> bool:
    return leaf.annotation in (float, int)


def nest(path: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for path ``a.b``."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


def flow(path: str, inner: str) -> bytes:
    """YAML text setting ``path`` (dotted) to the raw YAML ``inner`` in flow style."""
    parts = path.split(".")
    text = inner
    for part in reversed(parts):
        text = "{" + part + ": " + text + "}"
    return (text[1:-1] + "\n").encode()


def _out_of_range(leaf: Leaf) -> list[Any]:
    values: list[Any] = []
    if leaf.lo is not None:
        below = leaf.lo if leaf.lo_strict else leaf.lo - max(1.0, abs(leaf.lo)) * 0.5
        values.append(int(math.floor(below)) if leaf.annotation is int else below)
    if leaf.hi is not None and leaf.hi < 1e18:
        above = leaf.hi if leaf.hi_strict else leaf.hi + max(1.0, abs(leaf.hi)) * 0.5
        values.append(int(math.ceil(above)) if leaf.annotation is int else above)
    elif leaf.hi is not None:
        values.append(2**64)  # the seed: one past any 63-bit value
    return values


def field_cases() -> list[FuzzCase]:
    """Per numeric field: below and above its range, a boolean, NaN and inf; per literal: markup."""
    cases: list[FuzzCase] = []
    for leaf in scenario_leaves():
        if is_number(leaf):
            for i, value in enumerate(_out_of_range(leaf)):
                cases.append(
                    FuzzCase(
                        f"range-{leaf.path}-{i}", "out of range", dump(nest(leaf.path, value)), leaf.path
                    )
                )
            cases.append(
                FuzzCase(f"bool-{leaf.path}", "boolean for number", flow(leaf.path, "true"), leaf.path)
            )
            if leaf.annotation is float:
                cases.append(FuzzCase(f"nan-{leaf.path}", "NaN", flow(leaf.path, ".nan"), leaf.path))
                cases.append(FuzzCase(f"inf-{leaf.path}", "inf", flow(leaf.path, "-.inf"), leaf.path))
            cases.append(FuzzCase(f"list-{leaf.path}", "wrong type", flow(leaf.path, "[1, 2]"), leaf.path))
        elif typing.get_origin(leaf.annotation) is Literal:
            markup = MARKUP[len(cases) % len(MARKUP)]
            cases.append(
                FuzzCase(f"markup-{leaf.path}", "markup string", dump(nest(leaf.path, markup)), leaf.path)
            )
        elif leaf.annotation is bool:
            cases.append(
                FuzzCase(f"str-{leaf.path}", "wrong type", dump(nest(leaf.path, "maybe")), leaf.path)
            )
    return cases


def section_cases() -> list[FuzzCase]:
    """Unknown keys everywhere, sections given as scalars or lists, markup as a key."""
    cases = [FuzzCase("unknown-top", "unknown key", b"pateint: {level: L1}\n", "pateint")]
    sections = [name for name, info in Scenario.model_fields.items() if _model(info.annotation) is not None]
    sections += ["patient.fracture_cleft", "cement.overrides"]
    for i, sec in enumerate(sections):
        cases.append(
            FuzzCase(f"unknown-{sec}", "unknown key", dump(nest(f"{sec}.colour", 1)), f"{sec}.colour")
        )
        cases.append(FuzzCase(f"scalar-{sec}", "section as scalar", dump(nest(sec, 5)), sec))
        cases.append(FuzzCase(f"listsec-{sec}", "section as list", dump(nest(sec, [1, 2])), sec))
        key = MARKUP[i % len(MARKUP)]
        cases.append(FuzzCase(f"markupkey-{sec}", "markup key", dump(nest(sec, {key: 1})), key))
    return cases


def yaml_cases() -> list[FuzzCase]:
    """Huge integers, deep nesting, repeated keys, tags, alias bombs, broken and non-UTF-8 YAML."""
    cases: list[FuzzCase] = []
    for path, digits in (
        ("patient.seed", 5000),
        ("injection.volume_ml", 5000),
        ("needle.gauge", 4301),
        ("grid.cfl", 100_000),
        ("lungs.mean_pap_mmhg", 41),
    ):
        cases.append(FuzzCase(f"bigint-{path}", "huge integer", flow(path, "9" * digits), path))
    for sec, depth, style in (
        ("patient", 5000, "flow"),
        ("cement", 900, "flow"),
        ("injection", 40, "flow"),
        ("veins", 300, "block"),
        ("lungs", 2000, "mixed"),
    ):
        if style == "flow":
            text = f"{sec}: " + "[" * depth + "]" * depth + "\n"
        elif style == "block":
            text = f"{sec}:\n" + "".join("  " * i + "a:\n" for i in range(1, depth)) + "  " * depth + "x\n"
        else:
            text = f"{sec}: " + "{a: [" * (depth // 2) + "]}" * (depth // 2) + "\n"
        cases.append(FuzzCase(f"deep-{sec}-{depth}", "deep nesting", text.encode(), sec))
    for path, a, b in (
        ("injection.volume_ml", "30", "0.5"),
        ("patient.level", "L1", "T5"),
        ("grid.spacing_mm", "1.0", "2.0"),
        ("cement.overrides.setting_time_min", "10", "12"),
        ("lungs.posture", "prone", "supine"),
    ):
        head, _, last = path.rpartition(".")
        cases.append(
            FuzzCase(
                f"dup-{path}", "duplicate key", flow(head, "{" + f"{last}: {a}, {last}: {b}" + "}"), path
            )
        )
    cases.append(
        FuzzCase("dup-top", "duplicate key", b"patient: {level: L1}\npatient: {level: L2}\n", "patient")
    )
    cases.append(
        FuzzCase(
            "dup-block", "duplicate key", b"grid:\n  cfl: 0.5\n  spacing_mm: 2\n  cfl: 0.9\n", "grid.cfl"
        )
    )
    for name, text, field in (
        ("binary", "name: !!binary aGVsbG8=\n", "name"),
        ("python", 'name: !!python/object/apply:os.system ["echo PWNED"]\n', "name"),
        ("pyname", "injection: {volume_ml: !!python/name:os.getcwd ''}\n", "injection.volume_ml"),
        ("set", "fluoroscopy: {views: !!set {lateral: null}}\n", "fluoroscopy.views"),
        ("omap", "patient: !!omap [{level: L1}]\n", "patient"),
        ("timestamp", "description: 2024-01-01 10:00:00\n", "description"),
        ("custom", "cement: {preset: !medium low}\n", "cement.preset"),
        ("pairs", "needle: !!pairs [[side, left]]\n", "needle"),
    ):
        cases.append(FuzzCase(f"tag-{name}", "tag", text.encode(), field))
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    cases.append(
        FuzzCase("alias-bomb", "alias bomb", ("\n".join([*bomb, "name: *a8"]) + "\n").encode(), "aliases")
    )
    wide = ["a0: &a0 {k: [x, x, x, x, x, x, x, x, x, x]}"]
    wide += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 30) + "]" for i in range(1, 5)]
    cases.append(
        FuzzCase("alias-wide", "alias bomb", ("\n".join([*wide, "patient: *a4"]) + "\n").encode(), "aliases")
    )
    cases.append(FuzzCase("alias-recursive", "recursive alias", b"patient: &p {x: *p}\n", "recursive"))
    for name, text, field in (
        ("syntax", b"patient: {level: L1\n", "YAML syntax error"),
        ("tabs", b"patient:\n\tlevel: L1\n", "YAML syntax error"),
        ("latin1", "name: caf\xe9\n".encode("latin-1"), "UTF-8"),
        ("binary-junk", bytes(range(256)) * 4, "{file}"),
        ("nul", b"name: a\x00b\n", "{file}"),
        ("toplist", b"- patient\n- cement\n", "top level"),
        ("topscalar", b"42\n", "top level"),
        ("two-docs", b"name: a\n---\nname: b\n", "{file}"),
        ("undefined-alias", b"name: *nope\n", "{file}"),
        ("complex-key", b"? [a, b]\n: 1\n", "{file}"),
    ):
        cases.append(FuzzCase(f"yaml-{name}", "broken YAML", text, field))
    return cases


def cross_field_cases() -> list[FuzzCase]:
    """The issue's 'validate accepts, run refuses' cases, plus cases that must now run."""
    bad = [
        ("views-empty", {"fluoroscopy": {"views": []}}, "fluoroscopy.views"),
        ("vmin-over-preset", {"cement": {"overrides": {"viscosity_min_pa_s": 1.0e5}}}, "viscosity_min_pa_s"),
        (
            "reftime-over-set",
            {"cement": {"overrides": {"reference_time_min": 50, "setting_time_min": 1}}},
            "cement.overrides.reference_time_min",
        ),
        (
            "set-under-preset-ref",
            {"cement": {"time_after_mixing_min": 10, "overrides": {"setting_time_min": 1}}},
            "cement.overrides.setting_time_min",
        ),
        (
            "n-set-over-fresh",
            {"cement": {"overrides": {"power_law_n_fresh": 0.1, "power_law_n_set": 1.0}}},
            "cement.overrides.power_law_n_set",
        ),
        ("cutoff-5mm", {"lungs": {"cutoff_diameter_mm": 5.0}}, "lungs.cutoff_diameter_mm"),
        ("cutoff-0.02mm", {"lungs": {"cutoff_diameter_mm": 0.02}}, "lungs.cutoff_diameter_mm"),
        (
            "pap-under-lap",
            {"lungs": {"mean_pap_mmhg": 5, "left_atrial_pressure_mmhg": 30}},
            "lungs.mean_pap_mmhg",
        ),
        (
            "lap-over-default-pap",
            {"lungs": {"left_atrial_pressure_mmhg": 20}},
            "lungs.left_atrial_pressure_mmhg",
        ),
        ("blood-viscosity", {"veins": {"blood_viscosity_pa_s": 0.01}}, "veins.blood_viscosity_pa_s"),
        (
            # the maximum cardiac output over a 4 mmHg pulmonary pressure drop: the arteries down to
            # the cutoff alone resist 1.3-1.4 times what that allows, for any draw of the lung tree (at
            # the default 6 mmHg drop it is 0.90-0.93 times, i.e. refused or not by the random tree)
            "cardiac-output-max",
            {"veins": {"cardiac_output_l_per_min": 12.0}, "lungs": {"mean_pap_mmhg": 12.0}},
            "veins.cardiac_output_l_per_min",
        ),
        (
            "azygos-unreachable",
            {
                "veins": {
                    "cardiac_output_l_per_min": 12.0,
                    "azygos_flow_ml_per_min": 50.0,
                    "diameter_scale": 2.0,
                }
            },
            "veins.",
        ),
        (
            "co-too-small",
            {"veins": {"cardiac_output_l_per_min": 2.0, "azygos_flow_ml_per_min": 1500.0}},
            "veins.cardiac_output_l_per_min",
        ),
        ("cfl-tiny", {"grid": {"cfl": 1.0e-9}}, "grid.cfl"),
        ("frame-tiny", {"fluoroscopy": {"frame_interval_s": 1.0e-9}}, "fluoroscopy.frame_interval_s"),
        (
            "follow-up-steps",
            {"injection": {"follow_up_s": 3600}, "fluoroscopy": {"frame_interval_s": 0.02}},
            "injection.follow_up_s",
        ),
        ("rate-1e-300", {"injection": {"rate_ml_per_s": 1.0e-300}}, "injection.rate_ml_per_s"),
        (
            "needle-tip-outside",
            {
                "patient": {"level": "T5"},
                "grid": {"spacing_mm": 2.0},
                "needle": {"tip_ap_fraction": 0.05, "tip_lateral_fraction": -0.9, "tip_cc_fraction": 0.1},
            },
            "needle.tip_ap_fraction = 0.05",
        ),
        (
            "vtk-interval-1e-300",
            {"output": {"vtk": True, "vtk_interval_s": 1.0e-300}},
            "output.vtk_interval_s",
        ),
        (
            "bipedicular-extra",
            {"needle": {"bipedicular": True, "approach": "extrapedicular"}},
            "needle.bipedicular",
        ),
    ]
    cases = [FuzzCase(f"cross-{n}", "cross-field", dump(merge(FAST, d)), f) for n, d, f in bad]
    good = [
        ("pressure-mode-high", {"cement": {"preset": "high", "time_after_mixing_min": 15},
                                "injection": {"mode": "pressure", "max_syringe_pressure_mpa": 2.0}}),
        ("widest-veins", {"patient": {"basivertebral_foramen_width_mm": 15.0,
                                      "intraosseous_vein_diameter_mm": 4.0},
                          "veins": {"diameter_scale": 2.0, "diameter_scatter": 0.5}}),
        ("markup-name", {"name": "[/]", "description": "[bold red]x [link=y]z"}),
        ("slowest-allowed", {"grid": {"cfl": 0.05}, "fluoroscopy": {"frame_interval_s": 0.02}}),
    ]  # fmt: skip
    cases += [FuzzCase(f"ok-{n}", "accepted edge case", dump(merge(FAST, d)), "", bad=False) for n, d in good]
    # the maximum cardiac output at the default pulmonary pressures: whether the lung tree
    # leaves room for its capillary beds depends on the tree's random draw, so either answer is right,
    # but validate and run must give the same one
    either = [("cardiac-output-max-default-lungs", {"veins": {"cardiac_output_l_per_min": 12.0}})]
    cases += [FuzzCase(f"cross-{n}", "cross-field", dump(merge(FAST, d)), "", bad=None) for n, d in either]
    return cases


def special_cases() -> list[FuzzCase]:
    """Files that are not plain small YAML files (made on disk by :func:`materialise`)."""
    return [
        FuzzCase("special-fifo", "named pipe", None, "regular file", special="fifo"),
        FuzzCase("special-dir", "folder", None, "directory", special="dir"),
        FuzzCase("special-longname", "long file name", None, "too long", special="longname"),
        FuzzCase("special-big", "oversized file", None, "bytes", special="big"),
        FuzzCase("special-missing", "missing file", None, "not found", special="missing"),
        FuzzCase("special-under-file", "path through a file", None, "not a folder", special="under_file"),
        FuzzCase(
            "special-markup-path",
            "markup in the path",
            b"patient: {level: L9}\n",
            "[/]",
            special="markup_dir",
        ),
    ]


def _mutate(
    rng: np.random.Generator, base: dict[str, Any], leaves: list[Leaf]
) -> tuple[str, bytes, str, bool | None]:
    """One random mutation of a valid scenario: (kind, YAML text, field as written, bad?)."""
    ops = (
        "wrong type", "out of range", "nan", "unknown key", "delete section", "markup", "huge int",
        "deep nesting", "duplicate key", "tag", "bool",
    )  # fmt: skip
    op = ops[int(rng.integers(len(ops)))]
    numeric = [leaf for leaf in leaves if is_number(leaf)]
    leaf = numeric[int(rng.integers(len(numeric)))]
    data = copy.deepcopy(base)
    head, _, last = leaf.path.rpartition(".")
    if op == "delete section":
        sections = [k for k in data if isinstance(data[k], dict) and k != "grid"]
        sec = sections[int(rng.integers(len(sections)))]
        del data[sec]
        return op, dump(data), "", None
    if op == "unknown key":
        sections = [k for k in data if isinstance(data[k], dict)]
        sec = sections[int(rng.integers(len(sections)))]
        key = f"x{int(rng.integers(10_000))}_mm"
        data[sec][key] = float(rng.normal())
        return op, dump(data), f"{sec}.{key}", True
    if op == "out of range":
        values = _out_of_range(leaf)
        value: Any = values[int(rng.integers(len(values)))]
    else:
        value = {
            "wrong type": rng.choice(["abc", "1,5", "5 ml", "0x"]).item(),
            "nan": float("nan") if rng.random() < 0.5 else float("inf"),
            "markup": MARKUP[int(rng.integers(len(MARKUP)))],
            "bool": bool(rng.random() < 0.5),
            "huge int": "HUGE",
            "deep nesting": "DEEP",
            "duplicate key": "DUP",
            "tag": "TAG",
        }[op]
    node = data
    for part in head.split("."):
        node = node.setdefault(part, {})
    node[last] = value
    text = dump(data).decode()
    token = {"HUGE": "9" * int(rng.integers(4400, 6000)), "DEEP": "[" * 1000 + "]" * 1000,
             "TAG": "!!binary aGVsbG8=", "DUP": "7.000001"}  # fmt: skip
    if isinstance(value, str) and value in token:
        text = text.replace(f"{last}: {value}", f"{last}: {token[value]}", 1)
        if value == "DUP":  # repeat the key right below the first one, same indentation
            lines = text.splitlines()
            i = next(j for j, line in enumerate(lines) if line.strip().startswith(f"{last}: 7.000001"))
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines.insert(i + 1, f"{indent}{last}: 2.0")
            text = "\n".join(lines) + "\n"
    return op, text.encode(), leaf.path, True


def mutation_cases(n: int = 80, seed: int = 14) -> list[FuzzCase]:
    """Random mutations of the shipped scenarios (seeded: the same cases every run)."""
    rng = np.random.default_rng(seed)
    leaves = scenario_leaves()
    bases = []
    for name in SCENARIO_CONFIGS:
        data = yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8"))
        bases.append(merge(data, merge(FAST, {"output": {"vtk": False, "fluoroscopy_png": False}})))
    cases = []
    for i in range(n):
        base = bases[int(rng.integers(len(bases)))]
        kind, text, field, bad = _mutate(rng, base, leaves)
        cases.append(FuzzCase(f"mutation-{i:03d}", f"mutation: {kind}", text, field, bad=bad))
    return cases


def all_cases() -> list[FuzzCase]:
    """Every generated case, with unique names."""
    cases = [
        *field_cases(),
        *section_cases(),
        *yaml_cases(),
        *cross_field_cases(),
        *special_cases(),
        *mutation_cases(),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def materialise(case: FuzzCase, folder: Path) -> Path:
    """Write the case's file (or make its special file) under ``folder``; returns the path to pass."""
    folder.mkdir(parents=True, exist_ok=True)
    if case.special == "fifo":
        path = folder / f"{case.name}.yaml"
        if not path.exists():
            import os

            os.mkfifo(path)
        return path
    if case.special == "dir":
        path = folder / f"{case.name}.yaml"
        path.mkdir(exist_ok=True)
        return path
    if case.special == "longname":
        return folder / ("a" * 300 + ".yaml")
    if case.special == "big":
        path = folder / f"{case.name}.yaml"
        path.write_bytes(b"description: " + b"x" * (2 << 20) + b"\n")
        return path
    if case.special == "missing":
        return folder / f"{case.name}.yaml"
    if case.special == "under_file":
        blocker = folder / f"{case.name}.txt"
        blocker.write_text("not a folder\n")
        return blocker / "cfg.yaml"
    if case.special == "markup_dir":
        sub = folder / "[/]" / "[bold]x"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{case.name}.yaml"
        path.write_bytes(case.text or b"")
        return path
    path = folder / f"{case.name}.yaml"
    path.write_bytes(case.text or b"")
    return path
