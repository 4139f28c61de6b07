"""Sweeps and cohorts (issue 14): counted before they are expanded, limited (with --allow-large above
the documented limit, never above the memory bound), runner checked up front, whole sections and
many invalid scenarios reported briefly, user text printed literally."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sim.cli import app
from sim.studies.sizing import (
    COHORT_PATIENT_LIMIT,
    MAX_SCENARIOS,
    SWEEP_RUN_LIMIT,
    cohort_counts,
    format_duration,
    sweep_run_count,
)
from sim.studies.sweep import expand_sweep, sweep_from_dict

ROOT = Path(__file__).resolve().parents[1]
BASE = {"grid.spacing_mm": 2.0, "injection.volume_ml": 0.3}


class Reached(Exception):
    """Raised in place of the expansion / sampling: the study got past the size checks."""


def write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def grid(values_per_param: list[int], **extra: object) -> dict:
    params: dict[str, dict[str, list[float]]] = {}
    fields = [
        "injection.rate_ml_per_s", "injection.volume_ml", "veins.diameter_scatter",
        "fragmentation.length_sigma", "fragmentation.branching_probability", "lungs.deformability_margin",
        "injection.follow_up_s", "fluoroscopy.reaction_delay_s", "fluoroscopy.visibility_threshold_mm3",
        "fluoroscopy.min_thickness_mm", "injection.stop_after_leak_s", "patient.porosity_sd",
    ]  # fmt: skip
    for field, n in zip(fields, values_per_param, strict=False):
        params[field] = {"values": [0.01 * (i + 1) for i in range(n)]}
    return {"name": "big", "overrides": dict(BASE), "method": "grid", "parameters": params, **extra}


def invoke(*args: object):
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, time.perf_counter() - t0


@pytest.fixture
def no_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    import sim.studies.cohort
    import sim.studies.sweep

    def reached(*args: object, **kwargs: object) -> None:
        raise Reached()

    monkeypatch.setattr(sim.studies.sweep, "expand_sweep", reached)
    monkeypatch.setattr(sim.studies.cohort, "plan_cohort", reached)


@pytest.mark.parametrize(
    "doc",
    [
        grid([3, 2]),
        grid([2, 2, 2], replicates=3, seed=1),
        {"overrides": BASE, "method": "lhs", "samples": 7, "replicates": 2,
         "parameters": {"injection.volume_ml": {"range": [0.2, 0.5]}}},
        {"overrides": BASE, "method": "random", "samples": 5, "seed": 3,
         "parameters": {"injection.volume_ml": {"range": [0.2, 0.5]}}},
        {"overrides": BASE},
    ],
)  # fmt: skip
def test_count_without_expansion_equals_the_expansion(doc: dict) -> None:
    spec = sweep_from_dict(doc)
    expansion = expand_sweep(spec, ROOT / "configs")
    assert sweep_run_count(spec) == len(expansion.points) + expansion.duplicates_dropped


def test_absurd_grid_is_refused_at_once_with_its_count(tmp_path: Path, no_expansion: None) -> None:
    path = write(tmp_path, "huge.yaml", grid([10] * 12))
    tracemalloc.start()
    for flags in ([], ["--allow-large"]):
        res, seconds = invoke("sweep", path, "--out", tmp_path / "s", *flags)
        assert res.exit_code == 2 and not isinstance(res.exception, Reached), res.stderr
        assert "1,000,000,000,000 runs" in res.stderr and f"{MAX_SCENARIOS:,}" in res.stderr
        assert "years" in res.stderr  # the estimate comes with it
        assert seconds < 2.0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6  # counted, never built
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("doc", "count"),
    [
        (grid([30, 30, 30]), 27_000),
        ({"overrides": BASE, "replicates": 100_000, "seed": 1}, 100_000),
        ({"overrides": BASE, "method": "lhs", "samples": 25_000,
          "parameters": {"injection.volume_ml": {"range": [0.2, 0.5]}}}, 25_000),
    ],
)  # fmt: skip
def test_large_sweep_needs_the_flag(tmp_path: Path, no_expansion: None, doc: dict, count: int) -> None:
    assert SWEEP_RUN_LIMIT < count <= MAX_SCENARIOS
    path = write(tmp_path, "large.yaml", doc)
    res, _ = invoke("sweep", path, "--out", tmp_path / "s")
    assert res.exit_code == 2, res.stderr
    assert f"{count:,} runs" in res.stdout and "about" in res.stdout  # count and estimate first
    assert f"{count:,} runs" in res.stderr and "--allow-large" in res.stderr
    assert res.stderr.count("\n") == 1
    res, _ = invoke("sweep", path, "--out", tmp_path / "s", "--allow-large", "--quiet")
    assert isinstance(res.exception, Reached), res.stderr


def test_lhs_of_a_million_samples_is_refused(tmp_path: Path, no_expansion: None) -> None:
    doc = {"overrides": BASE, "method": "lhs", "samples": 1_000_000, "replicates": 3,
           "parameters": {"injection.volume_ml": {"range": [0.2, 0.5]}}}  # fmt: skip
    res, seconds = invoke("sweep", write(tmp_path, "lhs.yaml", doc), "--out", tmp_path / "s", "--allow-large")
    assert res.exit_code == 2 and "3,000,000 runs" in res.stderr and seconds < 2.0


def test_cohort_sizes(tmp_path: Path, no_expansion: None) -> None:
    cohort = ROOT / "configs" / "cohort_small.yaml"
    res, seconds = invoke("cohort", cohort, "--n", 1_000_000_000, "--out", tmp_path / "c", "--allow-large")
    assert res.exit_code == 2 and "1,000,000,000 patients" in res.stderr and seconds < 2.0
    n = COHORT_PATIENT_LIMIT + 1
    res, _ = invoke("cohort", cohort, "--n", n, "--out", tmp_path / "c", "--no-sensitivity")
    assert res.exit_code == 2 and f"{n:,} patients" in res.stderr and "--allow-large" in res.stderr
    assert f"{n:,} virtual patients" in res.stdout
    res, _ = invoke("cohort", cohort, "--n", n, "--out", tmp_path / "c", "--allow-large", "--quiet")
    assert isinstance(res.exception, Reached), res.stderr
    assert not (tmp_path / "c").exists()


def test_cohort_counts_follow_policies_and_design() -> None:
    from sim.studies.cohort import load_cohort, plan_cohort, sensitivity_design

    spec, base_dir = load_cohort(ROOT / "configs" / "cohort_small.yaml")
    scenarios, rows = cohort_counts(spec, 3, sensitivity=True)
    plan = plan_cohort(spec, base_dir, n=3)
    assert scenarios == len(plan.arms) + len(plan.probes)  # arms + one never-stop probe per treated level
    assert rows == len(sensitivity_design(spec)[1])


def test_runner_is_checked_before_the_sweep(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", {"overrides": BASE})
    for runner, expect in (("os:nope", "cannot import"), ("os:sep", "not callable"), ("nope", "expected")):
        res, _ = invoke("sweep", path, "--out", tmp_path / "s", "--runner", runner, "--quiet")
        assert res.exit_code == 2 and f"runner '{runner}'" in res.stderr and expect in res.stderr
    assert not (tmp_path / "s").exists()


def test_a_whole_section_swept_is_a_type_error(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", {"parameters": {"patient": {"values": [1, 2]}}})
    res, _ = invoke("sweep", path, "--out", tmp_path / "s", "--quiet")
    assert res.exit_code == 2 and "parameter 'patient' is a section" in res.stderr
    assert "identical" not in res.stderr
    cohort = yaml.safe_load((ROOT / "configs" / "cohort_small.yaml").read_text())
    cohort["base"] = str(ROOT / "configs" / "default.yaml")
    cohort["distributions"]["veins"] = {"dist": "bernoulli", "p": 0.5}
    res, _ = invoke("cohort", write(tmp_path, "c.yaml", cohort), "--out", tmp_path / "c", "--quiet")
    assert res.exit_code == 2 and "distribution 'veins' is a section" in res.stderr


def test_many_invalid_scenarios_are_summarised(tmp_path: Path) -> None:
    doc = {
        "overrides": BASE,
        "parameters": {
            "injection.volume_ml": {"values": [25 + i for i in range(200)]},
            "patient.level": {"values": ["L1", "X9", "[/]"]},
        },
    }
    res, _ = invoke("sweep", write(tmp_path, "s.yaml", doc), "--out", tmp_path / "s", "--quiet")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) <= 7, res.stderr
    assert "injection.volume_ml" in res.stderr and "more scenarios with the same problem" in res.stderr


def test_sweep_text_is_printed_literally(tmp_path: Path, no_expansion: None) -> None:
    bad = {"method": "lhs", "samples": 2, "parameters": {"injection.volume_ml": {"range": [5, 1]}}}
    res, _ = invoke("sweep", write(tmp_path, "r.yaml", bad), "--out", tmp_path / "s", "--quiet")
    assert res.exit_code == 2 and "[lo, hi]" in res.stderr and "volume_ml.range = [5, 1]: " in res.stderr
    good = {"name": "[/] [bold red]x", "overrides": BASE}
    res, _ = invoke("sweep", write(tmp_path, "n.yaml", good), "--out", tmp_path / "s")
    assert isinstance(res.exception, Reached) and "sweep '[/] [bold red]x'" in res.stdout


def test_study_folder_checked_before_anything(tmp_path: Path, no_expansion: None) -> None:
    (tmp_path / "afile").write_text("x")
    path = write(tmp_path, "s.yaml", {"overrides": BASE})
    res, _ = invoke("sweep", path, "--out", tmp_path / "afile", "--quiet")
    assert res.exit_code == 2 and "exists and is not a folder" in res.stderr


def test_format_duration() -> None:
    assert format_duration(30) == "30 s"
    assert format_duration(600) == "10 min"
    assert format_duration(7200) == "2.0 h"
    assert format_duration(10 * 86400) == "10 days"
    assert "years" in format_duration(1e12)


def test_a_cohort_folder_has_one_writer(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "cohort"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from sim.run.output_folder import OutputClaim; OutputClaim(sys.argv[1]).acquire();"
         "print('held', flush=True); time.sleep(60)", str(out), str(ROOT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cohort = ROOT / "configs" / "cohort_small.yaml"
        res, _ = invoke("cohort", cohort, "--n", 1, "--out", out, "--no-sensitivity", "--quiet")
        assert res.exit_code == 2 and f"another pce-sim run (pid {holder.pid})" in res.stderr, res.stderr
        assert not (out / "ledger.sqlite").exists()
    finally:
        holder.kill()
        holder.wait()
