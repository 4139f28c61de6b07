"""Sweeps: expansion (grid, Latin hypercube, random, replicates), ledger, resume after SIGKILL,
failed runs, local vs Dask executors, and an end-to-end sweep with the real pipeline.

Most tests drive the sweep engine with ``deterministic_runner``, a test double defined here: a
pure function of the scenario (so results can be compared exactly between executors and between
an interrupted and a clean sweep) that fails on purpose for ``injection.volume_ml > 9``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.core.config import Scenario, scenario_from_dict
from sim.core.errors import ConfigError, SolverError
from sim.run.results import RunResult
from sim.studies.executors import LocalExecutor, SerialExecutor
from sim.studies.ledger import open_ledger
from sim.studies.sweep import expand_sweep, load_expansion, run_sweep, sweep_from_dict

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "grid": {"spacing_mm": 2.0},
    "injection": {"volume_ml": 0.5, "follow_up_s": 5.0},
    "output": {"vtk": False, "fluoroscopy_png": False, "fields": False},
}
CALLS: list[str] = []


def deterministic_runner(scenario: Scenario) -> RunResult:
    """Test double for sim.run.pipeline.run_scenario: outputs are a closed-form function of the inputs."""
    CALLS.append(scenario.content_hash())
    delay = float(os.environ.get("PCE_TEST_RUN_SLEEP_S", "0"))
    if delay:
        time.sleep(delay)
    volume = scenario.injection.volume_ml
    if volume > 9.0:
        raise SolverError(f"test double: refuses volume_ml = {volume}")
    rng = np.random.default_rng(scenario.patient.seed)
    n = int(volume * 4) + int(rng.integers(0, 3))
    emboli = {
        "fragment_id": np.arange(n),
        "volume_mm3": rng.random(n) * volume,
        "diameter_mm": 0.5 + rng.random(n),
        "length_mm": 3.0 + 10.0 * rng.random(n),
        "lobe": np.array(["RUL", "RML", "RLL", "LUL", "LLL"])[rng.integers(0, 5, n)],
    }
    summary = {
        "injected_volume_ml": volume,
        "n_emboli": n,
        "embolised_volume_ml": float(emboli["volume_mm3"].sum() / 1000.0),
        "stop_reason": "volume",
        "leak_onset_s": math.nan,
        "wall_time_s": 0.001,
    }
    return RunResult(scenario=scenario, summary=summary, emboli=emboli)


def spec(**kw):
    data = {"overrides": TINY, "method": "grid", "parameters": {}}
    data.update(kw)
    return sweep_from_dict(data)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Results rows without the columns that legitimately differ between runs (timings)."""
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


# ---------------------------------------------------------------------------- expansion


def test_grid_is_full_factorial_times_replicates():
    s = spec(
        parameters={
            "injection.volume_ml": {"values": [0.3, 0.4, 0.5]},
            "injection.stop_after_leak_s": {"values": [0, 5, 10, None]},
        },
        replicates=2,
        seed=11,
    )
    e = expand_sweep(s)
    assert len(e.points) == 3 * 4 * 2
    assert len({p.hash for p in e.points}) == len(e.points)
    combos = {(p.inputs["injection.volume_ml"], p.inputs["injection.stop_after_leak_s"]) for p in e.points}
    assert len(combos) == 12
    never = [p for p in e.points if p.inputs["injection.stop_after_leak_s"] is None]
    assert len(never) == 6 and all(p.scenario.injection.stop_after_leak_s is None for p in never)
    assert [p.index for p in e.points] == list(range(24))


def unit_of(value: float, lo: float, hi: float, scale: str) -> float:
    if scale == "log":
        return math.log(value / lo) / math.log(hi / lo)
    return (value - lo) / (hi - lo)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=2, max_value=40), seed=st.integers(min_value=0, max_value=2**32))
def test_lhs_hits_every_stratum_once_per_parameter(n, seed):
    ranges = {
        "injection.volume_ml": (0.3, 6.0, "linear"),
        "patient.permeability_ref_m2": (1e-9, 1e-7, "log"),
        "cement.time_after_mixing_min": (3.0, 9.0, "linear"),
    }
    s = spec(
        method="lhs",
        samples=n,
        seed=seed,
        parameters={k: {"range": [lo, hi], "scale": sc} for k, (lo, hi, sc) in ranges.items()},
    )
    e = expand_sweep(s)
    assert len(e.points) == n
    for path, (lo, hi, scale) in ranges.items():
        values = np.array([p.inputs[path] for p in e.points])
        assert np.all((values >= lo) & (values <= hi))
        strata = np.floor([unit_of(v, lo, hi, scale) * n for v in values]).astype(int)
        assert sorted(strata.tolist()) == list(range(n)), path


def test_log_scale_strata_are_equal_in_log_space():
    s = spec(
        method="lhs",
        samples=4,
        seed=3,
        parameters={"patient.permeability_ref_m2": {"range": [1e-10, 1e-6], "scale": "log"}},
    )
    decades = sorted(
        int(math.floor(math.log10(p.inputs["patient.permeability_ref_m2"]))) for p in expand_sweep(s).points
    )
    assert decades == [-10, -9, -8, -7]  # one sample per decade


def test_lhs_categorical_values_are_balanced():
    presets = {"values": ["low", "medium", "high"]}
    params = {"cement.preset": presets, "injection.volume_ml": {"range": [0.3, 0.6]}}
    drawn = [
        p.scenario.cement.preset
        for p in expand_sweep(spec(method="lhs", samples=12, seed=5, parameters=params)).points
    ]
    assert {v: drawn.count(v) for v in set(drawn)} == {"low": 4, "medium": 4, "high": 4}
    e = expand_sweep(spec(method="lhs", samples=12, seed=5, parameters={"cement.preset": presets}))
    assert len(e.points) == 3 and e.duplicates_dropped == 9  # identical scenarios run once


def test_random_and_lhs_are_deterministic_per_seed():
    for method in ("lhs", "random"):
        make = lambda seed, m=method: [  # noqa: E731
            p.hash
            for p in expand_sweep(
                spec(
                    method=m, samples=6, seed=seed, parameters={"injection.volume_ml": {"range": [0.3, 0.6]}}
                )
            ).points
        ]
        assert make(1) == make(1)
        assert make(1) != make(2)


def test_replicates_distinct_deterministic_and_common_across_points():
    s = spec(parameters={"injection.volume_ml": {"values": [0.3, 0.5]}}, replicates=4, seed=99)
    a, b = expand_sweep(s), expand_sweep(s)
    seeds = [p.scenario.patient.seed for p in a.points]
    assert seeds == [p.scenario.patient.seed for p in b.points]
    assert len(set(seeds[:4])) == 4
    assert seeds[:4] == seeds[4:]  # the same virtual patients see every protocol
    other = expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.3]}}, replicates=4, seed=100))
    assert not set(seeds) & {p.scenario.patient.seed for p in other.points}
    single = expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.3]}}))
    assert single.points[0].scenario.patient.seed == Scenario().patient.seed  # base seed kept


def test_dotted_paths_and_overrides_reach_nested_fields(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"name": "b", "patient": {"level": "T12", "porosity_mean": 0.91}}))
    s = sweep_from_dict(
        {
            "base": "base.yaml",
            "overrides": {"grid.spacing_mm": 2.0, "output": {"vtk": False}},
            "parameters": {"cement.overrides.viscosity_ref_pa_s": {"values": [50.0, 500.0]}},
        }
    )
    e = expand_sweep(s, tmp_path)
    assert [p.scenario.cement.overrides.viscosity_ref_pa_s for p in e.points] == [50.0, 500.0]
    sc = e.points[0].scenario
    assert (sc.patient.level, sc.patient.porosity_mean, sc.grid.spacing_mm, sc.output.vtk) == (
        "T12",
        0.91,
        2.0,
        False,
    )


@pytest.mark.parametrize(
    ("swept", "overrides"),
    [
        ("injection.volume_ml", {"injection.volume_ml": 0.6}),
        ("injection.volume_ml", {"injection": {"volume_ml": 0.6}}),
        ("cement.overrides.viscosity_ref_pa_s", {"cement.overrides": {"viscosity_ref_pa_s": 5.0}}),
    ],
)
def test_a_field_both_swept_and_overridden_is_named(swept, overrides):
    """The swept values replaced the override silently; the override is now named as one no run sees."""
    tiny = {**TINY, "injection": {"follow_up_s": 5.0}}
    s = sweep_from_dict({"overrides": {**tiny, **overrides}, "parameters": {swept: {"values": [0.3, 0.4]}}})
    shadowed = expand_sweep(s, ROOT / "configs").shadowed_overrides
    assert [p for p, _ in shadowed] == [swept] and shadowed[0][1].startswith(swept)
    plain = sweep_from_dict({"overrides": tiny, "parameters": {swept: {"values": [0.3, 0.4]}}})
    assert expand_sweep(plain, ROOT / "configs").shadowed_overrides == ()


def test_a_sampled_sweep_says_how_many_repeated_runs_it_dropped(tmp_path):
    """An lhs sweep announced 3 runs, ran 1, and never said why."""
    from typer.testing import CliRunner

    from sim.cli import app

    path = tmp_path / "s.yaml"
    doc = {
        "base": str(ROOT / "configs" / "default.yaml"),
        "overrides": TINY,
        "method": "lhs",
        "samples": 3,
        "parameters": {"cement.preset": {"values": ["low"]}},
    }
    path.write_text(yaml.safe_dump(doc))
    expansion = expand_sweep(sweep_from_dict({k: v for k, v in doc.items() if k != "base"}), ROOT / "configs")
    assert expansion.duplicates_dropped == 2 and len(expansion.points) == 1
    res = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert (
        "2 of the 3 sampled runs repeat an earlier one (the same scenario) and run once: 1 runs" in res.output
    )


@pytest.mark.parametrize(
    ("path", "expect"),
    [
        ("patient.porosity_meen", ["patient.porosity_meen", "porosity_mean", "permeability_ref_m2"]),
        ("patien.seed", ["patien", "known keys", "patient"]),
        ("injection.volume_ml.x", ["is a value"]),
    ],
)
def test_bad_dotted_path_names_path_and_known_keys(path, expect):
    with pytest.raises(ConfigError) as err:
        expand_sweep(spec(parameters={path: {"values": [1]}}))
    for text in expect:
        assert text in str(err.value)


def test_bad_value_names_scenario_index_and_field():
    with pytest.raises(ConfigError) as err:
        expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.5, -2.0]}}))
    msg = str(err.value)
    assert "scenario 1" in msg and "injection.volume_ml = -2.0" in msg
    assert len(msg.splitlines()) == 1


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ({"methd": "grid"}, "unknown key 'methd'"),
        ({"method": "lhs", "parameters": {"injection.volume_ml": {"range": [1, 2]}}}, "needs 'samples'"),
        ({"parameters": {"injection.volume_ml": {"range": [1, 2]}}}, "needs 'values'"),
        (
            {"method": "lhs", "samples": 3, "parameters": {"a.b": {"range": [0, 1], "scale": "log"}}},
            "positive range",
        ),
        ({"parameters": {"a.b": {"values": [1], "rnage": [1, 2]}}}, "unknown key 'parameters.a.b.rnage'"),
        ({"executor": {"kind": "local", "address": "tcp://x:1"}}, "only used with kind 'dask'"),
        (
            {"executor": {"kind": "dask", "address": "garbage"}},
            'executor.address = "garbage": allowed: a Dask',
        ),
        ({"executor": {"kind": "dask", "address": ""}}, 'executor.address = "": allowed'),
        ({"executor": {"kind": "dask", "address": "inproc://x"}}, 'executor.address = "inproc://x": allowed'),
        ({"executor": {"kind": "dask", "address": "http://127.0.0.1:8786"}}, "allowed: a Dask scheduler"),
        ({"executor": {"kind": "dask", "address": "tcp://h:70000"}}, "port 1-65535"),
        ({"executor": {"kind": "serial", "workers": 5}}, "kind 'serial' runs one run at a time"),
        ({"parameters": {"injection.volume_ml": {"values": [0.5, 0.5]}}}, "identical"),
        (
            {"overrides": {"grid": {"spacing_mm": 2.0}, "grid.spacing_mm": 1.5}},
            "overrides: grid.spacing_mm is given twice; each field may be set once",
        ),
        (
            {"method": "lhs", "samples": 2, "parameters": {"injection.volume_ml": {"range": ["09", 1.5]}}},
            "Input should hold numbers: write it without the leading zero",
        ),
        (
            {"method": "lhs", "samples": 2, "parameters": {"injection.volume_ml": {"range": ["inf", 2]}}},
            "YAML writes infinity .inf and not-a-number .nan",
        ),
        (
            {"method": "lhs", "samples": 2, "parameters": {"injection.volume_ml": {"range": ["1e-1", 0.5]}}},
            'range = ["1e-1", 0.5]: Input should hold numbers, not a quoted string',
        ),
    ],
)
def test_bad_sweep_files_give_clear_errors(data, expect):
    with pytest.raises(ConfigError) as err:
        expand_sweep(sweep_from_dict(data, source="s.yaml"))
    assert expect in str(err.value)


@pytest.mark.parametrize(
    "address", ["tcp://10.0.0.5:8786", "localhost:8786", "tls://[::1]:8786", "ucx://n-1:1", "wss://h:443"]
)
def test_scheduler_addresses_dask_takes_are_accepted(address):
    assert sweep_from_dict({"executor": {"kind": "dask", "address": address}}).executor.address == address


@pytest.mark.parametrize(
    ("key", "shown"), [("null", "overrides.null = null"), ("true", "overrides.true = true")]
)
def test_a_key_yaml_reads_as_null_or_a_boolean_is_named_as_written(tmp_path, key, shown):
    """`overrides: {null: 2}` was named `overrides.None` (Python's name), `true:` `overrides.1`."""
    from sim.studies.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"overrides: {{{key}: 2}}\nparameters:\n  injection.volume_ml: {{values: [0.3]}}\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert f"s.yaml: {shown}: Input should be a valid string" in str(err.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("{range: [0.3, 1e400]}", "parameters.injection.volume_ml.range = [0.3, 1e400]: must be [lo, hi]"),
        ("{range: [0.3, .NaN]}", "parameters.injection.volume_ml.range = [0.3, .NaN]: must be [lo, hi]"),
    ],
)
def test_a_bad_range_is_named_by_its_key_and_shown_as_written(tmp_path, text, shown):
    """It was `parameters.injection.volume_ml = {"range": [0.3, Infinity]}: ... (got [0.3, inf])`."""
    from sim.studies.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"parameters:\n  injection.volume_ml: {text}\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert f"s.yaml: {shown}" in str(err.value) and "inf" not in str(err.value).lower().replace("finite", "")


def test_shipped_sweep_files_expand(tmp_path, monkeypatch):
    # the CT sweep names images relative to the working directory; expanding hashes their bytes
    # (a scenario's key names the scan, sim.core.input_files), so stand-ins are enough here
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "ct").mkdir(parents=True)
    for name in ("synthetic_L1_ct.nii.gz", "synthetic_L1_labels.nii.gz"):
        (tmp_path / "results" / "ct" / name).write_bytes(name.encode())
    files = sorted((REPO / "configs").glob("sweep_*.yaml"))
    assert files
    for f in files:
        e = load_expansion(f)
        assert len(e.points) >= 1


# ---------------------------------------------------------------------------- ledger


def _register(ledger, hashes, fingerprint="f1"):
    ledger.register_expansion(
        "t", fingerprint, [(i, h, 0, {"x": i}, {"name": h}) for i, h in enumerate(hashes)]
    )


def test_ledger_states_attempts_and_refusal(tmp_path):
    with open_ledger(tmp_path) as led:
        _register(led, ["a", "b", "c"])
        assert led.pending() == ["a", "b", "c"]
        assert led.mark_running("a") == 1
        led.record_done("a", {"n": 1.5, "bad": math.inf}, {"x": [1, 2]}, "runs/a", 0.5)
        led.mark_running("b")
        led.record_failed("b", "SolverError: diverged")
        led.mark_running("c")  # left running: an interrupted run
        assert led.counts() == {"pending": 0, "running": 1, "done": 1, "failed": 1}
        assert led.pending() == ["b", "c"] and led.pending(retry_failed=False) == ["c"]
        assert led.mark_running("c") == 2
        rows = {r.hash: r for r in led.rows()}
        assert rows["a"].summary == {"n": 1.5, "bad": None} and rows["a"].emboli == {"x": [1, 2]}
        assert rows["b"].error.startswith("SolverError") and rows["c"].attempts == 2
        _register(led, ["a", "b", "c"])  # same expansion: accepted, nothing lost
        assert led.counts()["done"] == 1
        with pytest.raises(ConfigError, match="different sweep"):
            _register(led, ["a", "d"], fingerprint="f2")
        led.register_expansion("t", "f2", [(0, "a", 0, {}, {}), (1, "d", 0, {}, {})], force=True)
        assert led.pending() == ["d"]  # 'a' is still done: same hash, same scenario
    with sqlite3.connect(tmp_path / "ledger.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT COUNT(*) FROM runs WHERE hash = 'a'").fetchone()[0] == 1


def test_ledger_lock_refuses_a_second_sweep(tmp_path):
    with open_ledger(tmp_path):
        with pytest.raises(ConfigError, match="another pce-sim sweep"):
            with open_ledger(tmp_path):
                pass
    with open_ledger(tmp_path):  # released
        pass


# ---------------------------------------------------------------------------- running


def test_failed_run_is_recorded_and_sweep_continues(tmp_path):
    s = spec(parameters={"injection.volume_ml": {"values": [0.3, 10.0, 0.5]}}, replicates=2, seed=1)
    e = expand_sweep(s)
    out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    assert out.total == 6 and out.done == 4 and not out.ok
    assert sorted(i for i, _, _ in out.failed) == [2, 3]
    assert all("refuses volume_ml = 10.0" in err for _, _, err in out.failed)
    rows = read_csv(tmp_path / "results.csv")
    assert [r["status"] for r in rows] == ["done", "done", "failed", "failed", "done", "done"]
    assert rows[2]["n_emboli"] == "" and rows[2]["error"].startswith("SolverError")
    assert rows[0]["leak_onset_s"] == ""  # NaN metric -> empty cell
    for p, r in zip(e.points, rows, strict=True):
        assert r["hash"] == p.hash and float(r["injection.volume_ml"]) == p.inputs["injection.volume_ml"]
        if r["status"] == "done":
            assert (tmp_path / "runs" / p.run_id / "summary.json").exists()
    emboli = read_csv(tmp_path / "emboli.csv")
    assert len(emboli) == sum(int(r["n_emboli"]) for r in rows if r["status"] == "done")
    assert (tmp_path / "results.parquet").exists() and (tmp_path / "emboli.parquet").exists()
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "results.parquet")
    assert table.num_rows == 6 and "embolised_volume_ml" in table.column_names


def test_resume_redoes_only_unfinished_runs(tmp_path):
    e = expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.3, 0.4, 0.5, 0.6]}}))
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    with sqlite3.connect(
        tmp_path / "ledger.sqlite"
    ) as con:  # simulate a kill: one running, one never started
        con.execute("UPDATE runs SET status = 'running' WHERE hash = ?", (e.points[1].hash,))
        con.execute("DELETE FROM runs WHERE hash = ?", (e.points[3].hash,))
    CALLS.clear()
    out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    assert sorted(CALLS) == sorted([e.points[1].hash, e.points[3].hash])
    assert out.ok and out.skipped == 2 and out.ran == 2
    clean = tmp_path / "clean"
    run_sweep(e, clean, executor=SerialExecutor(), runner=deterministic_runner)
    assert comparable(read_csv(tmp_path / "results.csv")) == comparable(read_csv(clean / "results.csv"))
    changed = expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.3, 0.7]}}))
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(changed, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    CALLS.clear()
    out = run_sweep(changed, tmp_path, executor=SerialExecutor(), runner=deterministic_runner, force=True)
    assert CALLS == [changed.points[1].hash] and out.total == 2 and out.ok
    assert len(read_csv(tmp_path / "results.csv")) == 2


def test_a_resume_redoes_a_finished_run_whose_folder_is_gone_or_broken(tmp_path):
    """The ledger said done, so a deleted run folder or summary.json stayed that way unnoticed."""
    import shutil

    e = expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.3, 0.4, 0.5]}}))
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    shutil.rmtree(tmp_path / "runs" / e.points[0].hash[:12])
    (tmp_path / "runs" / e.points[2].hash[:12] / "summary.json").unlink()  # the folder, without its summary
    CALLS.clear()
    out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    assert sorted(CALLS) == sorted([e.points[0].hash, e.points[2].hash])
    assert out.ok and out.lost == 2 and out.ran == 2 and out.skipped == 1
    # a summary.json overwritten by hand: garbage, cut short, valid JSON but no run summary, bad UTF-8
    for junk in (b"garbage", b'{"summary": {"stop_reason": "tar', b"[1]", b'{"summary": 1}', b"\xff\xfe"):
        (tmp_path / "runs" / e.points[1].hash[:12] / "summary.json").write_bytes(junk)
        CALLS.clear()
        out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
        assert CALLS == [e.points[1].hash] and out.lost == 1, junk
        summary = json.loads((tmp_path / "runs" / e.points[1].hash[:12] / "summary.json").read_text())
        assert "stop_reason" in summary["summary"]
    CALLS.clear()
    assert run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner).lost == 0
    assert CALLS == []


def _write_sweep(path: Path, n_volumes: int, workers: int) -> Path:
    doc = {
        "name": "resume-test",
        "overrides": TINY,
        "method": "grid",
        "parameters": {
            "injection.volume_ml": {"values": [round(0.3 + 0.05 * i, 3) for i in range(n_volumes)]}
        },
        "replicates": 2,
        "seed": 4,
        "executor": {"kind": "local", "workers": workers},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sim.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _done_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _slow_sweep(tmp_path: Path, n_volumes: int, sleep_s: float):
    """A sweep of 2 n_volumes test runs of ``sleep_s`` each on two workers, started in its own session
    into ``tmp_path / 'killed'``: (process, CLI args, environment, folder)."""
    sweep = _write_sweep(tmp_path / "sweep.yaml", n_volumes=n_volumes, workers=2)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
        "PCE_TEST_RUN_SLEEP_S": str(sleep_s),
    }
    args = ("sweep", str(sweep), "--quiet", "--runner", "test_sweep:deterministic_runner")
    out = tmp_path / "killed"
    return _cli(*args, "--out", str(out), env=env, start_new_session=True), args, env, out


def test_sigkilled_sweep_resumes_to_the_clean_result(tmp_path):
    proc, args, env, out = _slow_sweep(tmp_path, n_volumes=5, sleep_s=0.4)
    deadline = time.monotonic() + 120
    while _done_count(out / "ledger.sqlite") < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"sweep finished before it could be killed: {proc.communicate()}"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers die at once
    proc.wait()
    with sqlite3.connect(out / "ledger.sqlite") as con:
        states = dict(con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    assert 1 <= states.get("done", 0) < 10 and states.get("running", 0) >= 1, states

    env["PCE_TEST_RUN_SLEEP_S"] = "0"
    resumed = _cli(*args, "--out", str(out), env=env)
    assert resumed.wait(timeout=120) == 0, resumed.communicate()
    clean = _cli(*args, "--out", str(tmp_path / "clean"), env=env)
    assert clean.wait(timeout=120) == 0, clean.communicate()
    with sqlite3.connect(out / "ledger.sqlite") as con:
        runs = con.execute("SELECT hash, status FROM runs").fetchall()
        scenarios = [r[0] for r in con.execute("SELECT hash FROM scenarios ORDER BY idx")]
    assert len(runs) == len(scenarios) == 10 and {h for h, _ in runs} == set(scenarios)
    assert all(status == "done" for _, status in runs)
    assert comparable(read_csv(out / "results.csv")) == comparable(
        read_csv(tmp_path / "clean" / "results.csv")
    )
    assert read_csv(out / "emboli.csv") == read_csv(tmp_path / "clean" / "emboli.csv")
    assert not list((out / "runs").glob(".*partial*"))  # no half-written run folder is left visible


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_sweep_leaves_no_worker_behind(tmp_path, sig):
    """A sweep killed alone (not its process group: kill, the OOM killer, a scheduler's time limit)
    left its spawn workers (about 420 MB each) and their resource tracker waiting forever; SIGTERM
    also ended it without a word. Now the workers end with their parent, and SIGTERM is an interruption."""
    proc, _args, _env, out = _slow_sweep(tmp_path, n_volumes=2, sleep_s=30.0)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers[:] = _children(proc.pid)
            if len(workers) >= 3 and _done_count(out / "ledger.sqlite") == 0:  # two workers and the tracker
                break
            time.sleep(0.1)
        assert proc.poll() is None and len(workers) >= 3, (
            proc.communicate() if proc.poll() is not None else workers
        )
        time.sleep(1.0)  # the runs are under way
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)]
        if sig == signal.SIGTERM:  # 128 + SIGTERM, as job schedulers expect (Ctrl-C: 130)
            assert proc.returncode == 143 and err.strip() == "interrupted", (proc.returncode, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for w in workers:  # a failing run of this test leaves no orphan behind
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_cli_exit_code_1_names_failed_runs(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "overrides": TINY,
                "parameters": {"injection.volume_ml": {"values": [0.3, 12.0]}},
                "executor": {"kind": "serial"},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    proc = _cli(
        "sweep",
        str(sweep),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--runner",
        "test_sweep:deterministic_runner",
        env=env,
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "scenario 1" in stderr and "refuses volume_ml = 12.0" in stderr and "Traceback" not in stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"parameters": {"patient.porosity_meen": {"values": [0.9]}}}))
    proc = _cli("sweep", str(bad), "--out", str(tmp_path / "b"), env=env)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "patient.porosity_meen" in stderr and "Traceback" not in stderr


def test_dask_localcluster_matches_local_pool(tmp_path):
    pytest.importorskip("dask.distributed")
    from sim.studies.executors import DaskExecutor

    e = expand_sweep(spec(parameters={"injection.volume_ml": {"values": [0.3, 0.4]}}, replicates=2, seed=8))
    assert len(e.points) == 4
    local = run_sweep(e, tmp_path / "local", executor=LocalExecutor(2), runner=deterministic_runner)
    dask = run_sweep(e, tmp_path / "dask", executor=DaskExecutor(workers=2), runner=deterministic_runner)
    assert local.ok and dask.ok
    assert comparable(read_csv(tmp_path / "local" / "results.csv")) == comparable(
        read_csv(tmp_path / "dask" / "results.csv")
    )
    assert read_csv(tmp_path / "local" / "emboli.csv") == read_csv(tmp_path / "dask" / "emboli.csv")


# ---------------------------------------------------------------------------- real pipeline


@pytest.mark.slow
def test_real_pipeline_sweep_end_to_end(tmp_path):
    """Two tiny real scenarios (2 mm grid, 0.5 ml) on the local pool, resumed, then reported."""
    from sim.output.report import write_report

    base = scenario_from_dict({**TINY, "name": "tiny"}).model_dump(mode="json")
    s = sweep_from_dict(
        {
            "overrides": base,
            "parameters": {"injection.stop_after_leak_s": {"values": [0.0, None]}},
            "executor": {"kind": "local", "workers": 2},
        }
    )
    e = expand_sweep(s)
    out = run_sweep(e, tmp_path)
    assert out.ok, out.failed
    rows = read_csv(tmp_path / "results.csv")
    for r, p in zip(rows, e.points, strict=True):
        series = read_csv(tmp_path / "runs" / p.run_id / "time_series.csv")
        final = float(series[-1]["injected_volume_ml"])
        assert final <= 0.5 * (1 + 1e-9)
        if p.scenario.injection.stop_after_leak_s is None:  # never stops: the full target goes in
            assert final == pytest.approx(0.5, rel=1e-6)
        assert float(r["injected_volume_ml"]) == pytest.approx(final, rel=1e-9)  # export = run folder
        if r.get("mass_balance_error"):
            assert abs(float(r["mass_balance_error"])) < 1e-6
    again = run_sweep(e, tmp_path)
    assert again.skipped == 2 and again.ran == 0
    assert comparable(read_csv(tmp_path / "results.csv")) == comparable(rows)
    files = write_report(tmp_path)
    assert all(p.stat().st_size > 0 for p in files)


def test_log_scale_draws_take_the_c_librarys_exp():
    """Not numpy's SIMD exp (another code path on AVX-512 CPUs): the same bits on every x86 CPU."""
    import math

    from sim.studies.sweep import exp_each

    x = np.random.default_rng(3).uniform(-20.0, 20.0, 1000)
    assert [float(v) for v in exp_each(x)] == [math.exp(v) for v in x]
    assert exp_each(np.float64(0.5)).shape == (1,)
