"""The validation suite's machinery: reference files, verdict rules, one-line errors, the CLI command.

The physics verdicts themselves (the real experiments) are in tests/test_validation_physics.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sim.cli import app
from sim.core.errors import ConfigError
from sim.validation import references as refmod
from sim.validation.experiments import ModelOutput, group_overrides, merge, stepped_cannula_reduction
from sim.validation.references import (
    REFERENCE_SUFFIX,
    ReferenceSet,
    experiment_names,
    load_pair,
    load_references,
    select,
    validation_dir,
)
from sim.validation.report_card import plan_suite
from sim.validation.verdicts import evaluate, interval_miss, intervals_gap, ratio_sd, sample_interval

EXPERIMENTS = ("baroud2005", "baroud2006", "habib2010", "krebs2005", "li2015", "reidy2003")
CITATION = "Doe J. A paper. J Test 2020;1:1."


# ---------------------------------------------------------------------------- the shipped files


def test_every_experiment_has_both_files():
    assert tuple(experiment_names()) == EXPERIMENTS
    for name in EXPERIMENTS:
        assert (validation_dir() / f"{name}{REFERENCE_SUFFIX}").is_file()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_reference_numbers_are_complete(name):
    """Each number is written with value, sd, n, units, measured and source (sd and n may be null)."""
    raw = yaml.safe_load((validation_dir() / f"{name}{REFERENCE_SUFFIX}").read_text())
    spec, refs, _, _ = load_pair(name)
    assert raw["references"], name
    for key, entry in raw["references"].items():
        for field in ("value", "sd", "n", "units", "measured", "source"):
            assert field in entry, f"{name}: references.{key}.{field}"
        ref = refs.references[key]
        assert isinstance(ref.value, float) and math.isfinite(ref.value)
        assert ref.sd is None or ref.sd >= 0.0
        assert len(ref.source) > 30 and "20" in ref.source  # a full citation with its year
        assert len(ref.measured) > 20
    assert refs.citation and refs.checks
    assert spec.assumptions and spec.measured_as


def test_every_experiment_runs_at_the_scenario_default_spacing():
    """No shipped experiment sets its own grid: the report card follows the default spacing."""
    from sim.core.config import DEFAULT_SPACING_MM

    for name in EXPERIMENTS:
        raw = yaml.safe_load((validation_dir() / f"{name}.yaml").read_text())
        assert "grid_spacing_mm" not in raw, name
        assert load_pair(name)[0].grid_spacing_mm == DEFAULT_SPACING_MM


def test_plan_suite_checks_every_model_name_and_scenario():
    plans = plan_suite(None)
    assert [p.spec.experiment for p in plans] == list(EXPERIMENTS)
    runs = {p.spec.experiment: p.n_runs for p in plans}
    assert runs == {
        "baroud2005": 1,
        "baroud2006": 1,
        "habib2010": 5,
        "krebs2005": 24,
        "li2015": 1,
        "reidy2003": 2,
    }


def test_habib_never_stops_on_a_leak_and_krebs_samples_a_factorial():
    spec, *_ = load_pair("habib2010")
    assert spec.base["injection"]["stop_after_leak_s"] is None
    spec, *_ = load_pair("krebs2005")
    groups = group_overrides(spec)
    assert len(groups) == 2 * 4 * 3
    assert groups["high_9_0.1"] == {
        "cement": {"preset": "high", "time_after_mixing_min": 9.0},
        "injection": {"rate_ml_per_s": 0.1},
    }


def test_merge_keeps_sections():
    base = {"cement": {"preset": "low", "time_after_mixing_min": 3.0}, "name": "x"}
    out = merge(base, {"cement": {"preset": "high"}})
    assert out == {"cement": {"preset": "high", "time_after_mixing_min": 3.0}, "name": "x"}
    assert base["cement"]["preset"] == "low"


def test_select_only():
    assert select(None) == list(EXPERIMENTS)
    assert select(["krebs2005,habib2010"]) == ["habib2010", "krebs2005"]
    assert select(["li2015", " reidy2003 "]) == ["li2015", "reidy2003"]
    with pytest.raises(ConfigError, match="unknown experiment 'nosuch'"):
        select(["habib2010,nosuch"])


# ---------------------------------------------------------------------------- verdict arithmetic


def test_ratio_sd_first_order_hand_computed():
    r, sd = ratio_sd(2.6, 1.2, 4.0, 1.2)
    assert r == pytest.approx(0.65)
    assert sd == pytest.approx(0.65 * math.sqrt((1.2 / 2.6) ** 2 + (1.2 / 4.0) ** 2))
    assert sd == pytest.approx(0.35781, abs=1e-5)
    r, sd = ratio_sd(1.5, 1.2, 4.0, 1.2)  # high / low at 3.5 min
    assert (r, sd) == pytest.approx((0.375, 0.32040), abs=1e-5)
    r, sd = ratio_sd(0.92, 0.6, 1.5, 1.2)  # high 6.5 / 3.5 min
    assert (r, sd) == pytest.approx((0.61333, 0.63305), abs=1e-5)
    assert ratio_sd(3.0, 0.0, 2.0, 0.0) == (1.5, 0.0)
    with pytest.raises(ZeroDivisionError):
        ratio_sd(1.0, 0.1, 0.0, 0.1)


def test_interval_helpers():
    assert interval_miss(5.0, 2.0, 15.0) == 0.0
    assert interval_miss(20.2, 2.0, 15.0) == pytest.approx(5.2)
    assert interval_miss(1.0, 2.0, 15.0) == pytest.approx(-1.0)
    assert math.isnan(interval_miss(math.nan, 2.0, 15.0))
    assert intervals_gap((1.0, 2.0), (1.5, 3.0)) == 0.0
    assert intervals_gap((0.1, 0.3), (0.62, 2.77)) == pytest.approx(-0.32)
    assert intervals_gap((3.0, 4.0), (0.62, 2.77)) == pytest.approx(0.23)
    assert sample_interval([100.0, 200.0, 300.0], (5.0, 95.0)) == pytest.approx((110.0, 290.0))


def _refs(references: dict, checks: list) -> ReferenceSet:
    return ReferenceSet.model_validate(
        {"experiment": "t", "citation": CITATION, "references": references, "checks": checks}
    )


def _num(value, sd=None, units="g", n=None):
    return {"value": value, "sd": sd, "n": n, "units": units, "measured": "a test number", "source": CITATION}


def _out(values=None, samples=None, bands=None) -> ModelOutput:
    return ModelOutput("t", "leakage", 1.0, values=values or {}, samples=samples or {}, bands=bands or {})


HABIB = {"a": _num(2.6, 1.2), "b": _num(4.0, 1.2)}
RATIO = [{"name": "r", "rule": "ratio_sd", "title": "a/b", "reference": ["a", "b"], "model": ["x.m", "y.m"]}]


@pytest.mark.parametrize(
    ("model_ratio", "passed", "miss"),
    [(0.70, True, 0.0), (0.30, True, 0.0), (1.44, False, 1.44 - 1.00781), (0.25, False, 0.25 - 0.29219)],
)
def test_ratio_sd_verdict(model_ratio, passed, miss):
    out = _out({"x.m": model_ratio * 1e-4, "y.m": 1e-4})
    (o,) = evaluate(_refs(HABIB, RATIO), out)
    assert o.passed is passed and o.verdict == ("PASS" if passed else "FAIL")
    assert o.miss == pytest.approx(miss, abs=1e-4)
    assert o.numbers["low"] == pytest.approx(0.29219, abs=1e-5)
    assert o.numbers["high"] == pytest.approx(1.00781, abs=1e-5)
    assert (o.miss_text == "") is passed


def test_ratio_sd_k_widens_and_zero_denominator_fails():
    checks = [dict(RATIO[0], k_sd=2.0)]
    (o,) = evaluate(_refs(HABIB, checks), _out({"x.m": 1.3, "y.m": 1.0}))
    assert o.passed  # 0.65 + 2 * 0.358 = 1.366
    (o,) = evaluate(_refs(HABIB, RATIO), _out({"x.m": 1.0, "y.m": 0.0}))
    assert not o.passed and o.miss_text == "not computable"


@pytest.mark.parametrize(
    ("model_pa", "passed"), [(6.0e3, True), (2.0e3, True), (20.2e3, False), (1.0e3, False)]
)
def test_range_verdict(model_pa, passed):
    refs = _refs(
        {"p": _num(6.83, units="kPa")},
        [{"name": "p", "rule": "range", "title": "p", "reference": "p", "model": "g.p_pa",
          "low": 2.0, "high": 15.0}],
    )  # fmt: skip
    (o,) = evaluate(refs, _out({"g.p_pa": model_pa}))
    assert o.passed is passed
    assert o.numbers["model"] == pytest.approx(model_pa / 1e3)  # shown in the reference's kPa
    if model_pa == 20.2e3:
        assert o.miss == pytest.approx(5.2) and o.miss_text == "5.20 kPa above the accepted interval"


def test_overlap_verdict_pass_and_fail():
    refs = _refs(
        {"k": _num(1693.0, 653.0, units="kPa")},
        [{"name": "o", "rule": "overlap", "title": "o", "reference": "k", "model": "s"}],
    )
    (o,) = evaluate(refs, _out(samples={"s": [0.3e6, 1.1e6, 3.9e6]}))
    assert o.passed
    (o,) = evaluate(refs, _out(samples={"s": [100e3, 200e3, 300e3]}))  # P5-P95 = 110-290 kPa
    assert not o.passed
    assert o.numbers["reference_low"] == pytest.approx(1693.0 - 1.645 * 653.0)
    assert o.miss == pytest.approx(290.0 - (1693.0 - 1.645 * 653.0))
    assert "below" in o.miss_text
    (o,) = evaluate(refs, _out(samples={"s": [3.0e6, 3.5e6, 4.0e6]}))  # entirely above 2.77 MPa
    assert not o.passed and o.miss > 0


def test_contains_verdict():
    refs = _refs(
        {"red": _num(63.0, units="%")},
        [{"name": "c", "rule": "contains", "title": "c", "reference": "red", "model": "band"}],
    )
    (o,) = evaluate(refs, _out(bands={"band": (0.28, 0.656)}))
    assert o.passed and o.model_text == "28.0–65.6 %"
    (o,) = evaluate(refs, _out(bands={"band": (0.25, 0.583)}))
    assert not o.passed
    assert o.miss == pytest.approx(-4.7)
    assert o.miss_text == "the band ends 4.70 % below the published value"


def test_ratio_factor_verdict():
    refs = _refs(
        {"v": _num(1.20, units="kPa"), "nv": _num(5.09, units="kPa")},
        [{"name": "f", "rule": "ratio_factor", "title": "f", "reference": ["v", "nv"],
          "model": ["v.p", "nv.p"], "factor": 2.0}],
    )  # fmt: skip
    (o,) = evaluate(refs, _out({"v.p": 3.0, "nv.p": 10.0}))
    assert o.passed and o.numbers["reference_ratio"] == pytest.approx(1.20 / 5.09)
    (o,) = evaluate(refs, _out({"v.p": 1.08, "nv.p": 10.0}))
    assert not o.passed
    assert o.miss == pytest.approx(0.108 - 1.20 / 5.09 / 2.0)
    (o,) = evaluate(refs, _out({"v.p": 6.0, "nv.p": 10.0}))  # above 2 x 0.236
    assert not o.passed and o.miss > 0


def test_greater_verdict():
    refs = _refs(
        {"k": _num(1.0)},
        [{"name": "g", "rule": "greater", "title": "g", "model": ["late.p_pa", "early.p_pa"],
          "finding": "higher late", "source": CITATION}],
    )  # fmt: skip
    (o,) = evaluate(refs, _out({"late.p_pa": 2.0e6, "early.p_pa": 1.0e6}))
    assert o.passed
    (o,) = evaluate(refs, _out({"late.p_pa": 1.0e6, "early.p_pa": 2.0e6}))
    assert not o.passed


def test_stepped_cannula_newtonian_is_hagen_poiseuille():
    from sim.physics.rheology import CementModel

    water = CementModel.newtonian(1.0)
    for f in (0.0, 0.3, 0.672, 1.0):
        red = stepped_cannula_reduction(water, 1e-6, 2.54e-3, 0.125, 0.0, 2.0, f)
        assert red == pytest.approx(15.0 / 16.0 * f, abs=1e-12)


# ---------------------------------------------------------------------------- bad input: one line


GOOD = {
    "experiment": "bad",
    "citation": CITATION,
    "references": {"a": _num(2.6, 1.2), "b": _num(4.0, 1.2)},
    "checks": RATIO,
}


def _broken(**changes):
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        node = data
        keys = path.split("/")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[keys[-1]]
        elif isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"references/a/sd": KeyError}, "references.a.sd: missing (write null when the paper gives none)"),
        ({"references/a/measured": KeyError}, "references.a.measured: missing"),
        ({"references/a/source": ""}, "references.a.source"),
        ({"references/b/sd": "abc"}, 'references.b.sd = "abc"'),
        ({"references/b/value": True}, "references.b.value = true"),
        ({"references/b/units": "psi"}, 'references.b.units = "psi"'),
        ({"references/a/colour": "red"}, "unknown key 'references.a.colour'"),
        ({"checks/0/rule": "nearby"}, 'checks[0].rule = "nearby"'),
        ({"checks/0/reference": ["a"]}, "checks[0].reference: rule ratio_sd needs two reference names"),
        ({"checks/0/reference": ["a", "zz"]}, "checks[0].reference: 'zz' is not in references"),
        ({"references/a/sd": None}, "references.a.sd = null: checks[0] (r) propagates the SD"),
        ({"experiment": "other"}, 'experiment = "other": must match the file name'),
    ],
)
def test_bad_reference_file_is_one_line_naming_file_and_field(tmp_path, changes, expect):
    path = tmp_path / f"bad{REFERENCE_SUFFIX}"
    path.write_text(yaml.safe_dump(_broken(**changes)))
    with pytest.raises(ConfigError) as info:
        load_references(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert expect in text, text


def test_good_reference_file_loads(tmp_path):
    path = tmp_path / f"bad{REFERENCE_SUFFIX}"
    path.write_text(yaml.safe_dump(GOOD))
    assert load_references(path).references["a"].sd == 1.2


def test_bad_experiment_config_names_the_field(tmp_path):
    folder = tmp_path / "validation"
    shutil.copytree(validation_dir(), folder)
    spec_path = folder / "reidy2003.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["groups"]["intact"]["cement"]["preset"] = "runny"
    spec_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        plan_suite(["reidy2003"], folder)
    text = str(info.value)
    assert "\n" not in text and str(spec_path) in text and "groups.intact" in text and "cement.preset" in text
    data["groups"]["intact"]["grid"] = {"spacing_mm": 2.0}
    data["groups"]["intact"]["cement"]["preset"] = "medium"
    spec_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"groups\.intact\.grid\.spacing_mm: set the spacing"):
        plan_suite(["reidy2003"], folder)


# ---------------------------------------------------------------------------- the command


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_unknown_experiment_exits_2_in_one_line(tmp_path):
    res = _invoke("report-card", "--only", "habib2010,nosuch", "--out", tmp_path / "rc", "--quiet")
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "unknown experiment 'nosuch'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "rc").exists()


def test_cli_malformed_reference_exits_2_in_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "validation"
    shutil.copytree(validation_dir(), folder)
    ref = folder / f"baroud2005{REFERENCE_SUFFIX}"
    ref.write_text(ref.read_text().replace("    value: 63.0\n", "    value: sixty-three\n"))
    monkeypatch.setattr(refmod, "validation_dir", lambda: folder)
    res = _invoke("report-card", "--only", "baroud2005", "--out", tmp_path / "rc", "--quiet")
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert f"{ref}: references.pressure_reduction.value" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_report_card_baroud_end_to_end(tmp_path):
    out = tmp_path / "rc"
    res = _invoke("report-card", "--only", "baroud2005", "--out", out)
    assert res.exit_code == 0, res.output
    assert "| baroud2005 |" in res.output and "checks pass" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report_card.json", "report_card.md"]
    assert (out / "figures" / "baroud2005.png").stat().st_size > 10_000
    doc = json.loads((out / "report_card.json").read_text())
    (exp,) = doc["experiments"]
    assert exp["experiment"] == "baroud2005" and len(exp["checks"]) == 2
    assert {c["verdict"] for c in exp["checks"]} <= {"PASS", "FAIL"}
    assert doc["checks"] == 2 and doc["passed"] + doc["failed"] == 2
    md = (out / "report_card.md").read_text()
    assert "| experiment | check | published | pce-sim | accepted | verdict |" in md
    assert "figures/baroud2005.png" in md
    assert not any(p.name.startswith(".rc.") for p in tmp_path.iterdir())  # no lock or partial left
    # never silently overwritten: a second run into the folder stops before running, exit 2
    res = _invoke("report-card", "--only", "baroud2005", "--out", out, "--quiet")
    assert res.exit_code == 2 and "exists and is not empty" in res.output
    res = _invoke("report-card", "--only", "baroud2005", "--out", out, "--quiet", "--overwrite")
    assert res.exit_code == 0 and (out / "report_card.md").exists()


def test_docs_describe_every_experiment():
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "validation.md").read_text()
    for name in EXPERIMENTS:
        assert f"`{name}`" in text or name in text
    assert "## Validation" in (root / "README.md").read_text()
