"""The validation files: experiment configs and reference numbers, read and checked.

``configs/validation/<name>.yaml`` (:class:`ExperimentSpec`) says what to simulate: a pce-sim
scenario ``base``, named ``groups`` of overrides (nested mappings as in a scenario file), for the
syringe-pressure kind a factorial ``sampling`` of dotted fields, the grid spacing of every run
(``grid_spacing_mm``, the scenario default ``DEFAULT_SPACING_MM`` unless given), how the model
quantity maps to the measurement (``measured_as``) and every assumption of the analogue.
``configs/validation/<name>.reference.yaml`` (:class:`ReferenceSet`) holds the published numbers
(value, sd, n, units, what exactly was measured, full citation; sd and n are written as null when
the paper does not give them) and the ``checks`` that compare model and data (rules in
:mod:`sim.validation.verdicts`).

Both files are read with :mod:`sim.core.safe_yaml` and validated strictly (unknown keys, booleans
or text where numbers belong, missing fields are errors). Every problem is one
:class:`~sim.core.errors.ConfigError` line naming the file and the field as written, e.g.
``configs/validation/habib2010.reference.yaml: references.leak_low_3.5.sd: missing (write null
when the paper gives none)``.

Units: reference numbers keep the units the paper reports (``kPa``, ``MPa``, ``g``, ``%``, ...);
:data:`UNIT_SI` gives the factor to SI (constants from :mod:`sim.core.units`), applied where model
and data meet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from sim.core.config import DEFAULT_SPACING_MM, shown_value
from sim.core.errors import ConfigError
from sim.core.safe_yaml import read_yaml_file
from sim.core.units import KPA_PA, ML_M3, MPA_PA

GRAM_KG = 1.0e-3  # 1 g in kg

# Units a reference number may be written in -> factor to SI.
UNIT_SI: dict[str, float] = {
    "Pa": 1.0,
    "kPa": KPA_PA,
    "MPa": MPA_PA,
    "g": GRAM_KG,
    "kg": 1.0,
    "ml": ML_M3,
    "1": 1.0,
    "%": 0.01,
}
Unit = Literal["Pa", "kPa", "MPa", "g", "kg", "ml", "1", "%"]

KINDS = ("leakage", "intravertebral_pressure", "syringe_pressure", "cannula")
RULES = ("ratio_sd", "range", "overlap", "contains", "ratio_factor", "greater")
REFERENCE_SUFFIX = ".reference.yaml"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

StrictNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------------------- reference numbers


class ReferenceNumber(_Strict):
    """One published number: value and spread in the paper's units, what it is, where from."""

    value: StrictNumber
    sd: Annotated[float, Field(strict=True, ge=0.0, allow_inf_nan=False)] | None
    n: Annotated[int, Field(strict=True, ge=1)] | None
    units: Unit
    measured: Text
    source: Text
    note: str = ""

    @property
    def si_factor(self) -> float:
        """Factor from the reference's units to SI."""
        return UNIT_SI[self.units]


class Qualitative(_Strict):
    """A published finding without a number (shown in the report, not scored unless a check uses it)."""

    finding: Text
    source: Text
    scored: bool = False
    why: str = ""


class CheckSpec(_Strict):
    """One acceptance test: a rule, the reference number(s) and the model output(s) it compares.

    ``reference`` and ``model`` are one name (``range``, ``overlap``, ``contains``) or two names,
    numerator first (``ratio_sd``, ``ratio_factor``; ``greater``: model[0] > model[1]). Model names
    are ``<group>.<quantity>`` for a run's quantity, or a sample / band name of the experiment kind.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    rule: Literal["ratio_sd", "range", "overlap", "contains", "ratio_factor", "greater"]
    title: Text
    reference: str | list[str] | None = None
    model: str | list[str]
    k_sd: Annotated[float, Field(strict=True, gt=0.0, le=5.0)] = 1.0
    low: StrictNumber | None = None
    high: StrictNumber | None = None
    z: Annotated[float, Field(strict=True, gt=0.0, le=5.0)] = 1.645
    percentiles: tuple[StrictNumber, StrictNumber] = (5.0, 95.0)
    factor: Annotated[float, Field(strict=True, gt=1.0, le=100.0)] | None = None
    finding: str = ""
    source: str = ""

    @model_validator(mode="after")
    def _per_rule(self) -> CheckSpec:
        refs, models = _as_list(self.reference), _as_list(self.model)
        pairs = self.rule in ("ratio_sd", "ratio_factor")

        def bad(field: str, message: str) -> PydanticCustomError:
            return PydanticCustomError(
                "check_rule", "{field}: {message}", {"field": field, "message": message}
            )

        if pairs and len(refs) != 2:
            raise bad("reference", f"rule {self.rule} needs two reference names [numerator, denominator]")
        if self.rule == "greater":
            if len(models) != 2:
                raise bad("model", "rule greater needs two model names [larger, smaller]")
            if not (self.finding and self.source):
                raise bad("finding", "rule greater needs the published finding and its source")
        elif pairs and len(models) != 2:
            raise bad("model", f"rule {self.rule} needs two model names [numerator, denominator]")
        elif not pairs and len(models) != 1:
            raise bad("model", f"rule {self.rule} compares one model output")
        if self.rule in ("range", "overlap", "contains") and len(refs) != 1:
            raise bad("reference", f"rule {self.rule} needs one reference name")
        if self.rule == "range" and not (
            self.low is not None and self.high is not None and self.low < self.high
        ):
            raise bad("low", "rule range needs low < high (in the reference's units)")
        if self.rule == "ratio_factor" and self.factor is None:
            raise bad("factor", "rule ratio_factor needs factor (> 1)")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise bad("percentiles", f"[{lo:g}, {hi:g}]: need 0 <= low < high <= 100")
        return self

    @property
    def references(self) -> list[str]:
        """Reference names, in order."""
        return _as_list(self.reference)

    @property
    def models(self) -> list[str]:
        """Model output names, in order."""
        return _as_list(self.model)


class ReferenceSet(_Strict):
    """The reference file of one experiment."""

    experiment: Annotated[str, Field(pattern=NAME_PATTERN)]
    citation: Text
    references: Annotated[dict[str, ReferenceNumber], Field(min_length=1)]
    qualitative: list[Qualitative] = []
    checks: Annotated[list[CheckSpec], Field(min_length=1)]


# ---------------------------------------------------------------------------- experiment configs


class CannulaSpec(_Strict):
    """Stepped cannula (Baroud & Steffen 2005): proximal bore widened over a fraction of the length."""

    proximal_diameter_factor: Annotated[float, Field(strict=True, gt=1.0, le=5.0)] = 2.0
    proximal_fraction_range: tuple[
        Annotated[float, Field(strict=True, ge=0.0, le=1.0)],
        Annotated[float, Field(strict=True, ge=0.0, le=1.0)],
    ]
    points: Annotated[int, Field(strict=True, ge=2, le=201)] = 9
    sensitivity_presets: list[Literal["low", "medium", "high"]] = []

    @model_validator(mode="after")
    def _ordered(self) -> CannulaSpec:
        lo, hi = self.proximal_fraction_range
        if not lo < hi:
            raise PydanticCustomError(
                "check_rule",
                "proximal_fraction_range: [{lo}, {hi}]: need low < high",
                {"lo": f"{lo:g}", "hi": f"{hi:g}"},
            )
        return self


class ExperimentSpec(_Strict):
    """The config of one experiment (see the module docstring)."""

    experiment: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal["leakage", "intravertebral_pressure", "syringe_pressure", "cannula"]
    title: Text
    grid_spacing_mm: Annotated[float, Field(strict=True, ge=0.25, le=4.0)] = DEFAULT_SPACING_MM
    measured_as: Text
    assumptions: Annotated[list[Text], Field(min_length=1)]
    base: dict[str, Any] = {}
    groups: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = {}
    sampling: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = None
    late_after_mixing_s: Annotated[float, Field(strict=True, gt=0.0, le=1800.0)] | None = None
    fill_fraction_of_body: Annotated[float, Field(strict=True, gt=0.0, le=0.6)] | None = None
    cannula: CannulaSpec | None = None

    @model_validator(mode="after")
    def _per_kind(self) -> ExperimentSpec:
        def bad(field: str, message: str) -> PydanticCustomError:
            return PydanticCustomError(
                "check_rule", "{field}: {message}", {"field": field, "message": message}
            )

        if self.kind == "syringe_pressure":
            if not self.sampling:
                raise bad("sampling", "kind syringe_pressure needs a sampling of dotted fields")
            if self.late_after_mixing_s is None:
                raise bad("late_after_mixing_s", "kind syringe_pressure needs the early/late split (s)")
        elif self.sampling is not None:
            raise bad("sampling", f"only kind syringe_pressure samples (this is {self.kind})")
        if self.kind == "cannula" and self.cannula is None:
            raise bad("cannula", "kind cannula needs the cannula section")
        if self.kind != "cannula" and self.cannula is not None:
            raise bad("cannula", f"only kind cannula has a cannula section (this is {self.kind})")
        if self.kind != "syringe_pressure" and not self.groups:
            raise bad("groups", f"kind {self.kind} needs at least one group")
        if self.fill_fraction_of_body is not None and self.kind != "intravertebral_pressure":
            raise bad(
                "fill_fraction_of_body", "only kind intravertebral_pressure fills a fraction of the body"
            )
        return self


# ---------------------------------------------------------------------------- errors and loading


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def format_error(exc: ValidationError, source: str) -> str:
    """The first problem of ``exc`` as one line ``source: field.path = value: message`` (+ a count)."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-"))))
    path = _path(loc)
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "missing":
        tail = (
            "missing (write null when the paper gives none)"
            if loc and loc[-1] in ("sd", "n")
            else "missing (required)"
        )
        line = f"{source}: {path}: {tail}"
    elif kind == "extra_forbidden":
        line = f"{source}: unknown key '{path}'"
    elif kind == "check_rule":
        line = f"{source}: {path + '.' if loc else ''}{msg}"
    else:
        line = f"{source}: {path} = {shown_value(err.get('input'))}: {msg}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return line


def _read_mapping(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path, what="validation file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _validated(model: type[M], path: Path) -> M:
    """The file at ``path`` validated as ``model``; a problem is one ConfigError line naming the field."""
    try:
        return model.model_validate(_read_mapping(path))
    except ValidationError as exc:
        raise ConfigError(format_error(exc, str(path))) from None


def load_references(path: str | Path) -> ReferenceSet:
    """Read and check a reference file; every problem is one ConfigError line naming file and field."""
    path = Path(path)
    refs = _validated(ReferenceSet, path)
    expected = path.name.removesuffix(REFERENCE_SUFFIX)
    if path.name.endswith(REFERENCE_SUFFIX) and refs.experiment != expected:
        raise ConfigError(
            f"{path}: experiment = {shown_value(refs.experiment)}: must match the file name ({expected!r})"
        )
    known = ", ".join(refs.references)
    for i, check in enumerate(refs.checks):
        for name in check.references:
            if name not in refs.references:
                raise ConfigError(
                    f"{path}: checks[{i}].reference: {name!r} is not in references (known: {known})"
                )
        needs_sd = {"ratio_sd": "propagates the SD of a ratio", "overlap": "compares distributions"}
        for name in check.references if check.rule in needs_sd else ():
            if refs.references[name].sd is None:
                raise ConfigError(
                    f"{path}: references.{name}.sd = null: checks[{i}] ({check.name}) "
                    f"{needs_sd[check.rule]} and needs it"
                )
        for name in check.references if check.rule in ("ratio_sd", "ratio_factor") else ():
            if refs.references[name].value == 0.0:
                raise ConfigError(f"{path}: references.{name}.value = 0: a ratio needs a non-zero value")
    names = [c.name for c in refs.checks]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(
                f"{path}: checks[{i}].name = {shown_value(name)}: repeated (names must be unique)"
            )
    return refs


def load_experiment(path: str | Path) -> ExperimentSpec:
    """Read and check an experiment config (one ConfigError line naming file and field)."""
    path = Path(path)
    spec = _validated(ExperimentSpec, path)
    if spec.experiment != path.stem:
        raise ConfigError(
            f"{path}: experiment = {shown_value(spec.experiment)}: must match the file name ({path.stem!r})"
        )
    for where, overrides in [("base", spec.base), *((f"groups.{g}", o) for g, o in spec.groups.items())]:
        grid = overrides.get("grid")
        if isinstance(grid, dict) and "spacing_mm" in grid:
            raise ConfigError(
                f"{path}: {where}.grid.spacing_mm: set the spacing of every run with grid_spacing_mm "
                "at the top level"
            )
    for key in spec.sampling or {}:
        if key == "grid.spacing_mm":
            raise ConfigError(
                f"{path}: sampling.grid.spacing_mm: the spacing is grid_spacing_mm, not sampled"
            )
        if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", key):
            raise ConfigError(f"{path}: sampling.{key}: not a dotted scenario field (e.g. cement.preset)")
    return spec


# ---------------------------------------------------------------------------- discovery


def validation_dir() -> Path:
    """``configs/validation`` of the source checkout (next to ``sim/``), else of the working directory."""
    candidates = (Path(__file__).resolve().parents[2], Path.cwd())
    for root in candidates:
        folder = root / "configs" / "validation"
        if folder.is_dir():
            return folder
    raise ConfigError(
        f"validation configs not found: {candidates[0] / 'configs' / 'validation'} "
        "(run from a checkout of pce-sim)"
    )


def experiment_names(folder: Path | None = None) -> list[str]:
    """Names of the experiments in ``folder`` (every ``<name>.yaml`` that is not a reference file)."""
    folder = folder or validation_dir()
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.name.endswith(REFERENCE_SUFFIX))


def select(only: list[str] | None, folder: Path | None = None) -> list[str]:
    """The experiments ``--only`` names (repeat or comma-separate), in suite order; all when None."""
    known = experiment_names(folder)
    if not only:
        return known
    keys = [k.strip() for item in only for k in item.split(",") if k.strip()]
    if not keys:
        raise ConfigError(f"--only: name at least one experiment (known: {', '.join(known)})")
    for key in keys:
        if key not in known:
            raise ConfigError(f"--only: unknown experiment {key!r} (known: {', '.join(known)})")
    return [k for k in known if k in keys]


def load_pair(name: str, folder: Path | None = None) -> tuple[ExperimentSpec, ReferenceSet, Path, Path]:
    """The experiment config and reference file of ``name`` (and their paths), both checked."""
    folder = folder or validation_dir()
    spec_path = folder / f"{name}.yaml"
    ref_path = folder / f"{name}{REFERENCE_SUFFIX}"
    if not ref_path.exists():
        raise ConfigError(f"{ref_path}: not found (every experiment needs its reference file)")
    spec = load_experiment(spec_path)
    refs = load_references(ref_path)
    if refs.experiment != spec.experiment:
        raise ConfigError(f"{ref_path}: experiment = {refs.experiment!r}: expected {spec.experiment!r}")
    return spec, refs, spec_path, ref_path
