"""The one cure clock (syringe and patient ages) and the operator's side: stop policy, injection control."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.core.errors import ConfigError
from sim.core.parameters import StopPolicyParams
from sim.core.units import GAS_CONSTANT
from sim.physics import rheology
from sim.physics.cure_clock import AgePool, CureClock
from sim.physics.injection_control import InjectionControl, StopPolicy
from sim.physics.rheology import load_cement_preset

ROOM_K, BODY_K = 294.15, 310.15


def arrhenius(ea: float, t_ref: float, t: float) -> float:
    """da/dt = exp(-Ea/R (1/T - 1/T_ref)), the maturity method's age rate."""
    return math.exp(-ea / GAS_CONSTANT * (1.0 / t - 1.0 / t_ref))


def clock(**kw) -> CureClock:
    cem = load_cement_preset(kw.pop("preset", "medium"))
    return CureClock.for_cement(cem, kw.pop("mixed_s", 240.0), kw.pop("room", ROOM_K), kw.pop("body", BODY_K))


# ----------------------------------------------------------------------------- clock


@pytest.mark.parametrize("preset", ["low", "medium", "high"])
def test_clock_rates_are_the_rheology_age_rates(preset):
    """CureClock.for_cement: rates = rheology.age_rate at room and body temperature = Arrhenius."""
    cem = load_cement_preset(preset)
    c = CureClock.for_cement(cem, 300.0, ROOM_K, BODY_K)
    assert c.room_rate == rheology.age_rate(cem, ROOM_K)
    assert c.body_rate == rheology.age_rate(cem, BODY_K)
    ea, t_ref = cem.activation_energy_j_per_mol, cem.reference_temperature_k
    assert c.room_rate == pytest.approx(arrhenius(ea, t_ref, ROOM_K), rel=1e-14)
    assert c.body_rate == pytest.approx(arrhenius(ea, t_ref, BODY_K), rel=1e-14)
    assert c.age_at_start_s == pytest.approx(300.0 * arrhenius(ea, t_ref, ROOM_K), rel=1e-14)
    assert c.body_rate > c.room_rate  # cement cures faster in the body


def test_setting_time_halves_between_25_and_37_celsius():
    """Ea = R ln2 / (1/298.15 - 1/310.15) = 44.4 kJ/mol: the age rate doubles from 25 to 37 C."""
    c = clock(room=298.15, body=310.15)
    assert c.body_rate / c.room_rate == pytest.approx(2.0, rel=1e-3)


def test_syringe_age_is_linear_at_the_room_rate():
    """a_syr(t) = a_0 + r_room t; at reference temperature r = 1 (age = wall time)."""
    c = clock()
    for t in (0.0, 1.0, 37.5, 600.0):
        assert c.syringe_age_s(t) == c.age_at_start_s + c.room_rate * t
    cem = load_cement_preset("medium")
    at_ref = CureClock.for_cement(cem, 120.0, cem.reference_temperature_k, BODY_K)
    assert at_ref.room_rate == 1.0 and at_ref.syringe_age_s(30.0) == 150.0
    assert c.aged_in_body_s(400.0, 50.0) == 400.0 + c.body_rate * 50.0


# ----------------------------------------------------------------------------- pools


def test_empty_pool_reports_the_syringe_age():
    """Before any cement arrives a pool's age is the syringe's."""
    c = clock()
    pool = AgePool(c)
    for t in (0.0, 12.0, 300.0):
        assert pool.age_s(t) == c.syringe_age_s(t)


def test_pool_that_receives_nothing_more_ages_at_the_body_rate():
    """After its last arrival a pool ages at r_body: a(t) = a_in + r_body (t - t_in)."""
    c = clock()
    pool = AgePool(c)
    pool.mix_in(2e-7, 500.0, 10.0)
    for t in (10.0, 11.0, 100.0, 1000.0):
        assert pool.age_s(t) == pytest.approx(500.0 + c.body_rate * (t - 10.0), rel=1e-14)
    ages = [pool.age_s(t) for t in np.linspace(10.0, 400.0, 40)]
    assert np.diff(ages) == pytest.approx(np.full(39, c.body_rate * 10.0), rel=1e-10)


@pytest.mark.parametrize("uneven", [False, True])
def test_pool_fed_from_the_syringe_holds_the_volume_weighted_mean_age(uneven):
    """Parcel i (volume v_i, leaving the syringe at t_i) has age a_0 + r_room t_i + r_body (T - t_i) at T;
    the pool's age is their volume-weighted mean, summed here parcel by parcel."""
    c = clock()
    pool = AgePool(c)
    dt, n = 0.5, 240
    t_in = (np.arange(n) + 0.5) * dt
    vol = np.full(n, 5e-8 * dt)
    if uneven:
        vol *= np.random.default_rng(3).uniform(0.2, 2.0, n)
    for t, v in zip(t_in, vol, strict=True):
        pool.mix_in(float(v), c.syringe_age_s(float(t)), float(t))
    assert pool.volume_m3 == pytest.approx(vol.sum(), rel=1e-13)
    for t_now in (n * dt, n * dt + 60.0):
        parcel_age = c.age_at_start_s + c.room_rate * t_in + c.body_rate * (t_now - t_in)
        assert pool.age_s(t_now) == pytest.approx(np.sum(vol * parcel_age) / vol.sum(), rel=1e-12)
    if not uneven:  # constant rate over [0, T]: mean age a_0 + (r_room + r_body) T / 2
        big_t = n * dt
        assert pool.age_s(big_t) == pytest.approx(
            c.age_at_start_s + 0.5 * (c.room_rate + c.body_rate) * big_t, rel=1e-12
        )


def test_remove_keeps_the_mean_age_and_clamps_at_empty():
    """Taking cement out (a leak) changes the volume, not the mean age of what stays."""
    c = clock()
    pool = AgePool(c)
    pool.mix_in(1e-6, 300.0, 0.0)
    pool.mix_in(3e-6, 500.0, 20.0)
    before = pool.age_s(30.0)
    pool.remove(1.5e-6)
    assert pool.volume_m3 == pytest.approx(2.5e-6, rel=1e-14)
    assert pool.age_s(30.0) == before
    # what arrives after the removal mixes with the remaining volume only
    pool.mix_in(2.5e-6, 100.0, 30.0)
    assert pool.age_s(30.0) == pytest.approx(0.5 * (before + 100.0), rel=1e-13)
    pool.remove(1.0)
    assert pool.volume_m3 == 0.0


def test_holds_sets_the_volume_that_later_arrivals_mix_with():
    """holds(V) fixes the volume; a later arrival of V at age a moves the mean half way to a."""
    c = clock()
    pool = AgePool(c)
    pool.mix_in(1e-6, 200.0, 0.0)
    pool.holds(3e-6)
    assert pool.volume_m3 == 3e-6
    old = pool.age_s(5.0)
    pool.mix_in(3e-6, 800.0, 5.0)
    assert pool.age_s(5.0) == pytest.approx(0.5 * (old + 800.0), rel=1e-13)


# ----------------------------------------------------------------------------- stop policy


def test_stop_policy_never_stops_without_a_detection():
    """No leak seen: no stop time and no stop, whatever the delays."""
    policy = StopPolicy(stop_after_leak_s=0.0, reaction_delay_s=2.0)
    assert policy.stop_time_s(None) is None
    assert not any(policy.should_stop(t, None) for t in (0.0, 10.0, 1e9))


def test_stop_policy_never_stops_when_told_to_inject_everything():
    """stop_after_leak_s = None: the whole planned volume is injected even after a leak."""
    policy = StopPolicy(stop_after_leak_s=None, reaction_delay_s=2.0)
    assert policy.stop_time_s(12.0) is None
    assert not any(policy.should_stop(t, 12.0) for t in (12.0, 14.0, 1e9))


@pytest.mark.parametrize("det,react,after", [(12.3, 1.7, 0.0), (40.0, 0.0, 15.0), (7.1, 2.9, 30.25)])
def test_stop_policy_stops_exactly_at_detection_plus_reaction_plus_delay(det, react, after):
    """stop = detection + reaction delay + stop_after_leak_s: not one ulp before, yes at and after."""
    policy = StopPolicy(after, react)
    stop = det + react + after
    assert policy.stop_time_s(det) == stop
    assert not policy.should_stop(np.nextafter(stop, -np.inf), det)
    assert policy.should_stop(stop, det)
    assert policy.should_stop(stop + 1.0, det)
    assert not policy.should_stop(det, det)  # seen, but the operator has not stopped yet


def test_stop_policy_from_params():
    """from_params reads the run's stop parameters field for field."""
    p = StopPolicyParams(stop_after_leak_s=5.0, reaction_delay_s=1.5)
    assert StopPolicy.from_params(p) == StopPolicy(5.0, 1.5)
    assert StopPolicy.from_params(p).stop_time_s(10.0) == 16.5


# ----------------------------------------------------------------------------- injection control


def test_default_injection_control_is_valid():
    """The defaults (rate mode, 3 ml/min, 4 ml, 10 MPa) pass validation, and so does pressure mode."""
    InjectionControl().validate()
    InjectionControl(mode="pressure", max_duration_s=120.0).validate()
    InjectionControl(max_syringe_pressure_pa=None).validate()


@pytest.mark.parametrize(
    "change,field",
    [
        ({"mode": "volume"}, "mode"),
        ({"rate_m3_per_s": 0.0}, "rate_m3_per_s"),
        ({"rate_m3_per_s": -1e-8}, "rate_m3_per_s"),
        ({"rate_m3_per_s": math.inf}, "rate_m3_per_s"),
        ({"rate_m3_per_s": math.nan}, "rate_m3_per_s"),
        ({"target_volume_m3": 0.0}, "target_volume_m3"),
        ({"target_volume_m3": math.inf}, "target_volume_m3"),
        ({"max_duration_s": 0.0}, "max_duration_s"),
        ({"max_duration_s": -5.0}, "max_duration_s"),
        ({"max_duration_s": math.nan}, "max_duration_s"),
        ({"max_syringe_pressure_pa": 0.0}, "max_syringe_pressure_pa"),
        ({"max_syringe_pressure_pa": -1.0}, "max_syringe_pressure_pa"),
        ({"mode": "pressure", "max_syringe_pressure_pa": None}, "max_syringe_pressure_pa"),
    ],
)
def test_injection_control_rejects_each_bad_field_by_name(change, field):
    """validate() raises a ConfigError that names the offending field."""
    with pytest.raises(ConfigError, match=rf"^InjectionControl\..*\b{field}\b"):
        InjectionControl(**change).validate()
