"""The cohort grid study (benchmarks/cohort_grid_study.py): derived cohort files, paired comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.cohort_grid_study import compare_grids, derived_cohort_file, markdown, repo_path, spacing_tag

ROOT = Path(__file__).resolve().parents[1]


def test_derived_cohort_file_changes_only_the_spacing(tmp_path: Path) -> None:
    from sim.studies.cohort import base_config, load_cohort, sample_patients

    src = ROOT / "configs" / "cohort_default.yaml"
    path = derived_cohort_file(src, 0.75, tmp_path)
    assert path.name == "cohort_h0p75.yaml"
    spec, base_dir = load_cohort(path)
    ref_spec, ref_dir = load_cohort(src)
    base = base_config(spec, base_dir)
    ref = base_config(ref_spec, ref_dir)
    assert base["grid"]["spacing_mm"] == 0.75
    base["grid"]["spacing_mm"] = ref["grid"]["spacing_mm"]
    assert base == ref
    # the same patients: every sampled input and seed equal
    a = sample_patients(spec, 5, base)
    b = sample_patients(ref_spec, 5, ref)
    assert [(p.inputs, p.extra_levels) for p in a] == [(p.inputs, p.extra_levels) for p in b]


def test_the_default_cohort_keeps_the_grid_its_grid_study_measured() -> None:
    """The cohort names its spacing (1 mm, README: Virtual cohort, Grid dependence), so moving a single
    run's default spacing does not move the cohort's incidences silently."""
    from sim.core.config import read_yaml
    from sim.studies.cohort import base_config, load_cohort

    assert read_yaml(ROOT / "configs" / "cohort_default.yaml")["overrides"]["grid"]["spacing_mm"] == 1.0
    spec, base_dir = load_cohort(ROOT / "configs" / "cohort_default.yaml")
    assert base_config(spec, base_dir)["grid"]["spacing_mm"] == 1.0


def _table(events: dict[str, list[int]], n: int) -> dict[str, dict[str, np.ndarray]]:
    cols = {"patient": np.arange(n, dtype=float)}
    for key in ("leak_any", "detected", "pce", "leaked_volume_ml", "embolised_volume_ml", "n_emboli"):
        cols[key] = np.zeros(n)
    for key, idx in events.items():
        cols[key][idx] = 1.0
    policies = ("clinical_practice", "stop_at_detection", "never_stop")
    return {p: {k: v.copy() for k, v in cols.items()} for p in policies}


def test_compare_grids_counts_discordant_patients_against_the_finest() -> None:
    n = 40
    fine = _table({"pce": [0, 1, 2, 3], "leak_any": list(range(10))}, n)
    coarse = _table({"pce": [0, 1, 2, 5, 6, 7], "leak_any": list(range(10))}, n)
    rows = compare_grids({1.0: coarse, 0.75: fine}, seed=1, n_boot=500)
    pce = next(r for r in rows if r["policy"] == "clinical_practice" and r["endpoint"] == "PCE")
    assert pce["reference_mm"] == 0.75
    assert pce["0.75 mm"] == pytest.approx(4 / n)
    assert pce["1 mm"] == pytest.approx(6 / n)
    assert pce["diff 1 mm"] == pytest.approx(2 / n)
    assert pce["discordant 1 mm"] == [3, 1]  # only on 1 mm: 5, 6, 7; only on 0.75 mm: 3
    lo, hi = pce["ci 1 mm"]
    assert lo <= 2 / n <= hi
    leak = next(r for r in rows if r["policy"] == "never_stop" and r["endpoint"] == "venous leak")
    assert leak["diff 1 mm"] == 0.0 and leak["discordant 1 mm"] == [0, 0] and leak["mcnemar_p 1 mm"] == 1.0
    text = markdown(rows, [1.0, 0.75], n)
    assert "| clinical_practice | PCE | 15 % | 10 % | +5 (" in text
    assert "3 / 1" in text


def test_compare_grids_refuses_other_patients() -> None:
    fine = _table({}, 4)
    coarse = _table({}, 4)
    for cols in coarse.values():
        cols["patient"] = cols["patient"] + 1
    with pytest.raises(ValueError, match="other patients"):
        compare_grids({1.0: coarse, 0.5: fine}, seed=1, n_boot=50)


def test_spacing_tag() -> None:
    assert spacing_tag(0.75) == "h0p75" and spacing_tag(1.0) == "h1" and spacing_tag(0.5) == "h0p5"


def test_kernel_study_changes_only_the_vein_kernel_radius(tmp_path: Path) -> None:
    from benchmarks.cohort_grid_study import derive_cohort
    from benchmarks.cohort_kernel_study import radius_tag
    from sim.studies.cohort import base_config, load_cohort, sample_patients

    src = ROOT / "configs" / "cohort_default.yaml"
    path = derive_cohort(src, "patient", "vein_kernel_radius_mm", 3.0, radius_tag(3.0), tmp_path)
    assert path.name == "cohort_r3.yaml" and radius_tag(2.5) == "r2p5"
    spec, base_dir = load_cohort(path)
    ref_spec, ref_dir = load_cohort(src)
    base, ref = base_config(spec, base_dir), base_config(ref_spec, ref_dir)
    assert base["patient"]["vein_kernel_radius_mm"] == 3.0
    base["patient"].pop("vein_kernel_radius_mm")
    ref["patient"].pop("vein_kernel_radius_mm", None)
    assert base == ref
    a, b = sample_patients(spec, 5, base), sample_patients(ref_spec, 5, ref)
    assert [(p.inputs, p.extra_levels) for p in a] == [(p.inputs, p.extra_levels) for p in b]


def test_a_stored_study_names_its_cohort_file_relative_to_the_repository(tmp_path: Path) -> None:
    assert repo_path(ROOT / "configs" / "cohort_default.yaml") == "configs/cohort_default.yaml"
    outside = tmp_path / "cohort.yaml"
    assert repo_path(outside) == str(outside)


def test_cfl_option_runs_every_grid_at_one_step_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import benchmarks.cohort_grid_study as study
    from sim.studies.cohort import base_config, load_cohort

    seen = {}

    def fake_study(cohort, n, workers, out, values, field, tag, say, name, key):
        seen.update(cohort=cohort, tags=[tag(v) for v in values], field=field, say=say.format(1))

    monkeypatch.setattr(study, "run_paired_study", fake_study)
    argv = ["cohort_grid_study.py", "--spacings", "1,0.5", "--cfl", "0.4", "--out", str(tmp_path), "--n", "3"]
    monkeypatch.setattr("sys.argv", argv)
    study.main()
    assert seen["tags"] == ["h1_cfl0p4", "h0p5_cfl0p4"] and seen["field"] == ("grid", "spacing_mm")
    assert "cfl 0.4" in seen["say"]
    spec, base_dir = load_cohort(seen["cohort"])
    assert base_config(spec, base_dir)["grid"]["cfl"] == 0.4
    monkeypatch.setattr("sys.argv", argv[:4] + ["1.5", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--cfl 1.5: must be a number in \[0.05, 1\]"):
        study.main()
