"""Scenario validation, unit conversion and error messages."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.core.config import DEFAULT_SPACING_MM, Scenario, load_scenario, scenario_from_dict
from sim.core.errors import ConfigError
from sim.core.units import MMHG_PA, si_name, to_si


def test_default_config_file_validates_and_matches_model_defaults():
    s = load_scenario("configs/default.yaml")
    assert s.patient.level == "L1"
    assert s.injection.stop_after_leak_s == 0


def test_round_trip_through_yaml(tmp_path):
    s = load_scenario("configs/default.yaml")
    path = tmp_path / "rt.yaml"
    path.write_text(yaml.safe_dump(s.model_dump(mode="json")))
    s2 = load_scenario(path)
    assert s2 == s
    assert s2.content_hash() == s.content_hash()


def test_content_hash_changes_with_any_field():
    a = Scenario()
    b = Scenario.model_validate({"injection": {"volume_ml": 4.5}})
    assert a.content_hash() != b.content_hash()


def test_si_conversion_of_clinical_fields():
    si = Scenario.model_validate(
        {"injection": {"volume_ml": 3.0, "rate_ml_per_s": 0.1}, "veins": {"cvp_mmhg": 6.0}}
    ).si()
    assert si["injection"]["volume_m3"] == pytest.approx(3.0e-6)
    assert si["injection"]["rate_m3_per_s"] == pytest.approx(1.0e-7)
    assert si["veins"]["cvp_pa"] == pytest.approx(6.0 * MMHG_PA)
    assert si["cement"]["time_after_mixing_s"] == pytest.approx(360.0)
    assert si["cement"]["body_temperature_k"] == pytest.approx(310.15)
    assert si["grid"]["spacing_m"] == pytest.approx(DEFAULT_SPACING_MM * 1.0e-3)
    assert si["veins"]["cardiac_output_m3_per_s"] == pytest.approx(5.0e-3 / 60.0)
    assert si["injection"]["stop_after_leak_s"] == 0.0


def test_si_names_and_none_passthrough():
    assert si_name("volume_ml") == "volume_m3"
    assert si_name("rate_ml_per_s") == "rate_m3_per_s"
    assert si_name("porosity_mean") == "porosity_mean"
    assert to_si({"max_duration_s": None, "x_mm": None}) == {"max_duration_s": None, "x_m": None}


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"patient": {"porosity_mean": 1.3}}, ["patient.porosity_mean", "1.3", "<= 0.99"]),
        ({"injection": {"volume_ml": -1}}, ["injection.volume_ml", "-1", "> 0"]),
        ({"patient": {"levl": "L1"}}, ["unknown key", "patient.levl", "level"]),
        ({"pateint": {}}, ["unknown key", "pateint"]),
        ({"patient": {"level": "C3"}}, ["patient.level", "C3", "T5"]),
        ({"grid": {"spacing_mm": "fine"}}, ["grid.spacing_mm", "fine", "number"]),
        ({"injection": {"stop_after_leak_s": -5}}, ["injection.stop_after_leak_s", "-5", "or null"]),
        ({"cement": {"preset": "super"}}, ["cement.preset", "low", "high"]),
        ({"patient": {"vein_kernel_radius_mm": 1.5}}, ["patient.vein_kernel_radius_mm", "1.5", ">= 2"]),
    ],
)
def test_bad_values_name_field_value_and_allowed(data, fragments):
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(data, source="x.yaml")
    msg = str(info.value)
    assert msg.startswith("x.yaml: ")
    for frag in fragments:
        assert frag in msg


def test_missing_file_and_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("patient: {level: L1\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_scenario(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_scenario(notmap)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_sections = st.sampled_from(
    ["patient", "cement", "needle", "injection", "grid", "veins", "lungs", "output", "bogus"]
)
_keys = st.sampled_from(
    ["level", "porosity_mean", "volume_ml", "rate_ml_per_s", "spacing_mm", "seed", "preset", "gauge", "typo"]
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_sections, st.one_of(_leaf, st.dictionaries(_keys, _leaf, max_size=4)), max_size=4))
def test_random_configs_either_validate_or_raise_config_error(data):
    try:
        s = scenario_from_dict(data)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    # anything accepted must be fully finite where it matters
    assert math.isfinite(s.injection.volume_ml)


def test_vein_kernel_radius_reaches_the_stages_and_keeps_old_hashes_at_its_default():
    """Left out of the dump at its 2 mm default (scenarios written before the field keep their content
    hash), but always in the stages' SI parameters; any other value is dumped and hashed."""
    default = scenario_from_dict({}, source="x.yaml")
    assert "vein_kernel_radius_mm" not in default.model_dump(mode="json")["patient"]
    assert default.si()["patient"]["vein_kernel_radius_m"] == pytest.approx(2.0e-3)
    wide = scenario_from_dict({"patient": {"vein_kernel_radius_mm": 3.0}}, source="x.yaml")
    assert wide.model_dump(mode="json")["patient"]["vein_kernel_radius_mm"] == 3.0
    assert wide.si()["patient"]["vein_kernel_radius_m"] == pytest.approx(3.0e-3)
    assert wide.content_hash() != default.content_hash()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("grid:\n  spacing_mm: 0.0010\n", "grid.spacing_mm = 0.0010: "),
        ("grid:\n  spacing_mm: 7.50e+1\n", "grid.spacing_mm = 7.50e+1: "),
        ("grid:\n  spacing_mm: 1e999\n", "grid.spacing_mm = 1e999: "),
        ("grid:\n  spacing_mm: -.inf\n", "grid.spacing_mm = -.inf: "),
        ("injection:\n  volume_ml: 25\n", "injection.volume_ml = 25: "),
        ("output:\n  vtk: 0x1\n", "output.vtk = 0x1: "),
        ("grid:\n  spacing_mm: [1, 2]\n", "grid.spacing_mm = [1, 2]: "),
        # a merge key's pairs come first in the composed mapping; the file's own value is the one read
        ("grid: {<<: {spacing_mm: -0.10}, spacing_mm: -0.2000}\n", "grid.spacing_mm = -0.2000: "),
        ("output: {<<: {vtk: yes}, vtk: 1}\n", "output.vtk = 1: "),
        ("grid: {<<: {spacing_mm: -0.10}}\n", "grid.spacing_mm = -0.10: "),
        ("grid:\n  spacing_mm:\n", "grid.spacing_mm = null: "),  # an empty value has no text of its own
    ],
)
def test_error_messages_print_the_value_as_written(tmp_path, text, shown):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert f"{path}: {shown}" in str(err.value)


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (
            "010",
            "injection.follow_up_s = 010: YAML 1.1 reads a leading zero as octal (= 8); write the number",
        ),
        ("-010", "= -010: YAML 1.1 reads a leading zero as octal (= -8)"),
        ("1:00", "injection.follow_up_s = 1:00: YAML 1.1 reads this as base 60 (= 60); write the number"),
        ("1:30.5", "= 1:30.5: YAML 1.1 reads this as base 60 (= 90.5)"),
        ("09", "Input should be a number: write it without the leading zero"),
    ],
)
def test_yaml_11_numbers_that_read_as_another_value_are_refused(tmp_path, value, expect):
    """`010` was read as 8 s, `1:00` as 60 s, silently; `09` (text to YAML 1.1) was told to lose quotes it
    never had."""
    path = tmp_path / "s.yaml"
    path.write_text(f"injection:\n  follow_up_s: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert expect in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    "value",
    ["!!int '010'", "!!int '7'", "!!float '0:05'", "!!int '0:02'", '!!bool "on"', "!!null ''", "!!int 7"],
)
def test_a_tag_that_turns_a_value_into_a_number_or_switch_is_refused(tmp_path, value):
    """`!!int '010'` was read as 8, `!!float '0:05'` as 300 s, `!!bool 'on'` as true, past the rules for
    quoted numbers, switches and YAML 1.1 numbers; `!!int '0:02'` gave a Python ValueError with no field."""
    path = tmp_path / "s.yaml"
    path.write_text(f"injection:\n  follow_up_s: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    text = str(err.value)
    assert f"injection.follow_up_s = {value}: a tag that makes a value a number, a switch or null" in text
    assert len(text.splitlines()) == 1


def test_a_string_tag_stays_text():
    from sim.core.safe_yaml import load_yaml_text

    assert load_yaml_text("a: !!str 5\nb: [!!str x]\n", "f.yaml") == {"a": "5", "b": ["x"]}


@pytest.mark.parametrize(("value", "read"), [("0x1F", 31), ("0b101", 5), ("0", 0), ("00", 0), ("10", 10)])
def test_explicit_and_plain_integers_are_kept(value, read):
    from sim.core.safe_yaml import load_yaml_text

    assert load_yaml_text(f"a: {value}\n", "f.yaml") == {"a": read}


def test_a_value_that_did_not_come_from_the_file_is_not_shown_as_the_files_text():
    from sim.core.config import format_validation_error
    from sim.core.safe_yaml import load_yaml_text

    literals: dict = {}
    data = load_yaml_text("grid:\n  spacing_mm: 0.0010\n", "f.yaml", literals)
    assert literals[("grid", "spacing_mm")][0] == "0.0010"
    data["grid"]["spacing_mm"] = 0.001  # an override: equal in value, another object, not read from the file
    try:
        Scenario.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - the ValidationError
        message = format_validation_error(exc, "f.yaml", literals=literals)
    assert "spacing_mm = 0.001: " in message
    data["grid"]["spacing_mm"] = 5  # a different value at the same path
    try:
        Scenario.model_validate(data)
    except Exception as exc:  # noqa: BLE001
        message = format_validation_error(exc, "f.yaml", literals=literals)
    assert "spacing_mm = 5: " in message


def test_a_long_value_keeps_its_head_and_tail(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("grid:\n  spacing_mm: 0." + "0" * 80 + "17\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    shown = str(err.value).split(" = ")[1].split(": ")[0]
    assert shown.startswith("0.000") and shown.endswith("0017 (84 characters)") and "..." in shown
