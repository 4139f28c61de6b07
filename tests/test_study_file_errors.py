"""Sweep and cohort files are held to the scenario's rules (fuzz pass, session 27): a boolean is not a
number, every error line prints the value as written, and paths are the user's (no pydantic union
labels such as ``ct`` or ``float``); a value that fails every branch of a union gets one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sim.cli import app

ROOT = Path(__file__).resolve().parents[1]
BASE = f"base: {ROOT / 'configs' / 'default.yaml'}\n"


def refused(tmp_path: Path, command: str, text: str) -> str:
    path = tmp_path / f"{command}.yaml"
    path.write_text(text)
    if command == "validate":
        args = [command, str(path)]
    else:
        args = [command, str(path), "--out", str(tmp_path / "out"), "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "out").exists()
    return res.stderr


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("replicates: true\n", "replicates = true: Input should be a number, not a boolean"),
        ("seed: false\n", "seed = false: Input should be a number, not a boolean"),
        ("executor: {workers: true}\n", "executor.workers = true: Input should be a number, not a boolean"),
        ("replicates: abc\n", 'replicates = "abc": Input should be a valid integer'),
        ("method: sobol\n", 'method = "sobol": Input should be'),
    ],
)
def test_sweep_file_errors_print_the_value_and_refuse_booleans(
    tmp_path: Path, text: str, expect: str
) -> None:
    body = "name: fz\n" + BASE + "parameters: {injection.volume_ml: {values: [0.3]}}\n" + text
    err = refused(tmp_path, "sweep", body)
    assert expect in err and err.count("\n") == 1, err


def test_sweep_unknown_key_names_the_parameter_specs_keys(tmp_path: Path) -> None:
    body = "name: fz\n" + BASE + "parameters: {injection.volume_ml: {values: [0.3], typo: 1}}\n"
    err = refused(tmp_path, "sweep", body)
    assert "unknown key 'parameters.injection.volume_ml.typo' (known keys here: values, range, scale" in err


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("n: true\npolicies: [{name: a}]\n", "n = true: Input should be a number, not a boolean"),
        (
            "policies: [{name: a, stop_after_leak_s: true}]\n",
            "policies.0.stop_after_leak_s = true: Input should be a number, not a boolean",
        ),
        (
            "policies: [{name: a}]\n"
            "distributions: {injection.volume_ml: {dist: uniform, low: true, high: 2}}\n",
            "distributions.injection.volume_ml.low = true: Input should be a number, not a boolean",
        ),
    ],
)
def test_cohort_file_refuses_booleans_for_numbers(tmp_path: Path, text: str, expect: str) -> None:
    err = refused(tmp_path, "cohort", "name: c\n" + BASE + text)
    assert expect in err, err


def test_a_union_value_gets_one_line_with_each_branchs_message(tmp_path: Path) -> None:
    err = refused(tmp_path, "cohort", "name: c\n" + BASE + "policies: [{name: a, stop_after_leak_s: soon}]\n")
    assert err.count("\n") == 1, err
    assert 'policies.0.stop_after_leak_s = "soon": Input should be a valid number' in err
    assert "or Input should be 'sampled'" in err and ".float" not in err and "literal" not in err


@pytest.mark.parametrize(
    ("text", "expect", "lines"),
    [
        (
            "{ct_path: a.nii, labels_path: b.nii, vertebra_label: 1, typo: 2}",
            "unknown key 'patient.anatomy.typo' (known keys here: ct_path, labels_path",
            1,
        ),
        ("{ct_pth: a.nii}", "patient.anatomy: required key 'ct_path' is missing", 4),
        ("ct", "patient.anatomy = \"ct\": Input should be 'parametric' (or a mapping with keys ct_path", 1),
    ],
)
def test_ct_anatomy_errors_name_the_fields_as_written(
    tmp_path: Path, text: str, expect: str, lines: int
) -> None:
    err = refused(tmp_path, "validate", f"patient: {{anatomy: {text}}}\n")
    assert expect in err and "anatomy.ct." not in err and "anatomy.parametric" not in err, err
    assert err.count("\n") == lines, err


def test_an_unknown_key_in_a_list_entry_lists_the_entrys_keys(tmp_path: Path) -> None:
    err = refused(
        tmp_path, "validate", "veins: {dynamics: {events: [{kind: cough, start_s: 1, bogus: 1}]}}\n"
    )
    assert "unknown key 'veins.dynamics.events.0.bogus' (known keys here: kind, start_s" in err


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ("{kind: sneeze, start_s: 1}", 'veins.dynamics.events.0.kind = "sneeze": Input should be'),
        ("{start_s: 1}", "veins.dynamics.events.0: required key 'kind' is missing"),
        ("{kind: [a], start_s: 1}", 'veins.dynamics.events.0.kind = ["a"]: Input should be'),
    ],
)
def test_an_event_with_a_bad_kind_gets_one_line(tmp_path: Path, entry: str, expect: str) -> None:
    """The fields a kind defaults (duration, thoracic and abdominal pressure) are not also reported
    missing when the kind itself is the problem (fuzzing found three extra lines)."""
    err = refused(tmp_path, "validate", f"veins: {{dynamics: {{events: [{entry}]}}}}\n")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0]
    both = refused(tmp_path, "validate", "veins: {dynamics: {events: [{kind: sneeze, start_s: -1}]}}\n")
    assert len(both.strip().splitlines()) == 2 and "start_s = -1" in both  # a real second problem stays


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("output: {vtk: 'yes'}\n", 'output.vtk = "yes": Input should be true or false'),
        ("output: {vtk: 0}\n", "output.vtk = 0: Input should be true or false"),
        (
            "grid: {spacing_mm: '1.0'}\n",
            'grid.spacing_mm = "1.0": Input should be a number, not a quoted string',
        ),
        ("grid: {spacing_mm: abc}\n", 'grid.spacing_mm = "abc": Input should be a valid number'),
    ],
)
def test_values_keep_their_yaml_type(tmp_path: Path, text: str, expect: str) -> None:
    """A flag takes true or false only, a number no quoted string (pydantic's lax mode took both)."""
    err = refused(tmp_path, "validate", text)
    assert expect in err and err.count("\n") == 1, err


def test_a_text_alternative_still_takes_its_words(tmp_path: Path) -> None:
    from sim.studies.cohort import cohort_from_dict

    spec = cohort_from_dict(
        {"name": "c", "base": str(ROOT / "configs" / "default.yaml"),
         "policies": [{"name": "a", "stop_after_leak_s": "sampled"}]},
        source="c.yaml",
    )  # fmt: skip
    assert spec.policies[0].stop_after_leak_s == "sampled"


@pytest.mark.parametrize("command", ["sweep", "cohort"])
@pytest.mark.parametrize(
    ("base", "expect"), [(".", "is a directory"), ("nofile.yaml", "config file not found")]
)
def test_an_unreadable_base_is_named_as_base(tmp_path: Path, command: str, base: str, expect: str) -> None:
    extra = (
        "parameters: {injection.volume_ml: {values: [0.3]}}\n"
        if command == "sweep"
        else "policies: [{name: a}]\n"
    )
    err = refused(tmp_path, command, f"name: b\nbase: {base}\n{extra}")
    assert f'{command}.yaml: base = "{base}": ' in err and expect in err and err.count("\n") == 1, err


def test_exponent_numbers_are_numbers_and_quoted_ones_are_not(tmp_path: Path) -> None:
    """YAML 1.2 floats without a dot or a signed exponent (4e-8, 7.5e4, 1E5) are read as numbers (PyYAML's
    YAML 1.1 read them as strings, which the quoted-number rule then refused)."""
    from sim.core.config import load_scenario
    from sim.core.safe_yaml import load_yaml_text

    doc = load_yaml_text("a: 4e-8\nb: 7.5e4\nc: 1e+4\nd: 1E5\ne: '4e-8'\nf: 123\ng: .5e3\nh: 1e\n", "x.yaml")
    assert doc == {"a": 4e-8, "b": 7.5e4, "c": 1e4, "d": 1e5, "e": "4e-8", "f": 123, "g": 500.0, "h": "1e"}
    assert type(doc["f"]) is int
    path = tmp_path / "s.yaml"
    path.write_text(
        "patient: {permeability_ref_m2: 4e-8}\ncement: {overrides: {viscosity_max_pa_s: 7.5e4}}\n"
    )
    scenario = load_scenario(path)
    assert scenario.patient.permeability_ref_m2 == 4e-8
    err = refused(tmp_path, "validate", "patient: {permeability_ref_m2: '4e-8'}\n")
    assert 'patient.permeability_ref_m2 = "4e-8": Input should be a number, not a quoted string' in err


def test_booleans_inside_number_lists_are_refused(tmp_path: Path) -> None:
    text = "parameters: {injection.volume_ml: {range: [true, 2]}}\nmethod: lhs\nsamples: 2\n"
    err = refused(tmp_path, "sweep", "name: fz\n" + BASE + text)
    assert (
        "parameters.injection.volume_ml.range = [true, 2]: Input should hold numbers, not booleans" in err
    ), err


def test_a_whole_file_check_prints_its_message_not_the_file(tmp_path: Path) -> None:
    err = refused(tmp_path, "cohort", "name: c\n" + BASE + "policies: [{name: a}, {name: a}]\n")
    assert err.startswith("error: ") and "(top level) =" not in err and "{" not in err, err


@pytest.mark.parametrize(
    ("command", "text", "expect"),
    [
        ("sweep", "replicates: 1.50\n", "replicates = 1.50: "),
        ("sweep", "overrides: {grid.spacing_mm: 0.0010}\n", "grid.spacing_mm = 0.0010: "),
        ("sweep", "overrides:\n  grid: {spacing_mm: 7.50e+1}\n", "grid.spacing_mm = 7.50e+1: "),
        ("cohort", "n: 2.50\n", "n = 2.50: "),
        ("cohort", "overrides: {grid.spacing_mm: 0.0010}\n", "grid.spacing_mm = 0.0010: "),
    ],
)
def test_study_files_print_values_and_overrides_as_written(
    tmp_path: Path, command: str, text: str, expect: str
):
    body = {
        "sweep": "parameters:\n  injection.volume_ml: {values: [1, 2]}\n",
        "cohort": "distributions:\n  injection.volume_ml: {dist: uniform, low: 1, high: 2}\n"
        "policies:\n  - {name: stop_at_detection, stop_after_leak_s: 0}\n",
    }[command]
    assert expect in refused(tmp_path, command, BASE + body + text)


def test_a_base_files_value_is_printed_as_written(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("grid:\n  spacing_mm: 0.0010\n")
    text = "base: base.yaml\nparameters:\n  injection.volume_ml: {values: [1, 2]}\n"
    assert "grid.spacing_mm = 0.0010: " in refused(tmp_path, "sweep", text)


@pytest.mark.parametrize("command", ["validate", "sweep", "cohort"])
def test_a_number_below_the_smallest_double_is_refused_not_read_as_zero(tmp_path: Path, command: str) -> None:
    """`1e-400` read as 0 without a word (fuzzing); it is refused with the value as written, while a
    written zero in exponent form and a subnormal number are kept."""
    from sim.core.safe_yaml import load_yaml_text

    text = {
        "validate": "patient: {porosity_sd: 1e-400}\n",
        "sweep": "seed: 2e-400\n",
        "cohort": "seed: 5E-999\n",
    }
    err = refused(tmp_path, command, text[command])
    assert "too small for a double (it would read as 0); write 0 if zero is meant" in err
    assert ("1e-400" in err) or ("2e-400" in err) or ("5E-999" in err)
    assert load_yaml_text("a: 0.0e-5\nb: 1e-310\n", "t") == {"a": 0.0, "b": 1e-310}
