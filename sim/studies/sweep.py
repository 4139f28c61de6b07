"""Sweep files: a base scenario, parameters by dotted path, a sampling method, replicates, an executor.

A sweep file (YAML) names a base scenario (``base:``, a path relative to the sweep file) and/or
inline ``overrides:`` (nested or dotted keys), a ``method`` (``grid`` = full factorial of the
``values`` lists; ``lhs`` = Latin hypercube; ``random`` = independent uniform draws), a
``samples`` count for lhs/random, ``replicates`` (patient seeds) and an ``executor``.

Sampling (McKay, Beckman & Conover 1979, Technometrics 21:239, for the Latin hypercube): with N
samples each parameter's unit interval is cut into N equal strata, each stratum is used exactly
once (a random permutation per parameter assigns strata to samples) and the point inside a
stratum is uniform. ``range: [lo, hi]`` maps u in [0, 1) to ``lo + u (hi - lo)`` (``scale:
linear``) or ``lo (hi/lo)^u`` (``scale: log``, strata equal in log space); ``values: [...]`` maps
u to ``values[floor(u * len(values))]``, so each listed value gets N/len strata.

Seeds: one ``numpy.random.SeedSequence(seed)`` is spawned into a sampling stream and a
replicate stream; replicate r gets ``patient.seed`` from the r-th child of the replicate stream,
identical for every parameter point (common random numbers: the same virtual patients see every
protocol, so differences between points are not sampling noise). With ``replicates: 1`` and no
``seed`` the base scenario's own ``patient.seed`` is kept.

Every expanded scenario is validated with :func:`sim.core.config.scenario_from_dict` before anything
runs; errors name the dotted path (with the known keys) or the scenario index and field.

:func:`run_sweep` drives a sweep folder: ``sweep.resolved.yaml`` and ``scenarios.csv`` (what will
run), ``ledger.sqlite`` (:mod:`sim.studies.ledger`, resumable state), ``runs/<hash[:12]>/`` (one run folder
per scenario) and the exports ``results.csv`` / ``emboli.csv`` (+ Parquet). Runs execute on an
executor from :mod:`sim.studies.executors`; the runner and writer are parameters (default: the real
``sim.run.pipeline.run_scenario`` / ``write_run``, imported lazily in the workers).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from sim.core.config import (
    NoBoolForNumber,
    Scenario,
    format_validation_error,
    read_yaml,
    scenario_from_dict,
    shown_value,
)
from sim.core.errors import ConfigError
from sim.core.provenance import code_digest, code_label
from sim.core.safe_yaml import Literals, path_label
from sim.run.output_folder import remove_tree
from sim.studies import MAX_WORKERS
from sim.studies.executors import (
    DEFAULT_RUNNER,
    DEFAULT_WRITER,
    Executor,
    LocalExecutor,
    Outcome,
    Runner,
    RunTask,
    SerialExecutor,
    make_executor,
)
from sim.studies.ledger import export_tables, open_ledger, write_csv

SEED_PATH = "patient.seed"
# files a sweep folder holds from its first moment (the ledger, write_sweep_manifest); a folder with
# none is not a sweep
SWEEP_MARKERS = ("ledger.sqlite", ".sweep.lock", "sweep.resolved.yaml")
# a scheduler a Client can reach: [scheme://]host:port, host a name, an IPv4 or a bracketed IPv6 address
DASK_ADDRESS = re.compile(
    r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):([1-9][0-9]{0,4})"
)


class _Strict(NoBoolForNumber):
    model_config = ConfigDict(extra="forbid")


class ParameterSpec(_Strict):
    """One swept parameter: a list of ``values`` or a ``range`` sampled on a linear or log scale."""

    values: list[Any] | None = None
    range: tuple[float, float] | None = None
    scale: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def _one_of(self) -> ParameterSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError("give exactly one of 'values' or 'range'")
        if self.values is not None and len(self.values) == 0:
            raise ValueError("'values' must not be empty")
        if self.range is not None:
            lo, hi = self.range
            if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
                raise ValueError(f"'range' must be [lo, hi] with finite lo <= hi (got [{lo}, {hi}])")
            if self.scale == "log" and lo <= 0.0:
                raise ValueError(f"'scale: log' needs a positive range (got lo = {lo})")
        elif self.scale != "linear":
            raise ValueError("'scale' applies to 'range' only")
        return self


class ExecutorSpec(_Strict):
    """Where runs execute: ``local`` process pool, ``dask`` cluster, or ``serial`` (in-process, debugging)."""

    kind: Literal["local", "dask", "serial"] = "local"
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 2
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, address: str | None) -> str | None:
        match = None if address is None else DASK_ADDRESS.fullmatch(address)
        if address is not None and (match is None or int(match.group(1)) > 65535):
            raise ValueError(
                "allowed: a Dask scheduler's address, host:port with an optional tcp://, tls://, ucx://, "
                "ws:// or wss:// (e.g. tcp://10.0.0.5:8786; port 1-65535), or no address for a local cluster"
            )
        return address

    @model_validator(mode="after")
    def _address_for_dask(self) -> ExecutorSpec:
        if self.address is not None and self.kind != "dask":
            raise ValueError(f"'address' is only used with kind 'dask' (kind is '{self.kind}')")
        if self.kind == "serial" and "workers" in self.model_fields_set and self.workers != 1:
            raise ValueError("kind 'serial' runs one run at a time in this process: leave 'workers' out")
        return self


class SweepSpec(_Strict):
    """A validated sweep file."""

    # the overrides' values as written in the file, by scenario path (:func:`override_literals`)
    _override_literals: Literals = PrivateAttr(default_factory=dict)

    name: str = "sweep"
    description: str = ""
    base: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    method: Literal["grid", "lhs", "random"] = "grid"
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    samples: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    replicates: Annotated[int, Field(ge=1, le=100_000)] = 1
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    executor: ExecutorSpec = ExecutorSpec()

    @model_validator(mode="after")
    def _method_needs(self) -> SweepSpec:
        if self.method == "grid":
            if self.samples is not None:
                raise ValueError("'samples' is for method lhs/random; a grid runs every combination")
            ranged = [p for p, s in self.parameters.items() if s.range is not None]
            if ranged:
                raise ValueError(f"method 'grid' needs 'values' lists, got 'range' for: {', '.join(ranged)}")
        elif self.samples is None:
            raise ValueError(f"method '{self.method}' needs 'samples' (number of parameter points)")
        if SEED_PATH in self.parameters and self.replicates > 1:
            raise ValueError(f"sweep '{SEED_PATH}' or use replicates, not both")
        return self


@dataclass(frozen=True)
class SweepPoint:
    """One expanded scenario: its position, the swept inputs (dotted path -> value) and its hash."""

    index: int
    replicate: int
    inputs: dict[str, Any]
    scenario: Scenario
    hash: str

    @property
    def run_id(self) -> str:
        return self.hash[:12]


@dataclass(frozen=True)
class Expansion:
    """All scenarios of a sweep, in a deterministic order, plus the resolved base config.

    Sampled (lhs/random) points that repeat an earlier scenario exactly (possible when every
    parameter is a ``values`` list) are run once; ``duplicates_dropped`` counts them.
    """

    spec: SweepSpec
    base_config: dict[str, Any]
    points: list[SweepPoint]
    duplicates_dropped: int = 0
    # (swept parameter, override it replaces): an override of a swept field never reaches a run
    shadowed_overrides: tuple[tuple[str, str], ...] = ()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the ordered scenario hashes: two sweeps with equal fingerprints run the same work."""
        return hashlib.sha256("\n".join(p.hash for p in self.points).encode()).hexdigest()

    @property
    def input_names(self) -> list[str]:
        names = list(self.spec.parameters)
        return names if SEED_PATH in names else [*names, SEED_PATH]


# ---------------------------------------------------------------------------- loading


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """Read and validate a sweep file; returns the spec and the folder relative paths resolve from."""
    p = Path(path)
    literals: Literals = {}
    data = read_yaml(p, literals)
    return sweep_from_dict(data, source=path_label(p), literals=literals), p.resolve().parent


def sweep_from_dict(data: Any, source: str = "sweep", literals: Literals | None = None) -> SweepSpec:
    """Validate a mapping as a sweep file; one line per problem, naming the key (``literals``: the
    file's values as written, for the messages)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep file must be a mapping, got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root=SweepSpec, literals=literals)) from None
    spec._override_literals = override_literals(literals)
    return spec


def override_literals(literals: Literals | None) -> Literals:
    """A study file's ``overrides`` values as written, keyed by their scenario path: ``overrides:
    {grid.spacing_mm: 0.0010}`` and ``overrides: {grid: {spacing_mm: 0.0010}}`` both give
    ``("grid", "spacing_mm")``, so an override the base scenario refuses is printed as written."""
    out: Literals = {}
    for path, entry in (literals or {}).items():
        if len(path) >= 2 and path[0] == "overrides" and isinstance(path[1], str):
            out[(*path[1].split("."), *path[2:])] = entry
    return out


# ---------------------------------------------------------------------------- dotted paths


def check_dotted_path(path: str, source: str = "sweep") -> None:
    """Raise ConfigError unless ``path`` names a field of :class:`Scenario` (naming the known keys)."""
    model: Any = Scenario
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            where = ".".join(parts[:depth])
            raise ConfigError(f"{source}: parameter '{path}': '{where}' is a value, it has no key '{part}'")
        if part not in model.model_fields:
            where = ".".join(parts[:depth]) or "the scenario top level"
            known = ", ".join(model.model_fields)
            raise ConfigError(
                f"{source}: parameter '{path}': no key '{part}' in {where} (known keys: {known})"
            )
        model = _nested_model(model.model_fields[part].annotation)


def check_value_path(path: str, source: str = "sweep", what: str = "parameter") -> None:
    """Like :func:`check_dotted_path`, and refuse a whole section (``patient``): only values vary."""
    check_dotted_path(path, source)
    section = _nested_model_at(path)
    if section is not None and not _admits_value(path):
        fields = list(section.model_fields)
        raise ConfigError(
            f"{source}: {what} '{path}' is a section (a mapping of {', '.join(fields[:4])}, ...), not a "
            f"value; name one of its fields, e.g. '{path}.{fields[0]}'"
        )


def _admits_value(path: str) -> bool:
    """True when the field at ``path`` takes a plain value as well as a section (``patient.anatomy``:
    ``parametric`` or a CT mapping), so a sweep or cohort may set it whole."""
    model: Any = Scenario
    parts = path.split(".")
    for part in parts[:-1]:
        model = _nested_model(model.model_fields[part].annotation)

    def leaves(annotation: Any) -> list[Any]:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Literal or not args:
            return [annotation]
        if typing.get_origin(annotation) is typing.Annotated:
            return leaves(args[0])
        return [leaf for arg in args for leaf in leaves(arg)]

    return any(
        leaf is not type(None) and not (isinstance(leaf, type) and issubclass(leaf, BaseModel))
        for leaf in leaves(model.model_fields[parts[-1]].annotation)
    )


def _nested_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def set_dotted(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``config[a][b][c] = value`` for path ``a.b.c``, creating (or replacing null) sections."""
    parts = path.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(
    config: dict[str, Any], overrides: dict[str, Any], source: str, _set: set[str] | None = None
) -> None:
    """Merge overrides (nested mappings and/or dotted keys) into ``config`` in place.

    A field may be set once: ``{grid: {spacing_mm: 2}, grid.spacing_mm: 1.5}`` names it twice (the YAML
    loader refuses only a key repeated verbatim), and the last one used to win silently."""
    written: set[str] = set() if _set is None else _set
    for key, value in overrides.items():
        check_dotted_path(key, source)
        if isinstance(value, dict) and _nested_model_at(key) is not None:
            for sub_key, sub_value in value.items():
                apply_overrides(config, {f"{key}.{sub_key}": sub_value}, source, written)
            continue
        if key in written:
            raise ConfigError(f"{source}: {key} is given twice; each field may be set once")
        written.add(key)
        set_dotted(config, key, copy.deepcopy(value))


def _nested_model_at(path: str) -> Any:
    model: Any = Scenario
    for part in path.split("."):
        model = _nested_model(model.model_fields[part].annotation)
    return model


# ---------------------------------------------------------------------------- sampling


def unit_samples(method: str, n: int, n_params: int, rng: np.random.Generator) -> np.ndarray:
    """Points in [0, 1)^n_params, shape (n, n_params): Latin hypercube or independent uniform."""
    if method == "lhs":
        u = np.empty((n, n_params))
        for j in range(n_params):
            strata = rng.permutation(n)
            u[:, j] = (strata + rng.random(n)) / n
        return u
    if method == "random":
        return rng.random((n, n_params))
    raise ConfigError(f"unknown sampling method '{method}' (allowed: lhs, random)")


def exp_each(x: np.ndarray) -> np.ndarray:
    """exp of each value by the C library, not numpy's SIMD loop: numpy takes another code path on an
    AVX-512 CPU than on an AVX2 one, and a drawn input one ulp apart changes a scenario's hash (a cached
    run is not found on the other machine) and its last bits."""
    return np.array([math.exp(v) for v in np.atleast_1d(np.asarray(x, dtype=float))])


def map_unit(spec: ParameterSpec, u: np.ndarray) -> list[Any]:
    """Map unit samples to parameter values (linear/log range, or a categorical ``values`` list)."""
    if spec.values is not None:
        idx = np.minimum((u * len(spec.values)).astype(np.int64), len(spec.values) - 1)
        return [copy.deepcopy(spec.values[i]) for i in idx]
    lo, hi = spec.range  # type: ignore[misc]
    if spec.scale == "log":
        out = exp_each(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        out = lo + u * (hi - lo)
    return [float(v) for v in np.clip(out, lo, hi)]


def replicate_seeds(root: int, replicates: int) -> list[int]:
    """Distinct deterministic patient seeds (63-bit) from the replicate stream of ``root``."""
    stream = np.random.SeedSequence(root).spawn(2)[1]
    seeds = [
        int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for child in stream.spawn(replicates)
    ]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed {root}: replicate seeds collided; choose another root seed")
    return seeds


def parameter_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The parameter combinations (before replicates) in a deterministic order."""
    names = list(spec.parameters)
    if spec.method == "grid":
        lists = [spec.parameters[n].values for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]  # type: ignore[arg-type]
    root = 0 if spec.seed is None else spec.seed
    sampling = np.random.default_rng(np.random.SeedSequence(root).spawn(2)[0])
    u = unit_samples(spec.method, spec.samples or 0, len(names), sampling)
    columns = [map_unit(spec.parameters[n], u[:, j]) for j, n in enumerate(names)]
    return [{n: columns[j][i] for j, n in enumerate(names)} for i in range(spec.samples or 0)]


# ---------------------------------------------------------------------------- expansion


def base_config(spec: SweepSpec, base_dir: Path, source: str = "sweep") -> dict[str, Any]:
    """The resolved base scenario (base file + overrides) as a clinical-unit dict."""
    return resolve_base_scenario(spec.base, spec.overrides, base_dir, source, spec._override_literals)


def resolve_base_scenario(
    base: str | None,
    overrides: dict[str, Any],
    base_dir: str | Path,
    source: str,
    written: Literals | None = None,
) -> dict[str, Any]:
    """A study file's base scenario: the ``base`` file (relative to ``base_dir``) with ``overrides``
    applied, validated, as a clinical-unit dict. A base file that cannot be read is named as ``base``;
    ``written`` are the overrides' values as written (:func:`override_literals`), for the messages."""
    config: dict[str, Any] = {}
    if base is not None:
        base_path = Path(base)
        if not base_path.is_absolute():
            base_path = Path(base_dir) / base_path
        literals: Literals = {}
        try:
            data = read_yaml(base_path, literals)
        except ConfigError as exc:
            raise ConfigError(f"{source}: base = {shown_value(base)}: {exc}") from None
        config = scenario_from_dict(data, source=path_label(base_path), literals=literals).model_dump(
            mode="json"
        )
    apply_overrides(config, overrides, f"{source}: overrides")
    return scenario_from_dict(config, source=f"{source}: base scenario", literals=written).model_dump(
        mode="json"
    )


def expand_sweep(spec: SweepSpec, base_dir: str | Path = ".", source: str = "sweep") -> Expansion:
    """Expand a sweep into validated scenarios: parameter points (outer) x replicates (inner).

    The run count is checked against :data:`sim.studies.sizing.MAX_SCENARIOS` before anything is
    built; invalid scenarios are summarised (a few examples, then counts per field).
    """
    from sim.studies.sizing import MAX_SCENARIOS, check_study_size, sweep_estimate, sweep_run_count

    count = sweep_run_count(spec)
    check_study_size(source, "runs", count, MAX_SCENARIOS, True, sweep_estimate(count, spec.executor.workers))
    for path in spec.parameters:
        check_value_path(path, f"{source}: parameters", "parameter")
    base = base_config(spec, Path(base_dir), source)
    overridden: set[str] = set()
    apply_overrides(copy.deepcopy(base), spec.overrides, f"{source}: overrides", overridden)
    shadowed = tuple(
        (path, o)
        for path in spec.parameters
        for o in sorted(overridden)
        if o == path or o.startswith(path + ".")
    )
    if spec.replicates == 1 and spec.seed is None:
        seeds = [int(base["patient"]["seed"])]
    else:
        seeds = replicate_seeds(
            spec.seed if spec.seed is not None else int(base["patient"]["seed"]), spec.replicates
        )
    points: list[SweepPoint] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    dropped = 0
    for values in parameter_points(spec):
        for rep, seed in enumerate(seeds):
            index = len(points) + len(problems)  # indices count valid + invalid scenarios
            config = copy.deepcopy(base)
            inputs = dict(values)
            if SEED_PATH not in spec.parameters:
                inputs[SEED_PATH] = seed
            for path, value in inputs.items():
                set_dotted(config, path, copy.deepcopy(value))
            label = f"{source}: scenario {index} ({_short(inputs)})"
            try:
                scenario = scenario_from_dict(config, source=label)
            except ConfigError as exc:
                problems.append((label, str(exc)))
                continue
            digest = scenario.content_hash()
            if digest in seen and spec.method != "grid":
                dropped += 1  # a sampled point repeated (categorical values only): same run, keep one
                continue
            if digest in seen:
                raise ConfigError(
                    f"{source}: scenarios {seen[digest]} and {index} are identical ({_short(inputs)}); "
                    "remove the duplicate value"
                )
            seen[digest] = index
            points.append(SweepPoint(index, rep, inputs, scenario, digest))
    if problems:
        raise ConfigError(summarise_problems(problems, "scenarios"))
    if not points:
        raise ConfigError(f"{source}: the sweep expands to no scenarios")
    return Expansion(spec, base, points, dropped, shadowed)


def _problem_key(label: str, text: str) -> str:
    """The field a scenario's first problem is about (its dotted path), for grouping."""
    first = text.splitlines()[0].removeprefix(label + ": ")
    if first.startswith("unknown key "):
        return first
    return first.split(" = ", 1)[0].split(": ", 1)[0]


def summarise_problems(problems: list[tuple[str, str]], what: str = "scenarios", groups: int = 3) -> str:
    """Invalid scenarios grouped by field: one example line per group, then how many more share it."""
    by_key: dict[str, list[tuple[str, str]]] = {}
    for label, text in problems:
        by_key.setdefault(_problem_key(label, text), []).append((label, text))
    lines: list[str] = []
    for key, items in list(by_key.items())[:groups]:
        lines.append(items[0][1].splitlines()[0])
        if len(items) > 1:
            lines.append(f"  ... and {len(items) - 1:,} more {what} with the same problem ({key})")
    rest = list(by_key.values())[groups:]
    if rest:
        n_rest = sum(len(items) for items in rest)
        lines.append(f"... and {n_rest:,} more invalid {what} ({len(rest):,} other problems)")
    return "\n".join(lines)


def load_expansion(path: str | Path) -> Expansion:
    """Load, validate and expand a sweep file."""
    spec, base_dir = load_sweep(path)
    return expand_sweep(spec, base_dir, source=path_label(path))


def _short(inputs: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={json.dumps(v)}" for k, v in inputs.items())
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------------------- running


@dataclass
class SweepOutcome:
    """What a call to :func:`run_sweep` did: counts, failures (index, run id, error line), files."""

    total: int
    done: int
    failed: list[tuple[int, str, str]]
    skipped: int
    ran: int
    files: list[Path] = field(default_factory=list)
    lost: int = 0  # finished runs run again: their summary.json (or whole folder) was gone or broken

    @property
    def ok(self) -> bool:
        return not self.failed and self.done == self.total


ProgressFn = Callable[[int, int, int], None]  # (finished incl. skipped, total, failed)


def write_sweep_manifest(expansion: Expansion, out_dir: Path) -> list[Path]:
    """``sweep.resolved.yaml`` (spec, resolved base scenario, fingerprint) and ``scenarios.csv``."""
    doc = {
        "sweep": expansion.spec.model_dump(mode="json"),
        "n_scenarios": len(expansion.points),
        "fingerprint": expansion.fingerprint,
        "base_scenario": expansion.base_config,
    }
    resolved = out_dir / "sweep.resolved.yaml"
    tmp = resolved.with_name(f".{resolved.name}.partial")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write("# resolved sweep: re-running `pce-sim sweep` with the same file resumes this folder\n")
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(tmp, resolved)
    names = expansion.input_names
    table: dict[str, list[Any]] = {k: [] for k in ("index", "run_id", "hash", "replicate", *names)}
    for p in expansion.points:
        for key, value in (
            ("index", p.index),
            ("run_id", p.run_id),
            ("hash", p.hash),
            ("replicate", p.replicate),
        ):
            table[key].append(value)
        for name in names:
            table[name].append(p.inputs.get(name))
    write_csv(out_dir / "scenarios.csv", table)
    return [resolved, out_dir / "scenarios.csv"]


def run_sweep(
    expansion: Expansion,
    out_dir: str | Path,
    *,
    executor: Executor | None = None,
    workers: int | None = None,
    runner: Runner = DEFAULT_RUNNER,
    writer: Runner = DEFAULT_WRITER,
    force: bool = False,
    retry_failed: bool = True,
    other_code: str = "refuse",
    progress: ProgressFn | None = None,
    cost: Callable[[Scenario], float] | None = None,
) -> SweepOutcome:
    """Run (or resume) a sweep in ``out_dir``; failed runs are recorded and the sweep goes on.

    ``executor`` defaults to the sweep file's (``workers`` overrides its worker count). Done runs are
    skipped; runs left ``running`` by a killed sweep are redone; failed runs are retried unless
    ``retry_failed`` is false. ``out_dir`` holding a different expansion is refused unless ``force``.
    Done runs made by other code (another code digest, see :mod:`sim.core.provenance`) are handled as
    ``other_code`` says: ``"refuse"`` (a :class:`ConfigError` before any run starts), ``"rerun"``
    (run again with this code) or ``"keep"`` (the tables say which code made each row).
    ``cost`` (optional) estimates a run's cost: runs then start dearest first, so the workers finish
    together instead of one idling while the other runs a long last run (results do not depend on
    the order; tables stay in index order).
    """
    out = Path(out_dir)
    by_hash = {p.hash: p for p in expansion.points}
    with open_ledger(out) as ledger:
        check_other_code(ledger, out, {p.hash for p in expansion.points}, other_code)
        ledger.register_expansion(
            expansion.spec.name,
            expansion.fingerprint,
            [
                (p.index, p.hash, p.replicate, p.inputs, p.scenario.model_dump(mode="json"))
                for p in expansion.points
            ],
            force=force,
        )
        files = write_sweep_manifest(expansion, out)
        rerun = code_digest() if other_code == "rerun" else None
        todo = ledger.pending(retry_failed=retry_failed, rerun_other_than=rerun)
        lost: set[str] = set()
        # a finished run whose summary.json (or folder) is gone or broken runs again: local files only
        if writer == DEFAULT_WRITER and _files_here(expansion, executor):
            waiting = set(todo)
            rows = ledger.rows()
            runs = out / "runs"
            lost = {
                r.hash
                for r in rows
                if r.status == "done" and r.hash not in waiting and _lost(runs / r.hash[:12])
            }
            for h in lost:  # the study's own folder (its ledger owns runs/): what is left of it goes first
                if (runs / h[:12]).exists():
                    remove_tree(runs / h[:12])
            if lost:
                todo = [r.hash for r in rows if r.hash in waiting or r.hash in lost]
        total = len(expansion.points)
        skipped = total - len(todo)
        counts = ledger.counts()
        finished, n_failed = skipped, counts["failed"] if not retry_failed else 0
        if progress is not None:
            progress(finished, total, n_failed)
        if cost is not None:
            todo = sorted(todo, key=lambda h: -cost(by_hash[h].scenario))  # stable: ties keep index order
        tasks = [
            RunTask(
                h,
                by_hash[h].scenario.model_dump(mode="json"),
                str(out / "runs" / h[:12]),
                runner,
                writer,
                code_digest(),
            )
            for h in todo
        ]
        if tasks:
            (out / "runs").mkdir(exist_ok=True)
            if executor is None:
                ex = expansion.spec.executor
                executor = make_executor(ex.kind, workers or ex.workers, ex.address)
            with executor:
                for outcome in executor.run(tasks, on_start=lambda task: ledger.mark_running(task.hash)):
                    _record(ledger, outcome, out)
                    finished += 1
                    n_failed += 0 if outcome.ok else 1
                    if progress is not None:
                        progress(finished, total, n_failed)
        files += export_tables(ledger, out, expansion.input_names)
        rows = ledger.rows()
    failed = [
        (r.index, r.hash[:12], (r.error or "").splitlines()[0] if r.error else "")
        for r in rows
        if r.status == "failed"
    ]
    done = sum(r.status == "done" for r in rows)
    return SweepOutcome(total, done, failed, skipped, len(tasks), files, len(lost))


def _lost(folder: Path) -> bool:
    """A finished run's folder whose summary.json is gone (deleted by hand, or the folder with it) or is
    not a run's any more (overwritten or cut short by hand: not JSON, or no ``summary.stop_reason``; a
    run writes it atomically, so a resume never sees one half written); any other error (permissions,
    a passing I/O error) does not make a run lost."""
    from sim.output.report import RUN_SUMMARY_KEY

    try:
        text = (folder / "summary.json").read_bytes()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return True
    summary = doc.get("summary") if isinstance(doc, dict) else None
    return not isinstance(summary, dict) or RUN_SUMMARY_KEY not in summary


def _files_here(expansion: Expansion, executor: Executor | None) -> bool:
    """Run folders written on this machine: a serial or local executor (a Dask cluster's workers may write
    where this process cannot see)."""
    if executor is not None:
        return isinstance(executor, SerialExecutor | LocalExecutor)
    return expansion.spec.executor.kind in ("serial", "local")


OTHER_CODE_CHOICES = ("refuse", "rerun", "keep")


def other_code_message(folder: Path, what: str, shown: str) -> str:
    """The one-line refusal of a folder holding ``what`` (e.g. "3 of its 10 runs") made by other code."""
    return (
        f"{folder}: {what} were made by other code ({shown}); this is {code_label()}; use --rerun-stale "
        "to run them again with this code, --keep-stale to keep them (results.csv's 'code' column says "
        "which code made each run), or another --out folder"
    )


def describe_codes(stale: list[tuple[str, str | None]]) -> str:
    """The distinct code labels of ``(hash, label)`` pairs, at most two named."""
    unknown = "unrecorded code (a ledger from before pce-sim kept it)"
    labels = sorted({label or unknown for _, label in stale})
    return "; ".join(labels[:2]) + (f"; and {len(labels) - 2} more" if len(labels) > 2 else "")


def check_other_code(ledger: Any, out: Path, hashes: set[str], other_code: str) -> None:
    """Refuse (``other_code="refuse"``) a folder whose done runs among ``hashes`` (the sweep's scenarios)
    were made by other code, in one line, before the ledger is changed."""
    if other_code not in OTHER_CODE_CHOICES:
        raise ValueError(f"other_code must be one of {OTHER_CODE_CHOICES}, got {other_code!r}")
    if other_code != "refuse":
        return
    stale = ledger.other_code(code_digest(), among=hashes)
    if stale:
        shown = describe_codes(stale)
        raise ConfigError(other_code_message(out, f"{len(stale)} of its {len(hashes)} runs", shown))


def _record(ledger: Any, outcome: Outcome, out: Path) -> None:
    if outcome.ok:
        run_dir = str(Path("runs") / outcome.hash[:12])
        ledger.record_done(outcome.hash, outcome.summary, outcome.emboli, run_dir, outcome.wall_time_s)
    else:
        ledger.record_failed(outcome.hash, outcome.error or "unknown error", outcome.wall_time_s)
