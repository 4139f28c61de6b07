"""PMMA rheology: presets vs their published points, cure, temperature, shear thinning, cannula, kernels."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np
import pytest

from sim.core.config import Scenario
from sim.core.errors import ConfigError
from sim.core.geometry_data import load_geometry_yaml
from sim.core.parameters import CementOverrideParams, RunParameters
from sim.core.units import GAS_CONSTANT
from sim.physics import rheology as rh
from tests.helpers import run_params

POINT_TOLERANCE = 0.05  # relative; the offline fit reaches ~1e-5 (parameters rounded to 6 digits)
PRESET_DATA = load_geometry_yaml("cement.yaml")["presets"]


@pytest.fixture(params=rh.PRESETS)
def preset(request) -> rh.CementModel:
    return rh.load_cement_preset(request.param)


def _power_law_model(n: float, k: float = 200.0) -> rh.CementModel:
    """A pure power law (clips far away, no low-shear plateau, no cure) for analytic checks."""
    return rh.CementModel(
        name=f"power-law n={n}",
        viscosity_ref_pa_s=k,
        reference_time_s=0.0,
        setting_time_s=math.inf,
        divergence_exponent=0.0,
        power_law_n_fresh=n,
        power_law_n_set=n,
        viscosity_min_pa_s=1e-30,
        viscosity_max_pa_s=1e30,
        activation_energy_j_per_mol=0.0,
        reference_temperature_k=294.15,
        shear_rate_floor_per_s=0.0,
    )


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", rh.PRESETS)
def test_presets_hit_their_points(name: str) -> None:
    model = rh.load_cement_preset(name)
    entry = PRESET_DATA[name]
    assert entry["points"], f"preset {name} has no fitted points"
    for p in entry["points"]:
        age = rh.equivalent_age_s(model, p["time_after_mixing_s"], p["temperature_k"])
        eta = float(rh.cement_viscosity(model, p["shear_rate_per_s"], age))
        assert eta == pytest.approx(p["viscosity_pa_s"], rel=POINT_TOLERANCE), (name, p)
        assert p["status"] in ("[S]", "[S~]", "[TB]", "[U]") and p["source"]
    s = entry["setting"]
    assert rh.setting_time_at_s(model, s["temperature_k"]) == pytest.approx(
        s["time_after_mixing_s"], rel=1e-3
    )


def test_preset_classes_are_ordered_at_the_default_injection_time() -> None:
    c = run_params().cement
    assert c.preset == "medium" and c.time_after_mixing_s == 360.0
    etas = {}
    for name in rh.PRESETS:
        m = rh.load_cement_preset(name)
        age = rh.equivalent_age_s(m, c.time_after_mixing_s, c.room_temperature_k)
        etas[name] = float(rh.cement_viscosity(m, 1.0, age))
    assert 10.0 <= etas["low"] < 100.0 <= etas["medium"] < 1000.0 <= etas["high"] < 1.0e4


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ultra"):
        rh.load_cement_preset("ultra")


# ----------------------------------------------------------------------------- cure and temperature


def test_viscosity_increases_with_age(preset: rh.CementModel) -> None:
    ages = np.linspace(0.0, preset.setting_time_s * 1.2, 400)
    for g in (0.0, 0.1, 1.0, 30.0, 1000.0):
        eta = rh.cement_viscosity(preset, g, ages)
        assert np.all(np.diff(eta) >= -1e-12 * eta[1:]), g
    assert rh.cement_viscosity(preset, 1.0, preset.setting_time_s) == preset.viscosity_max_pa_s


def test_setting_halves_from_25_to_37_c(preset: rh.CementModel) -> None:
    t25 = rh.setting_time_at_s(preset, 298.15)
    t37 = rh.setting_time_at_s(preset, 310.15)
    assert t37 / t25 == pytest.approx(0.5, rel=0.01)
    # Independent: the Arrhenius ratio itself.
    ea = preset.activation_energy_j_per_mol
    assert t25 / t37 == pytest.approx(math.exp(ea / GAS_CONSTANT * (1 / 298.15 - 1 / 310.15)), rel=1e-12)


def test_equivalent_age_and_is_set(preset: rh.CementModel) -> None:
    assert rh.age_rate(preset, preset.reference_temperature_k) == 1.0
    assert rh.equivalent_age_s(preset, 300.0, preset.reference_temperature_k) == 300.0
    assert rh.equivalent_age_s(preset, 300.0, 310.15) > 300.0 > rh.equivalent_age_s(preset, 300.0, 290.0)
    assert not rh.is_set(preset, preset.setting_time_s * (1 - 1e-9))
    assert rh.is_set(preset, preset.setting_time_s)
    assert rh.cure_degree(preset, 0.0) == 0.0 and rh.cure_degree(preset, 2 * preset.setting_time_s) == 1.0
    with pytest.raises(ConfigError):
        rh.age_rate(preset, -3.0)


def test_power_law_index_decreases_with_cure(preset: rh.CementModel) -> None:
    n = rh.power_law_index(preset, np.linspace(0, preset.setting_time_s, 50))
    assert n[0] == preset.power_law_n_fresh and n[-1] == pytest.approx(preset.power_law_n_set)
    assert np.all(np.diff(n) <= 0.0)


def test_strength_grows_with_cure(preset: rh.CementModel) -> None:
    ages = np.linspace(0.0, preset.setting_time_s, 500)
    s = rh.cement_strength_pa(preset, ages)
    assert np.all(np.diff(s) >= 0.0)
    assert s[0] == pytest.approx(preset.strength_fresh_pa)
    assert 1e2 <= s[0] <= 1e3
    assert s[-1] == preset.strength_set_pa
    assert 25e6 <= preset.strength_set_pa <= 40e6
    # Before setting, strength tracks consistency: sigma/sigma0 = K/K0 while below the cap.
    mid = 0.5 * preset.setting_time_s
    ratio = rh.consistency_pa_sn(preset, mid) / rh.consistency_pa_sn(preset, 0.0)
    assert rh.cement_strength_pa(preset, mid) == pytest.approx(preset.strength_fresh_pa * ratio, rel=1e-12)


# ----------------------------------------------------------------------------- shear and clipping


def test_shear_thinning_lowers_viscosity(preset: rh.CementModel) -> None:
    age = 0.4 * preset.setting_time_s
    g = np.logspace(-1, 2, 30)
    eta = rh.cement_viscosity(preset, g, age)
    assert np.all(np.diff(eta) < 0.0)
    n = rh.power_law_index(preset, age)
    assert eta[-1] / eta[0] == pytest.approx((g[-1] / g[0]) ** (n - 1.0), rel=1e-12)
    # Below the floor the viscosity is a Newtonian plateau.
    assert rh.cement_viscosity(preset, 1e-3, age) == rh.cement_viscosity(preset, 0.0, age)


def test_viscosity_is_clipped(preset: rh.CementModel) -> None:
    rng = np.random.default_rng(7)
    g = 10.0 ** rng.uniform(-4, 7, 2000)
    a = rng.uniform(0.0, 1.5 * preset.setting_time_s, 2000)
    eta = rh.cement_viscosity(preset, g, a)
    assert np.all(eta >= preset.viscosity_min_pa_s) and np.all(eta <= preset.viscosity_max_pa_s)
    assert rh.cement_viscosity(preset, 1e9, 0.0) == preset.viscosity_min_pa_s
    assert rh.cement_viscosity(preset, 1.0, 2.0 * preset.setting_time_s) == preset.viscosity_max_pa_s


def test_newtonian_is_constant() -> None:
    m = rh.CementModel.newtonian(12.5)
    g = np.array([0.0, 1e-6, 1.0, 1e5])
    for age in (0.0, 1e3, 1e9):
        np.testing.assert_allclose(rh.cement_viscosity(m, g, age), 12.5, rtol=1e-11)
        assert not rh.is_set(m, age)
    p = m.as_array()
    assert rh.viscosity_kernel(0.0, 1e9, p) == pytest.approx(12.5, rel=1e-11)
    with pytest.raises(ConfigError):
        rh.CementModel.newtonian(0.0)


# ----------------------------------------------------------------------------- porous medium


@pytest.mark.parametrize("n", [0.3, 0.5, 0.7, 0.9])
def test_porous_shear_rate_reproduces_christopher_middleman_viscosity(n: float) -> None:
    k, phi, kc = 4e-8, 0.9, 150.0
    u = np.array([1e-6, 1e-4, 1e-2])
    gamma = rh.porous_shear_rate(u, k, phi, n)
    mu_eff = kc * gamma ** (n - 1.0)
    # Christopher & Middleman 1965: mu_eff = (K/12) (9 + 3/n)^n (150 k phi)^((1-n)/2) u^(n-1)
    expected = kc / 12.0 * (9.0 + 3.0 / n) ** n * (150.0 * k * phi) ** ((1.0 - n) / 2.0) * u ** (n - 1.0)
    np.testing.assert_allclose(mu_eff, expected, rtol=1e-12)


def test_porous_shear_rate_is_continuous_at_newtonian_limit() -> None:
    a1 = rh.christopher_middleman_alpha(1.0)
    assert rh.christopher_middleman_alpha(1.0 - 1e-4) == pytest.approx(a1, rel=1e-4)
    assert rh.porous_shear_rate(2e-4, 4e-8, 0.9, 1.0) == pytest.approx(a1 * 2e-4 / math.sqrt(3.6e-8))


# ----------------------------------------------------------------------------- cannula


def test_cannula_newtonian_equals_hagen_poiseuille() -> None:
    mu, q, d, length = 80.0, 5e-8, 2.6e-3, 0.125
    m = rh.CementModel.newtonian(mu)
    hp = 8.0 * mu * length * q / (math.pi * (d / 2) ** 4)
    assert rh.cannula_pressure_drop_pa(m, q, d, length, 100.0) == pytest.approx(hp, rel=1e-11)
    # Power law with n = 1 through the general path.
    pl = _power_law_model(1.0, k=mu)
    assert rh.cannula_pressure_drop_pa(pl, q, d, length, 0.0) == pytest.approx(hp, rel=1e-11)
    assert rh.cannula_pressure_drop_pa(m, 0.0, d, length, 0.0) == 0.0


@pytest.mark.parametrize("n", [0.3, 0.55, 0.8])
def test_cannula_power_law_closed_form_and_q_to_the_n(n: float) -> None:
    m = _power_law_model(n)
    d, length = 2.6e-3, 0.125
    r = d / 2
    for q in (1e-8, 5e-8, 2e-7):
        closed = 2 * m.viscosity_ref_pa_s * length / r * ((3 * n + 1) / n * q / (math.pi * r**3)) ** n
        assert rh.cannula_pressure_drop_pa(m, q, d, length, 0.0) == pytest.approx(closed, rel=1e-8)
    ratio = rh.cannula_pressure_drop_pa(m, 2e-7, d, length, 0.0) / rh.cannula_pressure_drop_pa(
        m, 1e-7, d, length, 0.0
    )
    assert ratio == pytest.approx(2.0**n, rel=1e-8)


def test_cannula_with_clipped_preset_is_bounded_and_monotone(preset: rh.CementModel) -> None:
    d, length = 2.6e-3, 0.125
    r = d / 2
    age = 0.5 * preset.setting_time_s
    qs = np.logspace(-10, -6, 25)
    dp = np.array([rh.cannula_pressure_drop_pa(preset, q, d, length, age) for q in qs])
    assert np.all(np.diff(dp) > 0.0)
    lo = 8 * preset.viscosity_min_pa_s * length * qs / (math.pi * r**4)
    hi = 8 * preset.viscosity_max_pa_s * length * qs / (math.pi * r**4)
    assert np.all(dp >= lo * (1 - 1e-9)) and np.all(dp <= hi * (1 + 1e-9))
    # Flow curve consistency: the wall shear stress is the viscosity at the wall shear rate
    # times that rate; check Q from the Rabinowitsch integral evaluated by quadrature.
    q = 5e-8
    tau_w = rh.cannula_pressure_drop_pa(preset, q, d, length, age) * r / (2 * length)
    gam = np.logspace(-8, 8, 40001)
    tau = rh.cement_viscosity(preset, gam, age) * gam
    g_of_tau = np.interp(
        np.linspace(0, tau_w, 20001), np.concatenate([[0.0], tau]), np.concatenate([[0.0], gam])
    )
    ts = np.linspace(0, tau_w, 20001)
    q_num = math.pi * r**3 / tau_w**3 * np.trapezoid(ts**2 * g_of_tau, ts)
    assert q_num == pytest.approx(q, rel=2e-3)
    # Set cement: Hagen-Poiseuille at eta_max.
    set_dp = rh.cannula_pressure_drop_pa(preset, q, d, length, 2 * preset.setting_time_s)
    assert set_dp == pytest.approx(8 * preset.viscosity_max_pa_s * length * q / (math.pi * r**4), rel=1e-11)


def test_tube_flow_viscosity_gives_the_exact_laminar_drop(preset: rh.CementModel) -> None:
    """Hagen-Poiseuille with the Poiseuille-equivalent viscosity is the exact (Rabinowitsch-Mooney) drop of
    the clipped flow curve, the cannula's, from the low-shear plateau through the power law to eta_min and
    after setting; zero flow gives the plateau; the sign of Q does not matter; arrays broadcast."""
    d, length = 1.6e-3, 0.01
    qs = np.concatenate([[0.0], np.logspace(-14, -3, 45)])
    for frac in (0.0, 0.3, 0.6, 0.9, 0.999, 1.5):
        age = frac * preset.setting_time_s
        mu = rh.tube_flow_viscosity(preset, np.concatenate([qs, -qs]), d, age)
        np.testing.assert_array_equal(mu[: qs.size], mu[qs.size :])
        assert mu[0] == pytest.approx(float(rh.cement_viscosity(preset, 0.0, age)), rel=1e-14)
        tiny = rh.tube_flow_viscosity(preset, np.array([5e-324, 1e-300, 1e-200]), d, age)  # no underflow
        np.testing.assert_allclose(tiny, mu[0], rtol=1e-14)
        exact = np.array([rh.cannula_pressure_drop_pa(preset, q, d, length, age) for q in qs[1:]])
        np.testing.assert_allclose(
            128 * mu[1 : qs.size] * length * qs[1:] / (math.pi * d**4), exact, rtol=1e-11
        )
    # near setting the wall stress is large (ln tau_w > 20): the iteration must still end, on the exact drop
    rng = np.random.default_rng(5)
    for _ in range(300):
        age = rng.uniform(0.9, 0.99999) * preset.setting_time_s
        q, dd = 10 ** rng.uniform(-9, 0), 10 ** rng.uniform(-4, -2)
        mu = float(rh.tube_flow_viscosity(preset, q, dd, age)[()])
        ref = rh.cannula_pressure_drop_pa(preset, q, dd, 1.0, age) * math.pi * dd**4 / (128 * q)
        assert mu == pytest.approx(ref, rel=1e-11)
    for bad_q, bad_d in ((np.nan, d), (np.inf, d), (1e-8, 0.0), (1e-8, np.nan), (1e-8, 1e-300), (1e-8, -d)):
        with pytest.raises(ValueError, match="tube_flow_viscosity"):
            rh.tube_flow_viscosity(preset, bad_q, bad_d, 600.0)
    grid = rh.tube_flow_viscosity(preset, np.full((3, 4), 1e-8), np.array([1e-3, 2e-3, 3e-3, 4e-3]), 600.0)
    assert grid.shape == (3, 4) and np.all(np.diff(grid[0]) > 0.0)  # same Q, wider tube: lower rate


@pytest.mark.parametrize("n", [0.35, 0.6, 1.0])
def test_tube_flow_viscosity_power_law_limit(n: float) -> None:
    """Unclipped power law: mu_P = K ((3n+1)/(4n))^n (8V/d)^(n-1) = eta(gamma_w) (3n+1)/(4n) with gamma_w the
    Rabinowitsch wall rate; so Poiseuille at eta(gamma_w) falls short by (3n+1)/(4n) (1.46 at n = 0.35) and
    at eta(8V/d) by its n-th power. n = 1: the Newtonian viscosity. A Newtonian model gives its viscosity."""
    m = _power_law_model(n)
    q, d = np.logspace(-10, -6, 9), 2.0e-3
    rate_n = 32 * q / (math.pi * d**3)
    c = (3 * n + 1) / (4 * n)
    mu = rh.tube_flow_viscosity(m, q, d, 0.0)
    np.testing.assert_allclose(mu, 200.0 * c**n * rate_n ** (n - 1), rtol=1e-11)
    wall = rh.cement_viscosity(m, rh.tube_wall_shear_rate(q, d, n), 0.0)
    np.testing.assert_allclose(mu / wall, c, rtol=1e-11)
    if n < 1.0:
        assert c > 1.15  # the correction matters at these indices
    np.testing.assert_allclose(
        rh.tube_flow_viscosity(rh.CementModel.newtonian(37.0), q, d, 0.0), 37.0, rtol=1e-13
    )


# ----------------------------------------------------------------------------- numba kernels


def test_kernels_equal_numpy(preset: rh.CementModel) -> None:
    rng = np.random.default_rng(11)
    p = preset.as_array()
    g = np.concatenate([[0.0, 1e-9, 0.1, 1.0, 1e6], 10.0 ** rng.uniform(-3, 5, 500)])
    out = np.empty_like(g)
    for age in (0.0, 1.0, 0.3 * preset.setting_time_s, 0.999 * preset.setting_time_s, preset.setting_time_s):
        ref = rh.cement_viscosity(preset, g, age)
        rh.viscosity_field(g, age, p, out)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)
        scalar = np.array([rh.viscosity_kernel(x, age, p) for x in g[:20]])
        np.testing.assert_allclose(scalar, ref[:20], rtol=1e-12, atol=0)
    # the field listed on the cells with a nonzero rate is bit for bit the whole field (zero shear
    # elsewhere), whatever the stale values the output held before
    whole = np.where(rng.random(g.size) < 0.6, 0.0, g)
    cells = np.flatnonzero(whole)
    for age in (0.0, 0.3 * preset.setting_time_s, preset.setting_time_s):
        rh.viscosity_field(whole, age, p, out)
        sparse = rng.uniform(1.0, 2.0, g.size)
        rh.viscosity_field_sparse(cells, whole[cells], age, p, sparse)
        assert np.array_equal(sparse, out)
    ages = np.linspace(0, 1.1 * preset.setting_time_s, 200)
    s_ref = rh.cement_strength_pa(preset, ages)
    s_k = np.array([rh.strength_kernel(a, p) for a in ages])
    np.testing.assert_allclose(s_k, s_ref, rtol=1e-12, atol=0)


def test_as_array_layout(preset: rh.CementModel) -> None:
    p = preset.as_array()
    assert p.dtype == np.float64 and p.shape == (rh.N_PARAMS,)
    assert p[rh.P_K_REF] == preset.viscosity_ref_pa_s and p[rh.P_T_SET] == preset.setting_time_s
    assert p[rh.P_STRENGTH_SET] == preset.strength_set_pa and p[rh.P_DENSITY] == preset.density_kg_per_m3


# ----------------------------------------------------------------------------- configuration


def test_overrides_from_config_replace_preset_values() -> None:
    scen = Scenario.model_validate(
        {
            "cement": {
                "preset": "high",
                "overrides": {
                    "viscosity_ref_pa_s": 999.0,
                    "setting_time_min": 20.0,
                    "activation_energy_kj_per_mol": 50.0,
                    "power_law_n_set": 0.2,
                },
            }
        }
    )
    base = rh.load_cement_preset("high")
    m = rh.CementModel.from_params(RunParameters.from_scenario(scen).cement)
    assert m.viscosity_ref_pa_s == 999.0
    assert m.setting_time_s == 1200.0
    assert m.activation_energy_j_per_mol == 50000.0
    assert m.power_law_n_set == 0.2
    assert m.power_law_n_fresh == base.power_law_n_fresh  # None keeps the preset's value
    assert m.viscosity_max_pa_s == base.viscosity_max_pa_s
    assert rh.CementModel.from_params(run_params().cement) == rh.load_cement_preset("medium")


def test_inconsistent_overrides_name_the_field() -> None:
    cement = run_params().cement
    none = CementOverrideParams(**{f.name: None for f in fields(CementOverrideParams)})

    def model(**overrides):
        return rh.CementModel.from_params(replace(cement, overrides=replace(none, **overrides)))

    with pytest.raises(ConfigError, match="power_law_n_set"):
        model(power_law_n_set=0.9, power_law_n_fresh=0.5)
    with pytest.raises(ConfigError, match="reference_time_s"):
        model(reference_time_s=5000.0)
    # an override no cement field has (typed parameters cannot carry one; a plain dict can)
    with pytest.raises(ConfigError, match="bogus"):
        rh.load_cement_preset(cement.preset).with_overrides({"bogus": 1.0})
    with pytest.raises(ConfigError, match="viscosity_min_pa_s"):
        replace(rh.load_cement_preset("low"), viscosity_min_pa_s=1e6)


def test_fit_preset_recovers_known_parameters() -> None:
    truth = rh.load_cement_preset("medium")
    pts = [
        {
            "time_after_mixing_s": t,
            "temperature_k": 296.15,
            "shear_rate_per_s": 2.0,
            "viscosity_pa_s": float(rh.cement_viscosity(truth, 2.0, rh.equivalent_age_s(truth, t, 296.15))),
        }
        for t in (60.0, 200.0, 400.0, 600.0, 750.0)
    ]
    start = replace(truth, viscosity_ref_pa_s=50.0, divergence_exponent=1.0, exponential_rate_per_s=0.004)
    fitted, rel = rh.fit_preset(start, pts)
    assert np.max(np.abs(rel)) < 1e-6
    assert fitted.viscosity_ref_pa_s == pytest.approx(truth.viscosity_ref_pa_s, rel=1e-4)
    assert fitted.divergence_exponent == pytest.approx(truth.divergence_exponent, rel=1e-3)


def test_cannula_drop_on_the_newtonian_clip_does_not_lose_its_bracket():
    """Issue 14: high preset, 15 min after mixing, pressure mode: the wall stress sits on the eta_max
    bound, where exp(log(tau)) != tau made brentq see no sign change and raise."""
    import math

    from sim.physics.rheology import cannula_pressure_drop_pa, load_cement_preset

    model = load_cement_preset("high")
    q, d, length, age = 2.178630681412737e-10, 0.00254, 0.125, 926.8480727205015
    dp = cannula_pressure_drop_pa(model, q, d, length, age)
    hagen_poiseuille = 8.0 * model.viscosity_max_pa_s * length * q / (math.pi * (0.5 * d) ** 4)
    assert dp == pytest.approx(hagen_poiseuille, rel=1e-9)


@pytest.mark.parametrize("name", ["low", "medium", "high"])
def test_cannula_drop_of_vanishing_flows_is_the_plateau_hagen_poiseuille(name: str) -> None:
    """Flows far below the plateau (down to the smallest denormal) give the plateau viscosity's
    Hagen-Poiseuille drop, linear in Q, and no ZeroDivisionError (tau_w**3 underflowed below
    ~1e-107 m^3/s)."""
    model = rh.load_cement_preset(name)
    d, length, age = 2.6e-3, 0.125, 0.5 * model.setting_time_s
    r = d / 2
    eta_plateau = float(rh.cement_viscosity(model, np.array([0.0]), age)[0])
    for q in (1e-12 * model.shear_rate_floor_per_s * r**3, 1e-120, 1e-300, 5e-324):
        hp = 8.0 * eta_plateau * length * q / (math.pi * r**4)
        dp = rh.cannula_pressure_drop_pa(model, q, d, length, age)
        # Denormal results keep only a few significant digits.
        assert dp == pytest.approx(hp, rel=1e-12 if hp > 1e-300 else 1e-3)
        assert rh.cannula_pressure_drop_pa(model, -q, d, length, age) == -dp
