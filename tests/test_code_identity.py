"""Which code made a cached result: the code digest, the ledger's record of it, and what a sweep,
a cohort's arm stash and the command line do with results made by other code.

A scenario's content hash names its inputs, not the code that ran it, so a sweep resumed after the
physics changed used to mix results of two versions without a word. These tests make a ledger hold
a run "made by other code" by rewriting its recorded digest, exactly what a real upgrade leaves.
"""

from __future__ import annotations

import csv
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sim.core.errors import ConfigError
from sim.core.provenance import code_digest, code_label, source_digest
from sim.studies import arm_branches
from sim.studies.executors import SerialExecutor
from sim.studies.ledger import open_ledger
from sim.studies.sweep import expand_sweep, run_sweep, sweep_from_dict
from tests.test_sweep import CALLS, TINY, deterministic_runner

REPO = Path(__file__).resolve().parent.parent
OTHER = "f" * 64


def _tree(root: Path) -> tuple[Path, Path]:
    pkg, data = root / "pkg", root / "data"
    (pkg / "physics").mkdir(parents=True)
    (data / "veins").mkdir(parents=True)
    (pkg / "physics" / "law.py").write_text("K = 1.0\n")
    (data / "veins" / "net.yaml").write_text("d_mm: 2.0\n")
    (data / "README.md").write_text("notes\n")
    return pkg, data


def test_source_digest_follows_code_data_and_libraries_not_docs_or_bytecode(tmp_path):
    pkg, data = _tree(tmp_path)
    versions = {"numpy": "2.0", "scipy": "1.0"}
    base = source_digest(pkg, data, versions)
    assert base == source_digest(pkg, data, dict(reversed(versions.items())))  # order-free
    (data / "README.md").write_text("other notes\n")
    (pkg / "physics" / "__pycache__").mkdir()
    (pkg / "physics" / "__pycache__" / "law.cpython-311.pyc").write_bytes(b"\x00\x01")
    (pkg / "notes.txt").write_text("not code\n")
    assert source_digest(pkg, data, versions) == base
    changed = []
    (pkg / "physics" / "law.py").write_text("K = 1.1\n")
    changed.append(source_digest(pkg, data, versions))
    (pkg / "physics" / "law.py").write_text("K = 1.0\n")
    (data / "veins" / "net.yaml").write_text("d_mm: 2.5\n")
    changed.append(source_digest(pkg, data, versions))
    (data / "veins" / "net.yaml").write_text("d_mm: 2.0\n")
    changed.append(source_digest(pkg, data, {**versions, "numpy": "2.1"}))
    (pkg / "physics" / "law.py").rename(pkg / "physics" / "law2.py")  # same bytes, other module
    changed.append(source_digest(pkg, data, versions))
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_wheel_and_a_checkout_of_the_same_code_have_the_same_digest(tmp_path):
    """A checkout has the data folder beside the package, a wheel inside it (sim.geometries)."""
    import shutil

    files = {"pkg/__init__.py": "", "pkg/physics/law.py": "K = 1.0\n"}
    data = {"__init__.py": '"""data package"""\n', "veins/net.yaml": "d_mm: 2.0\n", "tree.graphml": "<g/>",
            "lobes.csv": "lobe,share\n", "README.md": "notes\n"}  # fmt: skip
    checkout, wheel = tmp_path / "checkout", tmp_path / "site"
    for rel, text in files.items():
        for root in (checkout, wheel):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    for rel, text in data.items():
        for where in (checkout / "geometries", wheel / "pkg" / "geometries"):
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_text(text)
    versions = {"numpy": "2.0"}
    beside = source_digest(checkout / "pkg", checkout / "geometries", versions)
    assert source_digest(wheel / "pkg", wheel / "pkg" / "geometries", versions) == beside
    (checkout / "geometries" / ".net.yaml.swp").write_bytes(b"editor")  # not a data file
    (checkout / "geometries" / "veins" / "notes.txt").write_text("scratch")
    assert source_digest(checkout / "pkg", checkout / "geometries", versions) == beside
    shutil.copy(checkout / "geometries" / "lobes.csv", checkout / "geometries" / "lobes2.csv")
    assert source_digest(checkout / "pkg", checkout / "geometries", versions) != beside


def test_code_digest_is_this_package_and_named_in_the_label():
    digest = code_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest[:12] in code_label() and "pce-sim" in code_label()


def _rows(n):
    return [(i, f"h{i:063d}", 0, {"x": i}, {"name": i}) for i in range(n)]


def test_ledger_records_the_code_and_finds_runs_of_other_code(tmp_path):
    rows = _rows(3)
    with open_ledger(tmp_path) as led:
        led.register_expansion("t", "fp", rows)
        for _, h, *_ in rows[:2]:
            led.mark_running(h)
        led.record_done(rows[0][1], {}, {}, "runs/0", 1.0)  # this process's code
        led.record_done(rows[1][1], {}, {}, "runs/1", 1.0, code=(OTHER, "pce-sim 0.0 (old)"))
        got = {r.hash: r for r in led.rows()}
        assert got[rows[0][1]].code_digest == code_digest() and got[rows[0][1]].code_label == code_label()
        assert led.other_code(code_digest()) == [(rows[1][1], "pce-sim 0.0 (old)")]
        assert led.pending() == [rows[2][1]]
        assert led.pending(rerun_other_than=code_digest()) == [rows[1][1], rows[2][1]]
        assert led.other_code(OTHER) == [(rows[0][1], code_label())]


def test_a_ledger_written_before_the_code_columns_is_upgraded_and_its_runs_count_as_other_code(tmp_path):
    db = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db) as con:  # the schema of the first ledgers
        con.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE scenarios (idx INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE,
                replicate INTEGER NOT NULL, inputs_json TEXT NOT NULL, config_json TEXT NOT NULL);
            CREATE TABLE runs (hash TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL
                DEFAULT 0, error TEXT, summary_json TEXT, emboli_json TEXT, run_dir TEXT,
                started_utc TEXT, finished_utc TEXT, wall_time_s REAL);
            INSERT INTO scenarios VALUES (0, 'old', 0, '{}', '{}');
            INSERT INTO runs (hash, status, attempts, summary_json, emboli_json)
                VALUES ('old', 'done', 1, '{"n": 1}', '{}');
            """
        )
    with open_ledger(tmp_path) as led:
        (row,) = led.rows()
        assert row.status == "done" and row.summary == {"n": 1} and row.code_digest is None
        assert led.other_code(code_digest()) == [("old", None)]
        assert led.meta("schema") == "2"  # upgraded in place


def _sweep(values=(0.3, 0.4, 0.5)):
    return expand_sweep(
        sweep_from_dict(
            {
                "overrides": TINY,
                "method": "grid",
                "parameters": {"injection.volume_ml": {"values": list(values)}},
            }
        )
    )


def _pretend_other_code(folder: Path, digest: str, label: str | None = "pce-sim 0.0 (git 0123456789ab)"):
    with sqlite3.connect(folder / "ledger.sqlite") as con:
        con.execute("UPDATE runs SET code_digest = ?, code_label = ? WHERE hash = ?", (OTHER, label, digest))


def test_resume_refuses_runs_of_other_code_before_running_anything(tmp_path):
    e = _sweep()
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    _pretend_other_code(tmp_path, e.points[1].hash)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as con:  # and one run never finished
        con.execute("DELETE FROM runs WHERE hash = ?", (e.points[2].hash,))
    CALLS.clear()
    with pytest.raises(ConfigError) as info:
        run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    text = str(info.value)
    assert "\n" not in text and "1 of its 3 runs" in text and "pce-sim 0.0 (git 0123456789ab)" in text
    assert code_label() in text and "--rerun-stale" in text and "--keep-stale" in text
    assert CALLS == []  # refused before any run started


def test_a_refused_resume_leaves_the_ledger_as_it_was(tmp_path):
    """Even with --force switching the folder to a grown sweep, the refusal comes before any change."""
    e = _sweep((0.3, 0.4))
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    _pretend_other_code(tmp_path, e.points[0].hash)
    grown = _sweep((0.3, 0.4, 0.5))
    with pytest.raises(ConfigError, match="1 of its 3 runs"):
        run_sweep(grown, tmp_path, executor=SerialExecutor(), runner=deterministic_runner, force=True)
    with open_ledger(tmp_path) as led:
        assert [r.hash for r in led.rows()] == [p.hash for p in e.points]  # the old expansion still


def test_rerun_stale_runs_the_other_codes_runs_again_and_records_this_code(tmp_path):
    e = _sweep()
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    _pretend_other_code(tmp_path, e.points[1].hash, label=None)  # unrecorded code counts as other
    CALLS.clear()
    out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner, other_code="rerun")
    assert CALLS == [e.points[1].hash] and out.ran == 1 and out.ok
    with open_ledger(tmp_path) as led:
        assert led.other_code(code_digest()) == []
    codes = [r["code"] for r in csv.DictReader((tmp_path / "results.csv").open())]
    assert codes == [code_digest()[:12]] * 3


def test_a_rerun_that_fails_records_no_code_and_is_not_listed_as_other_codes(tmp_path):
    e = _sweep((0.3, 0.4))
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    _pretend_other_code(tmp_path, e.points[1].hash)

    def failing(scenario):
        raise RuntimeError("boom")

    out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=failing, other_code="rerun")
    assert out.ran == 1 and len(out.failed) == 1
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["status"], r["code"]) for r in rows] == [("done", code_digest()[:12]), ("failed", "")]
    with open_ledger(tmp_path) as led:
        assert led.other_code(code_digest()) == []  # failed, not done by other code: retried as failed
        assert {r.hash: r.code_digest for r in led.rows()}[e.points[1].hash] is None


def test_keep_stale_keeps_them_and_the_table_says_which_code_made_each_row(tmp_path):
    e = _sweep()
    run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner)
    _pretend_other_code(tmp_path, e.points[0].hash)
    CALLS.clear()
    out = run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner, other_code="keep")
    assert CALLS == [] and out.ran == 0 and out.skipped == 3
    codes = [r["code"] for r in csv.DictReader((tmp_path / "results.csv").open())]
    assert codes == [OTHER[:12], code_digest()[:12], code_digest()[:12]]
    with pytest.raises(ValueError, match="other_code"):
        run_sweep(e, tmp_path, executor=SerialExecutor(), runner=deterministic_runner, other_code="maybe")


def test_cli_refuses_both_flags_in_one_line_with_exit_2(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"overrides": TINY, "method": "grid", "parameters": {}}))
    for command in (["sweep", str(sweep), "--out", str(tmp_path / "o")], ["cohort", "nope.yaml"]):
        proc = subprocess.run(
            [sys.executable, "-m", "sim.cli", *command, "--rerun-stale", "--keep-stale", "-q"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "--rerun-stale and --keep-stale" in lines[0]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_arm_stashed_by_other_code_is_run_again(tmp_path, monkeypatch):
    """The arms phase takes a stashed branch only if this code made it; else it runs the arm itself."""
    from sim.core.config import scenario_from_dict
    from sim.run import pipeline
    from sim.run.results import RunResult

    scenario = scenario_from_dict({**TINY, "name": "arm"}, source="test")
    digest = scenario.content_hash()
    stashed = RunResult(scenario=scenario, summary={"from": "stash"}, emboli={})
    fresh = RunResult(scenario=scenario, summary={"from": "run"}, emboli={})
    monkeypatch.setattr(pipeline, "run_scenario", lambda s: fresh)
    runner = arm_branches.StashedArm(tmp_path)
    path = tmp_path / f"{digest}.pkl"
    path.write_bytes(pickle.dumps({"code_digest": code_digest(), "result": stashed}))
    assert runner(scenario).summary == {"from": "stash"}
    path.write_bytes(pickle.dumps({"code_digest": OTHER, "result": stashed}))
    assert runner(scenario).summary == {"from": "run"}
    path.write_bytes(pickle.dumps(stashed))  # a stash from before the record carried the code
    assert runner(scenario).summary == {"from": "run"}


def test_a_worker_running_other_code_fails_the_task_with_a_clear_error(tmp_path):
    from sim.core.config import scenario_from_dict
    from sim.studies.executors import RunTask, execute_task

    scenario = scenario_from_dict(dict(TINY), source="test")
    config = scenario.model_dump(mode="json")
    task = RunTask(
        scenario.content_hash(), config, str(tmp_path / "run"), deterministic_runner, code_digest=OTHER
    )
    outcome = execute_task(task)
    assert not outcome.ok and "this worker runs other code" in outcome.error
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- input files


def _ct_scenario(ct: Path, labels: Path):
    from sim.core.config import scenario_from_dict

    anatomy = {"ct_path": str(ct), "labels_path": str(labels), "vertebra_label": 1}
    return scenario_from_dict({**TINY, "patient": {"anatomy": anatomy}}, source="test")


def test_a_ct_scenarios_key_names_the_scan_not_only_its_path(tmp_path):
    """Replacing a scan under the same path changes the key; copying it elsewhere changes only the path."""
    import hashlib
    import json
    import os

    from sim.core.config import scenario_from_dict

    ct, labels = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    ct.write_bytes(b"scan one")
    labels.write_bytes(b"labels")
    first = _ct_scenario(ct, labels)
    key = first.content_hash()
    assert first.input_file_digests() == {
        "patient.anatomy.ct_path": hashlib.sha256(b"scan one").hexdigest(),
        "patient.anatomy.labels_path": hashlib.sha256(b"labels").hexdigest(),
    }
    ct.write_bytes(b"scan two")  # same path, same size, other bytes
    os.utime(ct, ns=(1, 1))  # and whatever the clock says: the cache keys on the file's identity
    assert _ct_scenario(ct, labels).content_hash() != key
    ct.write_bytes(b"scan one")
    assert _ct_scenario(ct, labels).content_hash() == key
    # a scenario without input files keeps its config-only key (existing ledgers stay valid)
    plain = scenario_from_dict(dict(TINY), source="test")
    blob = json.dumps(plain.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert plain.content_hash() == hashlib.sha256(blob.encode()).hexdigest()


def test_a_missing_scan_is_named_in_one_line(tmp_path):
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes(b"labels")
    with pytest.raises(ConfigError) as info:
        _ct_scenario(tmp_path / "gone.nii.gz", labels).content_hash()
    text = str(info.value)
    assert text.startswith(f"patient.anatomy.ct_path = '{tmp_path / 'gone.nii.gz'}': cannot read the file")
    assert "\n" not in text


# ---------------------------------------------------------------------------- cohorts


def test_a_cohort_refuses_runs_of_other_code_before_its_first_phase_runs(tmp_path):
    """Its phases share one ledger with different expansions: the refusal looks at every run first."""
    from sim.studies.cohort import plan_cohort, run_cohort
    from tests.test_cohort import ROOT, cohort, contract_runner, serial

    plan = plan_cohort(cohort(n=6), ROOT / "configs")
    run_cohort(plan, tmp_path, executor_factory=serial, runner=contract_runner)
    probes = {s.content_hash() for s in plan.probes.values()}
    with sqlite3.connect(tmp_path / "ledger.sqlite") as con:  # the arms (second phase) by other code
        hashes = [h for (h,) in con.execute("SELECT hash FROM runs WHERE status = 'done'") if h not in probes]
        assert hashes
        con.executemany(
            "UPDATE runs SET code_digest = ?, code_label = 'old' WHERE hash = ?", [(OTHER, h) for h in hashes]
        )
    calls = []

    def counting(scenario):
        calls.append(scenario.content_hash())
        return contract_runner(scenario)

    grown = plan_cohort(cohort(n=9), ROOT / "configs")  # new patients: the first phase has runs to do
    with pytest.raises(
        ConfigError, match=f"{len(hashes)} finished runs of this cohort were made by other code"
    ):
        run_cohort(grown, tmp_path, executor_factory=serial, runner=counting)
    assert calls == []
    rerun = run_cohort(grown, tmp_path, executor_factory=serial, runner=counting, other_code="rerun")
    assert not rerun.failed and set(hashes) <= set(calls)


def test_a_cohort_on_a_ct_base_names_the_scan_in_its_fingerprint(tmp_path):
    import dataclasses

    from sim.core.input_files import anatomy_file_digests
    from sim.studies.cohort import plan_cohort
    from tests.test_cohort import ROOT, cohort

    plan = plan_cohort(cohort(n=2), ROOT / "configs")
    assert anatomy_file_digests(plan.base["patient"].get("anatomy")) == {}
    ct, labels = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    ct.write_bytes(b"scan one")
    labels.write_bytes(b"labels")
    anatomy = {"ct_path": str(ct), "labels_path": str(labels), "vertebra_label": 1}
    base = {**plan.base, "patient": {**plan.base["patient"], "anatomy": anatomy}}
    on_ct = dataclasses.replace(plan, base=base)
    first = on_ct.fingerprint
    assert first != plan.fingerprint and set(anatomy_file_digests(base["patient"]["anatomy"])) == {
        "patient.anatomy.ct_path",
        "patient.anatomy.labels_path",
    }
    ct.write_bytes(b"scan two, longer")  # another size: a new file identity whatever the clock's tick
    assert dataclasses.replace(plan, base=base).fingerprint != first


def test_version_names_the_code_that_results_csv_names():
    proc = subprocess.run(
        [sys.executable, "-m", "sim.cli", "--version"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [code_label(), f"code digest {code_digest()}"]


def test_a_ledger_of_a_newer_schema_is_refused_by_name_and_its_lock_released(tmp_path):
    with open_ledger(tmp_path) as led:
        assert led.meta("schema") == "2"  # recorded at the first open
        led.register_expansion("t", "fp", _rows(1))
    with sqlite3.connect(tmp_path / "ledger.sqlite") as con:
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    with pytest.raises(
        ConfigError, match=r"written by a newer pce-sim \(ledger schema '3'; this one reads schema 2"
    ):
        with open_ledger(tmp_path):
            pass
    for odd in ("²", "2b"):  # not a schema this code reads either, still one line
        with sqlite3.connect(tmp_path / "ledger.sqlite") as con:
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (odd,))
        with pytest.raises(ConfigError, match="written by a newer pce-sim"):
            with open_ledger(tmp_path):
                pass
    with sqlite3.connect(tmp_path / "ledger.sqlite") as con:
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    with open_ledger(tmp_path) as led:  # the failed opens left no lock behind
        assert len(led.rows()) == 1


def test_a_runs_provenance_names_its_cpu_and_simd_paths():
    """Results are the same bits in any process of one machine, not across CPUs whose SIMD paths round
    differently: every run folder says which CPU made it."""
    from numpy._core._multiarray_umath import __cpu_features__ as found

    from sim.core.provenance import SIMD_FEATURES, cpu_info, provenance

    info = provenance(1)["cpu"]
    assert info == cpu_info() and info["model"]
    assert info["simd"] == [f for f in SIMD_FEATURES if found.get(f)]
