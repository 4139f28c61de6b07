"""Virtual patient cohorts: seeded sampling of patients into ordinary Scenarios, run under stop policies.

A cohort file (YAML, unknown keys rejected) names a base scenario (``base:`` path relative to the
cohort file, and/or inline ``overrides:``), the number of virtual patients ``n``, a root ``seed``,
``distributions:`` by dotted Scenario path, and ``policies:`` (stop policies applied to the SAME
virtual patients, so policy comparisons are paired).

Distributions (each maps a uniform u in [0, 1) through its inverse CDF, so the same machinery
serves random cohorts and Morris/Sobol designs):
``uniform {low, high}``, ``loguniform {low, high}``, ``normal {mean, sd}``, ``truncnormal {mean,
sd, low, high}``, ``lognormal {median, sigma}`` (ln X ~ N(ln median, sigma^2)), ``categorical
{values, weights}``, ``choice {values}`` (equal weights), ``bernoulli {p}`` (true with
probability p), and ``conditional {given, cases}``: ``given`` is another dotted path and
``cases`` maps a glob pattern of the parent's value (``"T*"``, ``"L*"``, ``"*"``) to a
distribution; the first matching case is used (e.g. injected volume by level).

Seeds: input ``path`` draws its n uniforms from ``SeedSequence(seed, spawn_key=(1, crc32(path)))``
and patient ``i`` gets ``patient.seed`` = the i-th replicate seed of :func:`sim.studies.sweep.replicate_seeds`
(one ``SeedSequence(seed)`` spawned per patient). Hence (a) the same file and seed give the same
cohort bit for bit, (b) a cohort of n patients is the first n patients of a larger one (growing a
cohort reuses finished runs), (c) adding or removing one distribution leaves the other inputs'
draws unchanged, and (d) every policy arm of patient i has the same inputs and patient seed.

Running: every (patient, policy) pair is an ordinary validated Scenario executed by the sweep
machinery (:func:`sim.studies.sweep.run_sweep`: SQLite ledger keyed by content hash, local pool or Dask,
resumable). With ``share_runs`` (default) the cohort runs in two phases: first every patient
with ``injection.stop_after_leak_s = null`` (never stop); then the other arms, but only for
patients whose never-stop run could differ. The stop policy contract of
:class:`sim.physics.injection_control.StopPolicy` (stop once t >= detection + reaction delay
+ stop_after_leak_s; never before detection) makes an arm's run identical to the never-stop run
when no leak was detected, or when detection + reaction delay + delay is later than the end of the
never-stop injection, provided the two configs differ in that field only; such arms reuse the
never-stop result (marked ``shared``). The arms that do differ are not simulated again from t = 0:
with the default runner, each never-stop run carries its arms as branches and finishes each one
from a copy of its state at the poll where that arm's stop fires (:mod:`sim.studies.arm_branches`,
:func:`sim.run.pipeline.run_with_branches`; bit-identical to the arm's own run). ``share_runs:
false`` runs every pair.

Several levels (``levels:``, optional): a patient gets one to three vertebrae treated in one
procedure. ``levels.count`` is a categorical/choice distribution of the number of levels (integers
1..3); ``levels.gap`` (default: always adjacent) the distance in vertebrae of each further level from
the levels already chosen (1 = adjacent, 2 = one vertebra skipped, ...): level k extends the cluster
caudally or cranially (equal odds, drawn; the other side when the chosen side leaves T5..L5), so the
levels are distinct, within T5..L5 and clustered. Level 1 is the patient's ``patient.level`` (drawn
or from the base). ``levels.per_level`` lists the dotted paths drawn anew for every level (anatomy of
the vertebra, needle placement, volume, a new cement mix); every other input is the patient's and
is shared by all its levels (veins, azygos flow, operator behaviour, fluoroscopy). A per-level
conditional uses the level's own parent value (e.g. volume by that level's ``patient.level``); a
shared input may not be conditional on a per-level one. ``patient.seed`` (the random bone field and
vessel scatter) is per level. Level 1 keeps exactly the draws of the same file without ``levels:``;
level k >= 2 draws input ``path`` from ``SeedSequence(seed, spawn_key=(1, crc32(path), k))``, its
seed from ``SeedSequence(seed, spawn_key=(LEVEL_SEED_KEY, k))`` spawned per patient, its gap and side
from their own streams, for every patient whether or not it has k levels, so (a)-(d) hold with levels
too and changing the count distribution moves no other draw. Every (patient, level, policy) is an
ordinary Scenario (run sharing is per level); the report aggregates a patient's levels (sequential
injections whose emboli lodge in the same lungs: counts and volumes add up, PCE = any level).
Not modelled: emboli lodged by an earlier level do not change the pulmonary flows that route the next
level's fragments. The effect is small: with Murray's law (flow ~ d^3, Dong et al. 2020) an artery of
diameter d carries (d / 22 mm)^3 of the main pulmonary artery's flow, 0.08 % for a 2 mm subsegmental
and 0.6 % for a 4 mm segmental artery, so the few emboli of a patient (Luetmer 2011: mean 3.2 among
patients with PCE) divert well under 1 % of the flow, and only fragments bound for the occluded
sub-trees would be redirected (to their siblings).

Sensitivity (``sensitivity:``): a Morris (default; cheap: trajectories x (k + 1) runs) or Sobol
(N (k + 2) runs) design over the cohort's inputs plus ``patient.seed`` (a pseudo-input standing
for the anatomy/random-field noise, mapped to a pool of 1024 seeds), run under one policy in
``<out>/sensitivity`` (its own ledger); a design row is one injection (one level), so with ``levels:``
the indices describe a level, not a patient. Inputs left out of ``sensitivity.inputs`` are held at their
medians; Morris grid levels are moved to the centres of equiprobable bins (level j of p maps to
u = (j + 1/2)/p) so unbounded distributions never see u = 0 or 1.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import math
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from scipy import stats as _st

from sim.core.config import (
    STOP_AFTER_LEAK_PATH,
    Level,
    NoBoolForNumber,
    Scenario,
    StopAfterLeakS,
    format_validation_error,
    read_yaml,
    scenario_from_dict,
)
from sim.core.errors import ConfigError
from sim.core.input_files import anatomy_file_digests
from sim.core.safe_yaml import Literals, key_text, path_label
from sim.physics.injection_control import StopPolicy
from sim.run.output_folder import OutputClaim
from sim.studies.arm_branches import STASH_DIR, NeverStopWithArms, StashedArm, write_arm_map
from sim.studies.executors import (
    DEFAULT_RUNNER,
    DEFAULT_WRITER,
    Executor,
    Runner,
    SharedExecutor,
    make_executor,
)
from sim.studies.ledger import open_ledger
from sim.studies.sweep import (
    SEED_PATH,
    ExecutorSpec,
    Expansion,
    SweepPoint,
    SweepSpec,
    apply_overrides,
    check_dotted_path,
    check_value_path,
    exp_each,
    override_literals,
    replicate_seeds,
    resolve_base_scenario,
    run_sweep,
    set_dotted,
    summarise_problems,
)

STOP_PATH = STOP_AFTER_LEAK_PATH
LEVEL_PATH = "patient.level"
# files a cohort folder holds from its first moment (_guard_folder writes the resolved file before any
# ledger): a folder without them is not a cohort (a sweep's folder has a ledger too, and is not one)
COHORT_MARKERS = ("cohort.resolved.yaml", ".cohort.resolved.yaml.partial")
SPINE_LEVELS: tuple[str, ...] = get_args(Level)  # T5..L5, cranial to caudal
MAX_LEVELS = 3
MAX_GAP = 6  # (MAX_LEVELS - 1) * MAX_GAP < len(SPINE_LEVELS): a further level always fits on one side
LEVEL_COUNT_PATH = "cohort.levels.count"  # stream names of the level draws (not scenario paths)
LEVEL_GAP_PATH = "cohort.levels.gap"
LEVEL_SIDE_PATH = "cohort.levels.side"
LEVEL_SEED_KEY = 2  # spawn_key prefix of the seeds of levels 2..3
LEVEL_INDEX_STRIDE = 10**12  # sweep point index of level k >= 2: (k - 1) * stride + level-1 index
SAMPLING_KEY = 1  # spawn_key prefix of the per-input sampling streams
SEED_POOL = 1024  # sensitivity designs map u to one of this many patient seeds
_U_EPS = 1e-12

DistName = Literal[
    "uniform", "loguniform", "normal", "truncnormal", "lognormal", "categorical", "choice", "bernoulli",
    "conditional",
]  # fmt: skip


class _Strict(NoBoolForNumber):
    model_config = ConfigDict(extra="forbid")


class DistributionSpec(_Strict):
    """One uncertain input: a named distribution and its parameters (see the module docstring)."""

    dist: DistName
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    sd: float | None = None
    median: float | None = None
    sigma: float | None = None
    values: list[Any] | None = None
    weights: list[float] | None = None
    p: float | None = None
    given: str | None = None
    cases: dict[str, DistributionSpec] | None = None
    source: str = ""

    @field_validator("cases", mode="before")
    @classmethod
    def _case_keys_are_text(cls, cases: Any) -> Any:
        """A case key YAML reads as a boolean, number or null (`true:`, `11:`) was named `cases.1`: ask for
        quotes, since a case matches the given input's value written as text."""
        if isinstance(cases, dict):
            odd = [k for k in cases if not isinstance(k, str)]
            if odd:
                shown = ", ".join(key_text(k) for k in odd)
                quoted = ", ".join(f"'{key_text(k)}'" for k in odd)
                raise ValueError(
                    f"case keys {shown} are read as YAML booleans, numbers or null; quote them ({quoted}): a "
                    "case matches the given input's value as text"
                )
        return cases

    @model_validator(mode="after")
    def _params(self) -> DistributionSpec:
        need = {
            "uniform": ("low", "high"),
            "loguniform": ("low", "high"),
            "normal": ("mean", "sd"),
            "truncnormal": ("mean", "sd", "low", "high"),
            "lognormal": ("median", "sigma"),
            "categorical": ("values", "weights"),
            "choice": ("values",),
            "bernoulli": ("p",),
            "conditional": ("given", "cases"),
        }[self.dist]
        allowed = set(need) | {"source"}
        given = {k for k in type(self).model_fields if getattr(self, k) is not None and k != "dist"}
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist '{self.dist}' needs {', '.join(need)} (missing: {', '.join(missing)})")
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"dist '{self.dist}' takes {', '.join(need)}, not {', '.join(extra)}")
        for name in ("low", "high", "mean", "sd", "median", "sigma", "p"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"'{name}' must be finite (got {v})")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"'high' must be greater than low = {self.low} (got {self.high})")
        if self.dist == "loguniform" and self.low is not None and self.low <= 0.0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low})")
        if self.sd is not None and self.sd <= 0.0:
            raise ValueError(f"sd must be > 0 (got {self.sd})")
        if self.dist == "lognormal" and (self.median <= 0.0 or self.sigma <= 0.0):  # type: ignore[operator]
            raise ValueError(f"lognormal needs median > 0 and sigma > 0 (got {self.median}, {self.sigma})")
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1] (got {self.p})")
        if self.values is not None and len(self.values) == 0:
            raise ValueError("'values' must not be empty")
        if self.weights is not None:
            if len(self.weights) != len(self.values or []):
                raise ValueError(f"{len(self.weights)} weights for {len(self.values or [])} values")
            if any(not math.isfinite(w) or w < 0.0 for w in self.weights) or sum(self.weights) <= 0.0:
                raise ValueError("weights must be finite, non-negative and not all zero")
        if self.cases is not None:
            if not self.cases:
                raise ValueError("'cases' must not be empty")
            nested = [k for k, c in self.cases.items() if c.dist == "conditional"]
            if nested:
                raise ValueError(f"cases {nested} are conditional themselves (one level only)")
        return self

    def ppf(self, u: np.ndarray, parent: list[Any] | None = None) -> list[Any]:
        """Values at cumulative probabilities u (the inverse CDF); ``parent`` values for conditionals."""
        u = np.clip(np.asarray(u, dtype=np.float64), _U_EPS, 1.0 - _U_EPS)
        d = self.dist
        if d == "conditional":
            assert self.cases is not None and parent is not None
            out: list[Any] = [None] * len(u)
            keys = list(self.cases)
            chosen = [_match_case(keys, v, self.given or "") for v in parent]
            for key in dict.fromkeys(chosen):
                idx = np.array([i for i, c in enumerate(chosen) if c == key], dtype=np.int64)
                for i, v in zip(idx, self.cases[key].ppf(u[idx]), strict=True):
                    out[i] = v
            return out
        if d == "uniform":
            x = self.low + u * (self.high - self.low)  # type: ignore[operator]
        elif d == "loguniform":
            x = exp_each(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))  # type: ignore[arg-type]
        elif d == "normal":
            x = self.mean + self.sd * _st.norm.ppf(u)  # type: ignore[operator]
        elif d == "truncnormal":
            a = (self.low - self.mean) / self.sd  # type: ignore[operator]
            b = (self.high - self.mean) / self.sd  # type: ignore[operator]
            x = _st.truncnorm.ppf(u, a, b, loc=self.mean, scale=self.sd)
        elif d == "lognormal":
            x = self.median * exp_each(self.sigma * _st.norm.ppf(u))  # type: ignore[operator]
        elif d == "bernoulli":
            return [bool(v) for v in (u < self.p)]
        else:  # categorical / choice
            values = self.values or []
            w = _normalised(self.weights if self.weights is not None else [1.0] * len(values))
            cum = np.cumsum(w)
            idx = np.minimum(np.searchsorted(cum, u, side="right"), len(values) - 1)
            return [copy.deepcopy(values[i]) for i in idx]
        if self.low is not None and d in ("uniform", "loguniform", "truncnormal"):
            x = np.clip(x, self.low, self.high)
        return [float(v) for v in np.atleast_1d(x)]


def _match_case(keys: list[str], value: Any, given: str) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    for key in keys:
        if fnmatch.fnmatchcase(text, key):
            return key
    raise ConfigError(
        f"conditional on '{given}': no case matches value {text!r} (cases: {', '.join(keys)}); add a case "
        "for it or a catch-all '*'"
    )


def _draw(path: str, dist: DistributionSpec, u: np.ndarray, parent: list[Any] | None) -> list[Any]:
    """``dist.ppf`` with a refusal named by the distribution's field (``distributions.<path>``)."""
    try:
        return dist.ppf(u, parent)
    except ConfigError as exc:
        raise ConfigError(f"distributions.{path}: {exc}") from None


class PolicySpec(_Strict):
    """A stop policy arm: ``stop_after_leak_s`` (number, null = never stop, or ``sampled`` = keep the
    patient's sampled/base value) plus optional further dotted-path ``overrides``."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)]
    stop_after_leak_s: StopAfterLeakS | None | Literal["sampled"] = "sampled"  # the scenario's bounds
    overrides: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


class EndpointSpec(_Strict):
    """How clinical endpoints are read from a run (thresholds in report units)."""

    leak_min_ml: Annotated[float, Field(ge=0.0)] = 0.01
    embolus_min_diameter_mm: Annotated[float, Field(ge=0.0)] = 0.0
    continued_injection_min_ml: Annotated[float, Field(ge=0.0)] = 0.1


class SensitivitySpec(_Strict):
    """Global sensitivity design: Morris (cheap) or Sobol, under one policy."""

    method: Literal["morris", "sobol", "none"] = "morris"
    policy: str | None = None
    trajectories: Annotated[int, Field(ge=2, le=1000)] = 10
    levels: Annotated[int, Field(ge=2, le=20)] = 4
    base_samples: Annotated[int, Field(ge=2, le=65536)] = 64
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    inputs: Annotated[list[str], Field(min_length=1)] | None = None  # [] meant all, and was counted as none


class LevelsSpec(_Strict):
    """Treated levels per patient: their number, the spacing rule and the per-level inputs."""

    count: DistributionSpec
    gap: DistributionSpec = DistributionSpec(dist="categorical", values=[1], weights=[1.0])
    per_level: list[str] = Field(default_factory=list)
    source: str = ""

    @model_validator(mode="after")
    def _integers(self) -> LevelsSpec:
        for name, spec, hi in (("count", self.count, MAX_LEVELS), ("gap", self.gap, MAX_GAP)):
            if spec.dist not in ("categorical", "choice"):
                raise ValueError(f"levels.{name} must be categorical or choice (got {spec.dist})")
            bad = [
                v
                for v in spec.values or []
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi
            ]
            if bad:
                raise ValueError(f"levels.{name} values must be integers 1..{hi} (got {bad})")
        dup = sorted({p for p in self.per_level if self.per_level.count(p) > 1})
        if dup:
            raise ValueError(f"levels.per_level repeats {', '.join(dup)}")
        if SEED_PATH in self.per_level:
            raise ValueError(f"'{SEED_PATH}' is per level already; do not list it")
        return self

    @property
    def mean_count(self) -> float:
        values = np.asarray(self.count.values or [], dtype=np.float64)
        w = _normalised(self.count.weights or [1.0] * len(values))
        return float((values * w).sum())

    def counts(self, seed: int, n: int) -> list[int]:
        """Number of treated levels of the first n patients of a cohort with root ``seed``."""
        return [int(v) for v in self.count.ppf(input_stream(seed, LEVEL_COUNT_PATH).random(n))]


class CohortSpec(_Strict):
    """A validated cohort file."""

    # the overrides' values as written in the file, by scenario path (sweep.override_literals)
    _override_literals: Literals = PrivateAttr(default_factory=dict)

    name: str = "cohort"
    description: str = ""
    base: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    n: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    distributions: dict[str, DistributionSpec] = Field(default_factory=dict)
    levels: LevelsSpec | None = None
    policies: list[PolicySpec] = Field(min_length=1)
    calibration_policy: str | None = None
    reference_policy: str | None = None
    share_runs: bool = True
    endpoints: EndpointSpec = EndpointSpec()
    sensitivity: SensitivitySpec = SensitivitySpec()
    bootstrap: Annotated[int, Field(ge=100, le=100_000)] = 2000
    executor: ExecutorSpec = ExecutorSpec()

    @model_validator(mode="after")
    def _consistent(self) -> CohortSpec:
        names = [p.name for p in self.policies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"policy names must be unique (repeated: {', '.join(dup)})")
        for key in ("calibration_policy", "reference_policy"):
            value = getattr(self, key)
            if value is not None and value not in names:
                raise ValueError(f"{key} '{value}' is not a policy (policies: {', '.join(names)})")
        if self.sensitivity.policy is not None and self.sensitivity.policy not in names:
            raise ValueError(f"sensitivity.policy '{self.sensitivity.policy}' is not a policy")
        if SEED_PATH in self.distributions:
            raise ValueError(f"'{SEED_PATH}' is set per patient from the cohort seed; do not sample it")
        for path, spec in self.distributions.items():
            if spec.dist == "conditional":
                if spec.given == path:
                    raise ValueError(f"distribution '{path}' is conditional on itself")
                parent = self.distributions.get(spec.given or "")
                if parent is not None and parent.dist == "conditional":
                    raise ValueError(f"'{path}' is conditional on '{spec.given}', itself conditional")
        if self.levels is not None:
            per = set(self.levels.per_level) | {LEVEL_PATH}
            for path in self.levels.per_level:
                if path != LEVEL_PATH and path not in self.distributions:
                    raise ValueError(f"levels.per_level: '{path}' has no distribution")
            for path, spec in self.distributions.items():
                if spec.dist == "conditional" and path not in per and spec.given in per:
                    raise ValueError(
                        f"'{path}' is shared by a patient's levels but conditional on the per-level "
                        f"'{spec.given}'; list it in levels.per_level"
                    )
        return self

    @property
    def calibration(self) -> str:
        return self.calibration_policy or self.policies[0].name

    @property
    def reference(self) -> str:
        return self.reference_policy or self.policies[0].name

    def policy(self, name: str) -> PolicySpec:
        return next(p for p in self.policies if p.name == name)


# ---------------------------------------------------------------------------- loading


def cohort_from_dict(data: Any, source: str = "cohort", literals: Literals | None = None) -> CohortSpec:
    """Validate a mapping as a cohort file; one line per problem naming the key (``literals``: the
    file's values as written, for the messages)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a cohort file must be a mapping, got {type(data).__name__}")
    try:
        spec = CohortSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root=CohortSpec, literals=literals)) from None
    spec._override_literals = override_literals(literals)
    for path in spec.distributions:
        check_value_path(path, f"{source}: distributions", "distribution")
    for path, dist in spec.distributions.items():
        if dist.given is not None:
            check_value_path(dist.given, f"{source}: distributions.{path}.given", "parent")
    for pol in spec.policies:
        for path in pol.overrides:
            check_dotted_path(path, f"{source}: policy '{pol.name}' overrides")
    for path in spec.sensitivity.inputs or []:
        if path not in spec.distributions:
            raise ConfigError(f"{source}: sensitivity.inputs: '{path}' has no distribution")
    return spec


def load_cohort(path: str | Path) -> tuple[CohortSpec, Path]:
    """Read and validate a cohort file; returns the spec and the folder relative paths resolve from."""
    p = Path(path)
    literals: Literals = {}
    data = read_yaml(p, literals)
    return cohort_from_dict(data, source=path_label(p), literals=literals), p.resolve().parent


def base_config(spec: CohortSpec, base_dir: str | Path, source: str = "cohort") -> dict[str, Any]:
    """The resolved base scenario (base file + overrides) as a clinical-unit dict."""
    return resolve_base_scenario(spec.base, spec.overrides, base_dir, source, spec._override_literals)


# ---------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class VirtualPatient:
    """Patient ``index``: its sampled inputs (dotted path -> value, incl. ``patient.seed``) of level 1,
    and the full inputs of its further levels (empty for a single-level patient)."""

    index: int
    inputs: dict[str, Any]
    extra_levels: tuple[dict[str, Any], ...] = ()

    @property
    def seed(self) -> int:
        return int(self.inputs[SEED_PATH])

    @property
    def levels(self) -> list[dict[str, Any]]:
        """Inputs of every treated level, level 1 first (the order of the sequential injections)."""
        return [self.inputs, *self.extra_levels]

    @property
    def n_levels(self) -> int:
        return 1 + len(self.extra_levels)


def input_stream(seed: int, path: str) -> np.random.Generator:
    """The sampling stream of one input: independent of every other input and of the input order."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(SAMPLING_KEY, zlib.crc32(path.encode())))
    )


def level_stream(seed: int, path: str, level: int) -> np.random.Generator:
    """The sampling stream of one input at treated level ``level`` >= 2 (level 1: :func:`input_stream`)."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(SAMPLING_KEY, zlib.crc32(path.encode()), level))
    )


def level_seeds(seed: int, n: int, level: int) -> list[int]:
    """Patient seeds (63-bit) of level ``level`` >= 2 for the first n patients (prefix-stable)."""
    root = np.random.SeedSequence(seed, spawn_key=(LEVEL_SEED_KEY, level))
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in root.spawn(n)]


def next_level(chosen: list[int], gap: int, u_side: float) -> int:
    """Index in :data:`SPINE_LEVELS` of the next treated level: ``gap`` vertebrae beyond the cluster.

    Caudal (below the lowest chosen level) when ``u_side < 0.5``, else cranial; the other side when
    the chosen one leaves T5..L5. Vertebral fractures cluster (U), hence a cluster that grows outwards;
    the new level is distinct from the chosen ones by construction.
    """
    low, high = min(chosen), max(chosen)
    sides = [high + gap, low - gap] if u_side < 0.5 else [low - gap, high + gap]
    for j in sides:
        if 0 <= j < len(SPINE_LEVELS):
            return j
    raise ConfigError(
        f"levels: no level {gap} vertebrae beyond {[SPINE_LEVELS[c] for c in chosen]} in T5..L5"
    )


def level_counts(spec: CohortSpec, n: int) -> list[int]:
    """Number of treated levels of the first n patients (all 1 without ``levels:``)."""
    return [1] * n if spec.levels is None else spec.levels.counts(spec.seed, n)


def _extra_levels(
    spec: CohortSpec, patients: list[VirtualPatient], base: dict[str, Any]
) -> list[tuple[dict[str, Any], ...]]:
    """Inputs of levels 2..count of every patient (see the module docstring for the streams)."""
    levels = spec.levels
    assert levels is not None
    n = len(patients)
    counts = level_counts(spec, n)
    per = [p for p in sampling_order(spec) if p in levels.per_level and p != LEVEL_PATH]
    first = [pt.inputs.get(LEVEL_PATH, _get_dotted(base, LEVEL_PATH)) for pt in patients]
    bad = sorted({str(v) for v in first if v not in SPINE_LEVELS})
    if bad:
        raise ConfigError(f"cohort '{spec.name}': level 1 {bad} is outside T5..L5")
    chosen = [[SPINE_LEVELS.index(v)] for v in first]
    out: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for k in range(2, MAX_LEVELS + 1):
        gaps = levels.gap.ppf(level_stream(spec.seed, LEVEL_GAP_PATH, k).random(n))
        sides = level_stream(spec.seed, LEVEL_SIDE_PATH, k).random(n)
        for i in range(n):
            chosen[i].append(next_level(chosen[i], int(gaps[i]), float(sides[i])))
        names = [SPINE_LEVELS[c[-1]] for c in chosen]
        values: dict[str, list[Any]] = {}
        for path in per:
            dist = spec.distributions[path]
            u = level_stream(spec.seed, path, k).random(n)
            parent = None
            if dist.dist == "conditional":
                given = dist.given or ""
                if given == LEVEL_PATH:
                    parent = names
                elif given in values:
                    parent = values[given]
                else:
                    parent = [pt.inputs.get(given, _get_dotted(base, given)) for pt in patients]
            values[path] = _draw(path, dist, u, parent)
        seeds = level_seeds(spec.seed, n, k)
        for i, pt in enumerate(patients):
            if counts[i] >= k:
                inputs = {**pt.inputs, **{p: values[p][i] for p in per}, LEVEL_PATH: names[i]}
                inputs[SEED_PATH] = seeds[i]  # last, as in level 1
                out[i].append(inputs)
    return [tuple(x) for x in out]


def sampling_order(spec: CohortSpec) -> list[str]:
    """Unconditional inputs first, then conditional ones (whose parents are then known)."""
    plain = [p for p, d in spec.distributions.items() if d.dist != "conditional"]
    return plain + [p for p, d in spec.distributions.items() if d.dist == "conditional"]


def map_inputs(spec: CohortSpec, u: dict[str, np.ndarray], base: dict[str, Any]) -> dict[str, list[Any]]:
    """Inputs from unit draws u[path] (same length for every path), conditionals after their parents."""
    out: dict[str, list[Any]] = {}
    for path in sampling_order(spec):
        dist = spec.distributions[path]
        parent = None
        if dist.dist == "conditional":
            given = dist.given or ""
            parent = out[given] if given in out else [_get_dotted(base, given)] * len(u[path])
        out[path] = _draw(path, dist, u[path], parent)
    return out


def sample_patients(
    spec: CohortSpec, n: int | None = None, base: dict[str, Any] | None = None
) -> list[VirtualPatient]:
    """The first n virtual patients of the cohort (n defaults to the file's ``n``)."""
    n = spec.n if n is None else int(n)
    if n < 1:
        raise ConfigError(f"cohort '{spec.name}': n = {n}: need at least one patient")
    u = {path: input_stream(spec.seed, path).random(n) for path in spec.distributions}
    values = map_inputs(spec, u, base or {})
    seeds = replicate_seeds(spec.seed, n)
    patients = [
        VirtualPatient(i, {**{p: values[p][i] for p in sampling_order(spec)}, SEED_PATH: seeds[i]})
        for i in range(n)
    ]
    if spec.levels is None:
        return patients
    extra = _extra_levels(spec, patients, base or {})
    return [VirtualPatient(pt.index, pt.inputs, extra[pt.index]) for pt in patients]


def _get_dotted(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def arm_config(base: dict[str, Any], inputs: dict[str, Any], policy: PolicySpec | None) -> dict[str, Any]:
    """Base scenario + a patient's inputs + a policy's overrides (clinical units)."""
    config = copy.deepcopy(base)
    for path, value in inputs.items():
        set_dotted(config, path, copy.deepcopy(value))
    if policy is not None:
        # as a study's overrides: a nested section is merged into the base's (not put in its place), and a
        # field given twice under two spellings is refused
        apply_overrides(config, policy.overrides, f"policy '{policy.name}': overrides")
        if policy.stop_after_leak_s != "sampled":
            set_dotted(config, STOP_PATH, policy.stop_after_leak_s)
    return config


def _validated(config: dict[str, Any], source: str) -> Scenario:
    return scenario_from_dict(config, source=source)


def support_values(dist: DistributionSpec) -> list[Any]:
    """The values a distribution can give that bound what it gives: every value of a list, both outcomes
    of a coin, the extreme draws of a bounded range (its inverse CDF at the smallest and largest unit
    draw, so a uniform on [0, 1) gives 1 - 1e-12, not 1), and these for each case of a conditional (an
    unbounded normal or lognormal gives none: no finite value bounds it)."""
    if dist.dist == "conditional":
        return [v for case in (dist.cases or {}).values() for v in support_values(case)]
    if dist.dist in ("categorical", "choice"):
        return list(dist.values or [])
    if dist.dist == "bernoulli":
        return [True, False]
    if dist.dist in ("uniform", "loguniform", "truncnormal"):
        return dist.ppf(np.array([0.0, 1.0]))
    return []


def _support_problems(
    spec: CohortSpec, base: dict[str, Any], first: dict[str, Any], source: str
) -> list[tuple[str, str]]:
    """Every value a distribution can give, put into the first patient's scenario: a bad one is refused
    now, not when (or if) a patient draws it, and a value every policy overrides is still checked. Only
    the value's own range and type count here: whether it fits the other inputs (mean pulmonary pressure
    above the left atrium's) depends on what else a patient draws, which each patient's arms check."""
    problems: list[tuple[str, str]] = []
    for path, dist in spec.distributions.items():
        for value in support_values(dist):
            label = f"{source}: distributions.{path} can give {json.dumps(value)}"
            config = arm_config(base, {**first, path: copy.deepcopy(value)}, None)
            try:
                _validated(config, label)
            except ConfigError as exc:
                if not _only_consistency(config):
                    problems.append((label, str(exc)))
    return problems


def _only_consistency(config: dict[str, Any]) -> bool:
    """Whether every problem of ``config`` is one between fields (a consistency check), none of one field."""
    try:
        Scenario.model_validate(config)
    except ValidationError as exc:
        return all(err.get("type") == "scenario_consistency" for err in exc.errors())
    return False


def _drawn(inputs: dict[str, Any]) -> str:
    """' (path=value, ...)' of the drawn inputs for a message, '' when nothing is drawn."""
    text = _short(inputs)
    return f" ({text})" if text else ""


def _short(inputs: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={json.dumps(v)}" for k, v in inputs.items() if k != SEED_PATH)
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class CohortExpansion(Expansion):
    """A sweep expansion whose exported input columns are the cohort's (patient, policy, inputs)."""

    columns: tuple[str, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return list(self.columns)


ArmKey = tuple[int, int, str]  # (patient, level 1..3, policy)


def _normalised(weights: list[float]) -> np.ndarray:
    """Weights as shares summing to 1. Weights whose sum overflows (each finite, e.g. 1e308) are scaled by
    their largest first (the sum was inf and every share 0, so every draw fell on the last value)."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore"):
        total = w.sum()
    if not math.isfinite(total):
        w = w / w.max()
        total = w.sum()
    return w / total


@dataclass
class CohortPlan:
    """Every (patient, level, policy) scenario of a cohort and the never-stop probe per (patient, level)."""

    spec: CohortSpec
    base: dict[str, Any]
    patients: list[VirtualPatient]
    arms: dict[ArmKey, Scenario]
    probes: dict[tuple[int, int], Scenario]
    shareable: dict[ArmKey, bool]
    # the sensitivity design's validated scenarios (one per design row), when planned with sensitivity
    design_rows: list[tuple[dict[str, Any], Scenario]] | None = None
    # the design itself, (input names, unit design, seed), built once for the rows and the run
    design: tuple[list[str], np.ndarray, int] | None = None

    @property
    def policy_names(self) -> list[str]:
        return [p.name for p in self.spec.policies]

    @property
    def multi_level(self) -> bool:
        return self.spec.levels is not None

    @property
    def input_names(self) -> list[str]:
        if not self.multi_level:
            return ["cohort.patient", "cohort.policy", *sampling_order(self.spec), SEED_PATH]
        order = sampling_order(self.spec)
        extra = [] if LEVEL_PATH in order else [LEVEL_PATH]
        return ["cohort.patient", "cohort.level", "cohort.policy", *order, *extra, SEED_PATH]

    def point_inputs(self, patient: int, level: int, policy: str) -> dict[str, Any]:
        """The exported input columns of one run (``cohort.level`` only in multi-level cohorts)."""
        head: dict[str, Any] = {"cohort.patient": patient}
        if self.multi_level:
            head["cohort.level"] = level
        head["cohort.policy"] = policy
        return {**head, **self.patients[patient].levels[level - 1]}

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything but n (growing a cohort in the same folder keeps its runs), with the
        bytes of the base scenario's input files (a replaced scan makes another cohort)."""
        doc = self.spec.model_dump(mode="json")
        doc.pop("n", None)
        doc.pop("executor", None)
        if doc.get("levels") is None:
            doc.pop("levels", None)  # a single-level cohort keeps its fingerprint (and its folder)
        key: dict[str, Any] = {"spec": doc, "base": self.base}
        files = anatomy_file_digests((self.base.get("patient") or {}).get("anatomy"))
        if files:  # a CT base: the scans' bytes, not only their paths (sim.core.input_files)
            key["input_files"] = files
        blob = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def plan_cohort(
    spec: CohortSpec,
    base_dir: str | Path = ".",
    n: int | None = None,
    source: str = "cohort",
    sensitivity: bool = False,
) -> CohortPlan:
    """Sample the patients and validate every (patient, policy) scenario before anything runs.

    The scenario count is checked against :data:`sim.studies.sizing.MAX_SCENARIOS` first; invalid
    arms are summarised (a few examples, then counts per field). With ``sensitivity`` the sensitivity
    design's scenarios are validated too (a design row outside a field's range used to stop the
    cohort after all its patient runs, and again on every resume).
    """
    from sim.studies.sizing import MAX_SCENARIOS, check_study_size, cohort_counts, cohort_estimate

    n_patients = spec.n if n is None else int(n)
    scenarios, _ = cohort_counts(spec, n_patients, sensitivity=False)
    estimate = cohort_estimate(
        n_patients, spec.executor.workers, 0, levels=scenarios_per_patient(spec, n_patients)
    )
    check_study_size(source, "patients", n_patients, MAX_SCENARIOS, True, estimate, scenarios)
    base = base_config(spec, Path(base_dir), source)
    try:
        patients = sample_patients(spec, n, base)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    arms: dict[ArmKey, Scenario] = {}
    probes: dict[tuple[int, int], Scenario] = {}
    shareable: dict[ArmKey, bool] = {}
    problems: list[tuple[str, str]] = _support_problems(spec, base, patients[0].inputs, source)
    never = PolicySpec(name="never_stop_probe", stop_after_leak_s=None)
    for pt in patients:
        for k, inputs in enumerate(pt.levels, start=1):
            where = f"patient {pt.index}" + (f" level {k}" if spec.levels is not None else "")
            probe_cfg = arm_config(base, inputs, never)
            for pol in spec.policies:
                cfg = arm_config(base, inputs, pol)
                label = f"{source}: {where} policy '{pol.name}'{_drawn(inputs)}"
                try:
                    arms[(pt.index, k, pol.name)] = _validated(cfg, label)
                except ConfigError as exc:
                    problems.append((label, str(exc)))
                    continue
                a, b = copy.deepcopy(cfg), copy.deepcopy(probe_cfg)
                set_dotted(a, STOP_PATH, None)
                set_dotted(b, STOP_PATH, None)
                shareable[(pt.index, k, pol.name)] = spec.share_runs and a == b
            if spec.share_runs and any(shareable.get((pt.index, k, p.name), False) for p in spec.policies):
                label = f"{source}: {where} never-stop probe"
                try:
                    probes[(pt.index, k)] = _validated(probe_cfg, label)
                except ConfigError as exc:
                    problems.append((label, str(exc)))
    if problems:
        raise ConfigError(summarise_problems(problems, "patient-policy scenarios"))
    plan = CohortPlan(spec, base, patients, arms, probes, shareable)
    if sensitivity and spec.sensitivity.method != "none":
        plan.design_rows = sensitivity_scenarios(plan, source)
    return plan


def scenarios_per_patient(spec: CohortSpec, n: int) -> float:
    """Mean number of treated levels (runs per policy arm) over the first n patients."""
    return float(np.mean(level_counts(spec, n))) if n > 0 else 1.0


def _expansion(plan: CohortPlan, keys: list[tuple[int, int, str]]) -> CohortExpansion:
    """Sweep expansion of the given (patient, level, policy) keys (policy '' = the never-stop probe)."""
    names = plan.policy_names
    points: list[SweepPoint] = []
    seen: set[str] = set()
    for i, k, pol in keys:
        scenario = plan.probes[(i, k)] if pol == "" else plan.arms[(i, k, pol)]
        digest = scenario.content_hash()
        if digest in seen:
            continue
        seen.add(digest)
        j = len(names) if pol == "" else names.index(pol)
        index = (k - 1) * LEVEL_INDEX_STRIDE + i * (len(names) + 1) + j
        inputs = plan.point_inputs(i, k, pol or "never_stop_probe")
        points.append(SweepPoint(index, i, inputs, scenario, digest))
    spec = SweepSpec(name=plan.spec.name, description=plan.spec.description, executor=plan.spec.executor)
    return CohortExpansion(spec, plan.base, points, columns=tuple(plan.input_names))


# ---------------------------------------------------------------------------- running


@dataclass
class ArmResult:
    """The outcome of one (patient, level, policy): which run produced it and what it reported."""

    patient: int
    policy: str
    hash: str
    status: str  # done / failed / pending
    shared: bool  # result reused from the never-stop probe (identical by the stop-policy contract)
    summary: dict[str, Any] | None
    emboli: dict[str, list[Any]] | None
    error: str | None
    level: int = 1  # treated level of the patient (1..3, in injection order)


@dataclass
class SensitivityRun:
    """A sensitivity design, the scenario hash per design row, and the ledger results."""

    method: str
    policy: str
    names: list[str]
    design: np.ndarray
    hashes: list[str]
    results: dict[str, ArmResult]
    levels: int
    seed: int
    n_ran: int = 0

    @property
    def failed(self) -> list[ArmResult]:
        return [r for r in self.results.values() if r.status != "done"]


@dataclass
class CohortRun:
    """Everything a cohort produced: the plan, per-arm results, sensitivity runs, files, failures."""

    plan: CohortPlan
    arms: dict[ArmKey, ArmResult]
    sensitivity: SensitivityRun | None = None
    files: list[Path] = field(default_factory=list)
    n_runs: int = 0

    @property
    def failed(self) -> list[ArmResult]:
        return [a for a in self.arms.values() if a.status != "done"]


CohortProgress = Callable[[str, int, int, int], None]  # (phase, finished, total, failed)


def _guard_folder(plan: CohortPlan, out: Path, force: bool) -> None:
    """Refuse a folder holding a different cohort (other inputs, policies or base) unless forced, and one
    holding more patients than this call asks for (its report would be rewritten for fewer; a larger
    ``--n`` extends the folder, an equal one resumes it)."""
    marker = out / "cohort.resolved.yaml"
    if marker.exists() and not force:
        try:
            old = yaml.safe_load(marker.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            old = {}
        if not isinstance(old, dict):
            old = {}
        if old.get("fingerprint") not in (None, plan.fingerprint):
            raise ConfigError(
                f"{out}: holds a different cohort ('{old.get('name')}'); use another --out folder, or "
                "--force to switch this folder to the new cohort"
            )
        held, asked = old.get("n"), len(plan.patients)
        if isinstance(held, int) and not isinstance(held, bool) and held > asked:
            raise ConfigError(
                f"{out}: holds a cohort of {held} patients; asking for {asked} (--n or the file's n) would "
                f"rewrite its report for {asked}: ask for {held} or more to resume or extend it, use another "
                "--out folder, or --force"
            )
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": plan.spec.name,
        "fingerprint": plan.fingerprint,
        "n": len(plan.patients),
        "cohort": plan.spec.model_dump(mode="json"),
        "base_scenario": plan.base,
    }
    tmp = marker.with_name(f".{marker.name}.partial")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write("# resolved cohort: re-running `pce-sim cohort` with the same file resumes this folder\n")
        yaml.safe_dump(doc, fh, sort_keys=False)
    tmp.replace(marker)


def _ledger_results(folder: Path) -> dict[str, tuple[str, dict | None, dict | None, str | None]]:
    with open_ledger(folder, exclusive=False) as ledger:
        return {r.hash: (r.status or "pending", r.summary, r.emboli, r.error) for r in ledger.rows()}


def reuses_probe(probe_summary: dict[str, Any] | None, scenario: Scenario) -> bool:
    """True when the never-stop run is provably this arm's run too (see the module docstring)."""
    if probe_summary is None:
        return False
    delay = scenario.injection.stop_after_leak_s
    if delay is None:
        return True
    det = probe_summary.get("detection_time_s")
    end = probe_summary.get("injection_duration_s")
    if det is None or (isinstance(det, float) and math.isnan(det)):
        return "detection_time_s" in probe_summary
    if end is None or not math.isfinite(float(end)):
        return False
    stop_at = StopPolicy(delay, scenario.fluoroscopy.reaction_delay_s).stop_time_s(float(det))
    return stop_at is not None and stop_at > float(end) * (1.0 + 1e-9) + 1e-9


def _branchable_arms(plan: CohortPlan, units: list[tuple[int, int]]) -> dict[str, list[tuple[float, str]]]:
    """{never-stop hash: [(stop delay, arm hash), ...]} of the shareable arms that stop on a leak."""
    arms: dict[str, list[tuple[float, str]]] = {}
    for i, k in units:
        probe = plan.probes.get((i, k))
        if probe is None:
            continue
        probe_hash = probe.content_hash()
        seen: set[str] = set()
        for pol in plan.policy_names:
            arm = plan.arms[(i, k, pol)]
            delay = arm.injection.stop_after_leak_s
            digest = arm.content_hash()
            if (
                plan.shareable[(i, k, pol)]
                and delay is not None
                and digest != probe_hash
                and digest not in seen
            ):
                seen.add(digest)
                arms.setdefault(probe_hash, []).append((float(delay), digest))
    return arms


def run_cohort(
    plan: CohortPlan,
    out_dir: str | Path,
    *,
    executor_factory: Callable[[], Executor] | None = None,
    workers: int | None = None,
    runner: Runner = DEFAULT_RUNNER,
    writer: Runner = DEFAULT_WRITER,
    force: bool = False,
    sensitivity: bool = True,
    progress: CohortProgress | None = None,
    other_code: str = "refuse",
) -> CohortRun:
    """Run (or resume) a cohort in ``out_dir`` on the sweep machinery; returns per-arm results.

    ``executor_factory`` makes the executor (default: the cohort file's executor, ``workers``
    overriding its worker count). One executor serves every phase (never-stop runs, policy arms,
    sensitivity), made when the first task is submitted: worker processes start (imports, JIT
    cache) once per cohort, not once per phase. Runs done by other code are refused, re-run or kept
    as ``other_code`` says (see :func:`sim.studies.sweep.run_sweep`), phase by phase.
    """
    out = Path(out_dir)
    if executor_factory is None:
        ex = plan.spec.executor
        executor_factory = lambda: make_executor(ex.kind, workers or ex.workers, ex.address)  # noqa: E731
    pool = SharedExecutor(executor_factory)
    try:
        with OutputClaim(out):  # one cohort per folder for the whole run (the ledger lock is per phase)
            return _run_cohort(
                plan, out, lambda: pool, workers, runner, writer, force, sensitivity, progress, other_code
            )
    except KeyboardInterrupt:
        pool.shutdown(interrupted=True)
        raise
    finally:
        pool.shutdown()


def _refuse_other_code(plan: CohortPlan, out: Path, sensitivity: bool) -> None:
    """Refuse, before any phase runs, a folder holding finished runs of this cohort made by other code.

    The phases register their own expansions in one ledger (never-stop runs, then policy arms), so each
    phase's own check (:func:`sim.studies.sweep.check_other_code`) would see only its runs and could
    refuse after an earlier phase had run; this looks at every run the plan uses, and at the
    sensitivity folder's ledger, first.
    """
    from sim.core.provenance import code_digest
    from sim.studies.sweep import describe_codes, other_code_message

    stale: list[tuple[str, str | None]] = []
    if (out / "ledger.sqlite").exists():
        used = {s.content_hash() for s in (*plan.probes.values(), *plan.arms.values())}
        with open_ledger(out, exclusive=False) as ledger:
            stale += ledger.other_code(code_digest(), among=used)
    folder = out / "sensitivity"
    if sensitivity and plan.spec.sensitivity.method != "none" and (folder / "ledger.sqlite").exists():
        with open_ledger(folder, exclusive=False) as ledger:
            stale += ledger.other_code(code_digest())
    if stale:
        what = f"{len(stale)} finished runs of this cohort"
        raise ConfigError(other_code_message(out, what, describe_codes(stale)))


def run_cost(scenario: Scenario) -> float:
    """A run's relative cost for scheduling: its planned volume squared over its grid spacing cubed.

    Steps grow with the injected volume (the front advances about one cell per step) and each step's
    pressure solve with the cement's cells (volume / h^3); only the order matters (dearest first)."""
    return scenario.injection.volume_ml * scenario.injection.volume_ml / scenario.grid.spacing_mm**3


def _run_cohort(
    plan: CohortPlan,
    out: Path,
    executor_factory: Callable[[], Executor] | None,
    workers: int | None,
    runner: Runner,
    writer: Runner,
    force: bool,
    sensitivity: bool,
    progress: CohortProgress | None,
    other_code: str = "refuse",
) -> CohortRun:
    _guard_folder(plan, out, force)
    if other_code == "refuse":
        _refuse_other_code(plan, out, sensitivity)
    n_runs = 0

    def sweep(expansion: CohortExpansion, folder: Path, phase: str, phase_runner: Runner = runner) -> None:
        nonlocal n_runs
        if not expansion.points:
            return
        cb = None if progress is None else (lambda f, t, k: progress(phase, f, t, k))
        outcome = run_sweep(
            expansion,
            folder,
            executor=executor_factory() if executor_factory is not None else None,
            workers=workers,
            runner=phase_runner,
            writer=writer,
            force=True,
            other_code=other_code,
            progress=cb,
            cost=run_cost,
        )
        n_runs += outcome.ran

    names = plan.policy_names
    units = [(p.index, k) for p in plan.patients for k in range(1, p.n_levels + 1)]
    # arms branched off the never-stop runs (same numbers, the shared history simulated once)
    branching = bool(plan.probes) and runner == DEFAULT_RUNNER
    stash = out / STASH_DIR
    probe_runner, arm_runner = runner, runner
    if branching:
        write_arm_map(stash, _branchable_arms(plan, units))
        probe_runner, arm_runner = NeverStopWithArms(stash), StashedArm(stash)
    if plan.probes:
        first = [(i, k, "") for i, k in units if (i, k) in plan.probes]
        sweep(_expansion(plan, first), out, "never-stop runs", probe_runner)
        done = _ledger_results(out)
        keys = list(first)
        shared: dict[ArmKey, bool] = {}
        for i, k in units:
            probe = plan.probes.get((i, k))
            probe_res = done.get(probe.content_hash()) if probe is not None else None
            summary = probe_res[1] if probe_res is not None and probe_res[0] == "done" else None
            for pol in names:
                scenario = plan.arms[(i, k, pol)]
                reuse = plan.shareable[(i, k, pol)] and reuses_probe(summary, scenario)
                shared[(i, k, pol)] = reuse and scenario.content_hash() != probe.content_hash()  # type: ignore[union-attr]
                if not reuse:
                    keys.append((i, k, pol))
        sweep(_expansion(plan, keys), out, "policy arms", arm_runner)
        if branching:
            shutil.rmtree(stash, ignore_errors=True)
    else:
        shared = {(i, k, pol): False for i, k in units for pol in names}
        sweep(_expansion(plan, [(i, k, pol) for i, k in units for pol in names]), out, "runs")
    done = _ledger_results(out)
    arms: dict[ArmKey, ArmResult] = {}
    for i, k in units:
        for pol in names:
            key = (i, k, pol)
            h = plan.probes[(i, k)].content_hash() if shared[key] else plan.arms[key].content_hash()
            status, summary, emboli, error = done.get(h, ("pending", None, None, None))
            arms[key] = ArmResult(i, pol, h, status, shared[key], summary, emboli, error, k)
    run = CohortRun(plan, arms, n_runs=n_runs)
    if sensitivity and plan.spec.sensitivity.method != "none":
        run.sensitivity = run_sensitivity(
            plan, out / "sensitivity", executor_factory, workers, runner, writer, progress, other_code
        )
        run.n_runs += run.sensitivity.n_ran
    return run


# ---------------------------------------------------------------------------- sensitivity


def sensitivity_inputs(spec: CohortSpec) -> list[str]:
    """The design's inputs: the listed (or all sampled) paths plus the patient-seed pseudo-input."""
    names = list(spec.sensitivity.inputs or sampling_order(spec))
    return [*names, SEED_PATH]


def sensitivity_design(spec: CohortSpec) -> tuple[list[str], np.ndarray, int]:
    """(input names, unit design, seed) for the cohort's sensitivity method."""
    from sim.studies.stats import morris_design, sobol_design

    s = spec.sensitivity
    seed = spec.seed if s.seed is None else s.seed
    names = sensitivity_inputs(spec)
    if s.method == "morris":
        return names, morris_design(names, s.trajectories, s.levels, seed), seed
    if s.method == "sobol":
        return names, sobol_design(names, s.base_samples, seed), seed
    raise ConfigError(f"sensitivity method '{s.method}': allowed: morris, sobol")


def design_inputs(
    spec: CohortSpec, names: list[str], design: np.ndarray, base: dict[str, Any], seed: int
) -> list[dict[str, Any]]:
    """Scenario inputs per design row; u on Morris grid levels is moved to bin centres first."""
    s = spec.sensitivity
    u = np.asarray(design, dtype=np.float64)
    if s.method == "morris":
        u = (u * (s.levels - 1) + 0.5) / s.levels
    cols = {name: u[:, j] for j, name in enumerate(names)}
    full = {path: cols.get(path, np.full(len(u), 0.5)) for path in spec.distributions}
    values = map_inputs(spec, full, base)
    pool = replicate_seeds(seed, SEED_POOL)
    seed_idx = np.minimum((cols[SEED_PATH] * SEED_POOL).astype(np.int64), SEED_POOL - 1)
    return [
        {**{p: values[p][r] for p in sampling_order(spec)}, SEED_PATH: pool[seed_idx[r]]}
        for r in range(len(u))
    ]


def sensitivity_scenarios(plan: CohortPlan, source: str) -> list[tuple[dict[str, Any], Scenario]]:
    """(inputs, validated scenario) of every sensitivity design row; the invalid ones are refused together,
    named by ``source`` (the cohort file) and row, before any run starts."""
    spec = plan.spec
    policy = spec.policy(spec.sensitivity.policy or spec.calibration)
    if plan.design is None:
        plan.design = sensitivity_design(spec)
    names, design, seed = plan.design
    out: list[tuple[dict[str, Any], Scenario]] = []
    problems: list[tuple[str, str]] = []
    for r, inputs in enumerate(design_inputs(spec, names, design, plan.base, seed)):
        label = f"{source}: sensitivity design row {r}{_drawn(inputs)}"
        try:
            out.append((inputs, _validated(arm_config(plan.base, inputs, policy), label)))
        except ConfigError as exc:
            problems.append((label, str(exc)))
    if problems:
        raise ConfigError(summarise_problems(problems, "sensitivity design rows"))
    return out


def run_sensitivity(
    plan: CohortPlan,
    folder: Path,
    executor_factory: Callable[[], Executor] | None = None,
    workers: int | None = None,
    runner: Runner = DEFAULT_RUNNER,
    writer: Runner = DEFAULT_WRITER,
    progress: CohortProgress | None = None,
    other_code: str = "refuse",
) -> SensitivityRun:
    """Run the sensitivity design (one ordinary scenario per distinct design row) in ``folder``."""
    spec = plan.spec
    policy = spec.policy(spec.sensitivity.policy or spec.calibration)
    rows = plan.design_rows if plan.design_rows is not None else sensitivity_scenarios(plan, spec.name)
    assert plan.design is not None  # drawn with the rows (sensitivity_scenarios)
    names, design, seed = plan.design
    points: list[SweepPoint] = []
    hashes: list[str] = []
    seen: set[str] = set()
    for r, (inputs, scenario) in enumerate(rows):
        digest = scenario.content_hash()
        hashes.append(digest)
        if digest not in seen:
            seen.add(digest)
            points.append(SweepPoint(r, r, {"cohort.design_row": r, **inputs}, scenario, digest))
    input_names = ["cohort.design_row", *sampling_order(spec), SEED_PATH]
    expansion = CohortExpansion(
        SweepSpec(name=f"{spec.name}-sensitivity", executor=spec.executor),
        plan.base,
        points,
        columns=tuple(input_names),
    )
    cb = None if progress is None else (lambda f, t, k: progress("sensitivity", f, t, k))
    outcome = run_sweep(
        expansion,
        folder,
        executor=executor_factory() if executor_factory is not None else None,
        workers=workers,
        runner=runner,
        writer=writer,
        force=True,
        other_code=other_code,
        progress=cb,
        cost=run_cost,
    )
    done = _ledger_results(folder)
    results = {}
    for h in seen:
        status, summary, emboli, error = done.get(h, ("pending", None, None, None))
        results[h] = ArmResult(-1, policy.name, h, status, False, summary, emboli, error)
    return SensitivityRun(
        spec.sensitivity.method,
        policy.name,
        names,
        design,
        hashes,
        results,
        spec.sensitivity.levels,
        seed,
        outcome.ran,
    )
