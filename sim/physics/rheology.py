"""PMMA bone-cement rheology: curing, shear-thinning viscosity, temperature and strength.

SI units throughout.

Equivalent age. All cure quantities are functions of the cement's equivalent age ``a``: the
time after mixing it would have needed at the reference temperature ``T_ref`` to reach its
current state. Temperature enters only through the Arrhenius age rate

    da/dt = exp(-Ea/R * (1/T - 1/T_ref)),

the standard maturity (equivalent-age) method for thermally activated curing. ``Ea`` is
calibrated so that the setting time halves between 25 and 37 C, as measured by oscillatory
rheometry for CMW1, Palacos R and Cemex (Nicholas et al. 2007, J Mater Sci Mater Med 18:1407):
Ea = R ln 2 / (1/298.15 - 1/310.15) = 44.4 kJ/mol.

Consistency (Pa s^n, at the shear rate 1/s) grows with age with a gelation-type divergence at
the setting age ``t_set``, optionally times an exponential pre-factor:

    K(a) = K_ref * exp(b (a - t_ref)) * ((t_set - t_ref) / (t_set - a))**p,   a < t_set,

``K_ref`` being the consistency at the reference age ``t_ref``. Divergence of viscosity at a
gel point as (t_gel - t)^-p is the classical gelation scaling (Winter & Chambon 1986); the
exponential term (``b`` = ``exponential_rate_per_s``) represents the near-exponential early
rise of PMMA dough viscosity. For a >= t_set the cement is set (K infinite).

Shear thinning. Power law with an index decreasing linearly with the cure degree
c = clip(a / t_set, 0, 1):  n(a) = n_fresh + (n_set - n_fresh) c.  Moderate pseudoplasticity
that increases during setting is reported by Ferracane & Greener 1981 and Trivedi et al. 2023.

Viscosity:

    eta = clip(K(a) * max(gamma_dot, gamma_floor)**(n(a) - 1), eta_min, eta_max).

``gamma_floor`` (``shear_rate_floor_per_s``) gives a Newtonian plateau below the shear rates
at which bone-cement power laws are measured; without it a pure power law makes resting fresh
cement infinitely viscous. ``eta_max`` = 7.5e4 Pa s by default, the maximum complex viscosity
at the end of cure measured by Nicholas et al. 2007 for all three cements.

Strength (drives fragmentation of venous cement columns). Before setting, the cement is a
dough whose yield/tensile strength is taken to grow in proportion to its consistency,

    sigma(a) = min(sigma_set, sigma_fresh * K(a) / K(0)),   a < t_set;   sigma_set at a >= t_set,

from ``strength_fresh_pa`` (dough yield stress at mixing, 1e2-1e3 Pa) to ``strength_set_pa``
(tensile strength of set PMMA, 25-40 MPa). Both end values and the proportionality to K are
modelling estimates [U]; see geometries/cement.yaml for the numbers and their sources.

Presets ``low``, ``medium``, ``high`` (geometries/cement.yaml) fix t_set, Ea and eta_max from
sources and fit K_ref, p and b (:func:`fit_preset`, least squares in log eta) to the viscosity-time
points recorded in the same file, each tagged [S]/[S~]/[TB]/[U]. Read the caveat there: the
setting times and eta_max are sourced, the viscosity points are class targets, not digitised
curves. ``cure_degree`` is the normalised clock a/t_set, not a chemical conversion. At fixed shear
rate the viscosity rises with age as long as d ln K/da > -ln(gamma) dn/da, true for every preset
up to 1e3 1/s (tested); the age at injection start comes from :func:`equivalent_age_s`.

Porous media: :func:`porous_shear_rate` (Christopher & Middleman 1965). Cannula:
:func:`cannula_pressure_drop_pa` (exact fully developed laminar pipe flow of the clipped power
law, Rabinowitsch-Mooney integral). Numba: :func:`viscosity_kernel`, :func:`strength_kernel`
(scalar, callable from other njit code) and :func:`viscosity_field` take ``model.as_array()``;
the indices of that vector are the ``P_*`` constants below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numba
import numpy as np
from scipy.optimize import brentq

from sim.core.errors import ConfigError
from sim.core.parameters import CementParams
from sim.core.units import GAS_CONSTANT
from sim.physics.laws import register

# Indices of the parameter vector returned by CementModel.as_array().
P_K_REF = 0
P_T_REF = 1
P_T_SET = 2
P_EXPONENT = 3
P_N_FRESH = 4
P_N_SET = 5
P_ETA_MIN = 6
P_ETA_MAX = 7
P_EA = 8
P_T_REF_K = 9
P_DENSITY = 10
P_STRENGTH_FRESH = 11
P_STRENGTH_SET = 12
P_EXP_RATE = 13
P_SHEAR_FLOOR = 14
N_PARAMS = 15

PRESETS = ("low", "medium", "high")
PRESET_FILE = "cement.yaml"

# Fields a scenario's ``cement.overrides`` may replace (SI names, see sim.core.units.to_si).
OVERRIDE_FIELDS = (
    "viscosity_ref_pa_s",
    "reference_time_s",
    "setting_time_s",
    "divergence_exponent",
    "power_law_n_fresh",
    "power_law_n_set",
    "viscosity_min_pa_s",
    "viscosity_max_pa_s",
    "activation_energy_j_per_mol",
    "density_kg_per_m3",
)


@register("rheology", "power_law_cure")
@dataclass(frozen=True)
class CementModel:
    """PMMA cement rheology parameters (SI). See the module docstring for the equations.

    The ``power_law_cure`` rheology law. Limiting cases (tested): n = 1 and no cure is a Newtonian
    fluid (Hagen-Poiseuille in the cannula); viscosity grows monotonically with age at fixed shear.
    """

    name: str
    viscosity_ref_pa_s: float  # K at reference age, shear rate 1/s, T_ref (Pa s^n)
    reference_time_s: float  # t_ref: equivalent age at which K = K_ref
    setting_time_s: float  # t_set: equivalent age at setting (inf = never sets)
    divergence_exponent: float  # p of the gelation divergence
    power_law_n_fresh: float  # n at age 0
    power_law_n_set: float  # n at setting
    viscosity_min_pa_s: float
    viscosity_max_pa_s: float
    activation_energy_j_per_mol: float  # Arrhenius Ea of the age rate
    reference_temperature_k: float  # T_ref of the equivalent age
    density_kg_per_m3: float = 1180.0
    strength_fresh_pa: float = 300.0  # dough yield/tensile strength at mixing
    strength_set_pa: float = 30.0e6  # tensile strength of set PMMA
    exponential_rate_per_s: float = 0.0  # b of the exponential pre-factor of K
    shear_rate_floor_per_s: float = 0.1  # Newtonian plateau below this shear rate

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"cement '{self.name}': {field} = {value}: {why}")

        for f in fields(self):
            if f.name == "name":
                continue
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or math.isnan(v):
                raise bad(f.name, v, "must be a number")
        positive = (
            "viscosity_ref_pa_s",
            "setting_time_s",
            "viscosity_min_pa_s",
            "viscosity_max_pa_s",
            "reference_temperature_k",
            "density_kg_per_m3",
        )
        for name in positive:
            if not getattr(self, name) > 0.0:
                raise bad(name, getattr(self, name), "must be > 0")
        for name in ("reference_time_s", "divergence_exponent", "activation_energy_j_per_mol",
                     "strength_fresh_pa", "exponential_rate_per_s", "shear_rate_floor_per_s"):  # fmt: skip
            if not getattr(self, name) >= 0.0:
                raise bad(name, getattr(self, name), "must be >= 0")
        for name in ("power_law_n_fresh", "power_law_n_set"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise bad(name, v, "must be in (0, 1] (shear-thinning power law)")
        if self.power_law_n_set > self.power_law_n_fresh:
            raise bad(
                "power_law_n_set",
                self.power_law_n_set,
                f"must not exceed power_law_n_fresh = {self.power_law_n_fresh} (thinning grows with cure)",
            )
        if not self.reference_time_s < self.setting_time_s:
            raise bad(
                "reference_time_s",
                self.reference_time_s,
                f"must be below setting_time_s = {self.setting_time_s}",
            )
        if not self.viscosity_min_pa_s < self.viscosity_max_pa_s:
            raise bad(
                "viscosity_min_pa_s",
                self.viscosity_min_pa_s,
                f"must be below viscosity_max_pa_s = {self.viscosity_max_pa_s}",
            )
        if self.strength_set_pa < self.strength_fresh_pa:
            raise bad(
                "strength_set_pa",
                self.strength_set_pa,
                f"must be >= strength_fresh_pa = {self.strength_fresh_pa}",
            )

    def as_array(self) -> np.ndarray:
        """Float64 parameter vector for the njit kernels (indices ``P_*``)."""
        p = np.empty(N_PARAMS, dtype=np.float64)
        p[P_K_REF] = self.viscosity_ref_pa_s
        p[P_T_REF] = self.reference_time_s
        p[P_T_SET] = self.setting_time_s
        p[P_EXPONENT] = self.divergence_exponent
        p[P_N_FRESH] = self.power_law_n_fresh
        p[P_N_SET] = self.power_law_n_set
        p[P_ETA_MIN] = self.viscosity_min_pa_s
        p[P_ETA_MAX] = self.viscosity_max_pa_s
        p[P_EA] = self.activation_energy_j_per_mol
        p[P_T_REF_K] = self.reference_temperature_k
        p[P_DENSITY] = self.density_kg_per_m3
        p[P_STRENGTH_FRESH] = self.strength_fresh_pa
        p[P_STRENGTH_SET] = self.strength_set_pa
        p[P_EXP_RATE] = self.exponential_rate_per_s
        p[P_SHEAR_FLOOR] = self.shear_rate_floor_per_s
        return p

    @classmethod
    def newtonian(cls, viscosity_pa_s: float, density_kg_per_m3: float = 1180.0) -> CementModel:
        """Constant-viscosity fluid that never sets (verification against analytic solutions)."""
        mu = float(viscosity_pa_s)
        if not mu > 0.0:
            raise ConfigError(f"CementModel.newtonian: viscosity_pa_s = {viscosity_pa_s}: must be > 0")
        return cls(
            name=f"newtonian({mu:g} Pa s)",
            viscosity_ref_pa_s=mu,
            reference_time_s=0.0,
            setting_time_s=math.inf,
            divergence_exponent=0.0,
            power_law_n_fresh=1.0,
            power_law_n_set=1.0,
            viscosity_min_pa_s=mu * (1.0 - 1e-12),
            viscosity_max_pa_s=mu * (1.0 + 1e-12),
            activation_energy_j_per_mol=0.0,
            reference_temperature_k=310.15,
            density_kg_per_m3=float(density_kg_per_m3),
            strength_fresh_pa=0.0,
            strength_set_pa=0.0,
            exponential_rate_per_s=0.0,
            shear_rate_floor_per_s=0.0,
        )

    def with_overrides(self, overrides: dict[str, Any] | None) -> CementModel:
        """A copy with the non-None entries of ``overrides`` (SI field names) replaced."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - {f.name for f in fields(self)} - {"name"})
        if unknown:
            raise ConfigError(
                f"cement overrides: unknown field(s) {', '.join(unknown)} "
                f"(known: {', '.join(OVERRIDE_FIELDS)})"
            )
        changes = {k: float(v) for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        return replace(self, name=f"{self.name}+overrides", **changes)

    @classmethod
    def from_params(cls, cement: CementParams) -> CementModel:
        """The preset of ``cement`` with its overrides applied."""
        model = load_cement_preset(str(cement.preset))
        return model.with_overrides(cement.overrides.given() if cement.overrides is not None else None)


# --------------------------------------------------------------------------- presets


def _preset_table() -> dict[str, Any]:
    from sim.core.geometry_data import load_geometry_yaml

    data = load_geometry_yaml(PRESET_FILE)
    presets = data.get("presets") if isinstance(data, dict) else None
    if not isinstance(presets, dict):
        raise ConfigError(f"geometries/{PRESET_FILE}: missing 'presets' mapping")
    return data


def load_cement_preset(name: str) -> CementModel:
    """Cement model of preset ``name`` ('low', 'medium', 'high') from geometries/cement.yaml."""
    data = _preset_table()
    presets = data["presets"]
    if name not in presets:
        raise ConfigError(f"cement preset '{name}' unknown (known: {', '.join(presets)})")
    entry = presets[name]
    params = entry.get("parameters") if isinstance(entry, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"geometries/{PRESET_FILE}: preset '{name}' has no 'parameters' mapping")
    try:
        return CementModel(name=name, **{k: float(v) for k, v in params.items()})
    except TypeError as exc:
        raise ConfigError(f"geometries/{PRESET_FILE}: preset '{name}': {exc}") from None


# --------------------------------------------------------------------------- scalar physics


def age_rate(model: CementModel, temperature_k: float) -> float:
    """d(equivalent age)/dt at ``temperature_k``: exp(-Ea/R (1/T - 1/T_ref))."""
    t = float(temperature_k)
    if not t > 0.0:
        raise ConfigError(f"age_rate: temperature_k = {temperature_k}: must be > 0 K")
    return math.exp(
        -model.activation_energy_j_per_mol / GAS_CONSTANT * (1.0 / t - 1.0 / model.reference_temperature_k)
    )


def equivalent_age_s(model: CementModel, time_after_mixing_s: float, room_temperature_k: float) -> float:
    """Equivalent age at injection start, the cement having waited at room temperature since mixing."""
    if not float(time_after_mixing_s) >= 0.0:
        raise ConfigError(f"equivalent_age_s: time_after_mixing_s = {time_after_mixing_s}: must be >= 0")
    return float(time_after_mixing_s) * age_rate(model, room_temperature_k)


def setting_time_at_s(model: CementModel, temperature_k: float) -> float:
    """Wall-clock time from mixing to setting at a constant temperature."""
    return model.setting_time_s / age_rate(model, temperature_k)


def is_set(model: CementModel, age_s: float) -> bool:
    """True once the equivalent age has reached the setting age."""
    return bool(age_s >= model.setting_time_s)


def cure_degree(model: CementModel, age_s: Any) -> Any:
    """Normalised cure clock c = clip(a / t_set, 0, 1) (0 = mixed, 1 = set)."""
    a = np.asarray(age_s, dtype=np.float64)
    out = np.clip(a / model.setting_time_s, 0.0, 1.0)
    return out if out.ndim else float(out)


def power_law_index(model: CementModel, age_s: Any) -> Any:
    """Power-law index n(a) = n_fresh + (n_set - n_fresh) c(a)."""
    c = np.asarray(cure_degree(model, age_s))
    out = model.power_law_n_fresh + (model.power_law_n_set - model.power_law_n_fresh) * c
    return out if out.ndim else float(out)


def consistency_pa_sn(model: CementModel, age_s: Any) -> Any:
    """Consistency K(a) in Pa s^n (inf at and after setting)."""
    a = np.asarray(age_s, dtype=np.float64)
    t_set, t_ref = model.setting_time_s, model.reference_time_s
    k = model.viscosity_ref_pa_s * np.exp(model.exponential_rate_per_s * (a - t_ref))
    if model.divergence_exponent > 0.0 and math.isfinite(t_set):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (t_set - t_ref) / (t_set - a)
            k = np.where(a < t_set, k * ratio**model.divergence_exponent, np.inf)
    out = np.asarray(k, dtype=np.float64)
    return out if out.ndim else float(out)


def cement_viscosity(model: CementModel, shear_rate: Any, age_s: Any) -> np.ndarray:
    """Apparent viscosity (Pa s) at ``shear_rate`` (1/s) and equivalent age (s); broadcasts."""
    g = np.asarray(shear_rate, dtype=np.float64)
    a = np.asarray(age_s, dtype=np.float64)
    k = np.asarray(consistency_pa_sn(model, a))
    n = np.asarray(power_law_index(model, a))
    gg = np.maximum(np.abs(g), model.shear_rate_floor_per_s)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        eta = k * gg ** (n - 1.0)
    eta = np.where(n >= 1.0, k, eta)  # Newtonian: no shear dependence (also at zero shear)
    eta = np.where(np.isnan(eta), model.viscosity_max_pa_s, eta)
    return np.clip(eta, model.viscosity_min_pa_s, model.viscosity_max_pa_s)


def cement_strength_pa(model: CementModel, age_s: Any) -> Any:
    """Yield/tensile strength (Pa): sigma_fresh K(a)/K(0), capped at sigma_set; sigma_set once set."""
    a = np.asarray(age_s, dtype=np.float64)
    k0 = consistency_pa_sn(model, 0.0)
    k = np.asarray(consistency_pa_sn(model, a))
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.minimum(model.strength_set_pa, model.strength_fresh_pa * (k / k0))
    s = np.where(a >= model.setting_time_s, model.strength_set_pa, s)
    out = np.asarray(s, dtype=np.float64)
    return out if out.ndim else float(out)


# --------------------------------------------------------------------------- numba kernels


@numba.njit(cache=True)
def consistency_kernel(age_s: float, params: np.ndarray) -> float:
    """K(a) (Pa s^n); inf at and after setting. Scalar, njit-callable."""
    t_ref = params[P_T_REF]
    t_set = params[P_T_SET]
    p = params[P_EXPONENT]
    k = params[P_K_REF] * math.exp(params[P_EXP_RATE] * (age_s - t_ref))
    if p > 0.0 and t_set < math.inf:
        if age_s >= t_set:
            return math.inf
        k *= ((t_set - t_ref) / (t_set - age_s)) ** p
    return k


@numba.njit(cache=True)
def _power_law_index_kernel(age_s: float, params: np.ndarray) -> float:
    c = min(max(age_s / params[P_T_SET], 0.0), 1.0)
    return params[P_N_FRESH] + (params[P_N_SET] - params[P_N_FRESH]) * c


@numba.njit(cache=True)
def _clipped_power_law(shear_rate: float, k: float, n: float, params: np.ndarray) -> float:
    """clip(K max(|g|, g_floor)^(n-1), eta_min, eta_max) for given K and n."""
    eta_max = params[P_ETA_MAX]
    if k == math.inf:
        return eta_max
    if n >= 1.0:
        eta = k
    else:
        g = max(abs(shear_rate), params[P_SHEAR_FLOOR])
        eta = eta_max if g <= 0.0 else k * g ** (n - 1.0)
    return min(max(eta, params[P_ETA_MIN]), eta_max)


@numba.njit(cache=True)
def viscosity_kernel(shear_rate: float, age_s: float, params: np.ndarray) -> float:
    """Clipped power-law viscosity (Pa s) at one shear rate and equivalent age."""
    k = consistency_kernel(age_s, params)
    return _clipped_power_law(shear_rate, k, _power_law_index_kernel(age_s, params), params)


@numba.njit(cache=True)
def strength_kernel(age_s: float, params: np.ndarray) -> float:
    """Cement yield/tensile strength (Pa) at one equivalent age."""
    s_set = params[P_STRENGTH_SET]
    if age_s >= params[P_T_SET]:
        return s_set
    k = consistency_kernel(age_s, params)
    k0 = consistency_kernel(0.0, params)
    return min(s_set, params[P_STRENGTH_FRESH] * (k / k0))


@numba.njit(cache=True)
def viscosity_field(shear_rate: np.ndarray, age_s: float, params: np.ndarray, out: np.ndarray) -> None:
    """out[i] = viscosity_kernel(shear_rate[i], age_s, params) over a flat array (K, n computed once)."""
    k = consistency_kernel(age_s, params)
    n = _power_law_index_kernel(age_s, params)
    for i in range(shear_rate.shape[0]):
        out[i] = _clipped_power_law(shear_rate[i], k, n, params)


@numba.njit(cache=True)
def viscosity_field_sparse(
    cells: np.ndarray, shear_rate: np.ndarray, age_s: float, params: np.ndarray, out: np.ndarray
) -> None:
    """:func:`viscosity_field` of a shear-rate field that is zero outside ``cells`` (``shear_rate[j]``
    is the rate of cell ``cells[j]``): the zero-shear viscosity everywhere else, bit for bit the
    whole-field values, at the cost of the listed cells (the cement's neighbourhood) only."""
    k = consistency_kernel(age_s, params)
    n = _power_law_index_kernel(age_s, params)
    out[:] = _clipped_power_law(0.0, k, n, params)
    for j in range(cells.shape[0]):
        out[cells[j]] = _clipped_power_law(shear_rate[j], k, n, params)


# --------------------------------------------------------------------------- porous media


def christopher_middleman_alpha(n: float) -> float:
    """alpha(n) of gamma_eff = alpha(n) |u| / sqrt(k phi) (Christopher & Middleman 1965).

    Their capillary-bundle (Blake-Kozeny, tortuosity 25/12) analysis of power-law flow gives the
    Darcy law u = (k/mu_eff) |grad p| with mu_eff = (K/12) (9 + 3/n)^n (150 k phi)^((1-n)/2)
    |u|^(n-1). Writing mu_eff = K gamma_eff^(n-1) gives
    alpha(n) = [(9 + 3/n)^n / 12]^(1/(n-1)) / sqrt(150); its n -> 1 limit is
    exp(ln 12 - 1/4) / sqrt(150) = 0.7636.
    """
    n = float(n)
    if not 0.0 < n <= 1.0 + 1e-12:
        raise ConfigError(f"christopher_middleman_alpha: n = {n}: must be in (0, 1]")
    if abs(n - 1.0) < 1e-6:
        return math.exp(math.log(12.0) - 0.25) / math.sqrt(150.0)
    return math.exp((n * math.log(9.0 + 3.0 / n) - math.log(12.0)) / (n - 1.0)) / math.sqrt(150.0)


def porous_shear_rate(darcy_speed: Any, permeability: Any, porosity: Any, n: float) -> Any:
    """Effective pore shear rate (1/s) of power-law flow in a porous medium.

    gamma_eff = alpha(n) |u| / sqrt(k phi), u the Darcy (superficial) velocity, k the
    permeability (m^2), phi the porosity; alpha(n) from :func:`christopher_middleman_alpha`
    (Christopher & Middleman 1965, Ind Eng Chem Fundam 4:422).
    """
    alpha = christopher_middleman_alpha(n)
    u = np.abs(np.asarray(darcy_speed, dtype=np.float64))
    kp = np.asarray(permeability, dtype=np.float64) * np.asarray(porosity, dtype=np.float64)
    out = alpha * u / np.sqrt(kp)
    return out if out.ndim else float(out)


# --------------------------------------------------------------------------- cannula


def tube_wall_shear_rate(flow_m3_s: Any, diameter_m: Any, n: float) -> np.ndarray:
    """Wall shear rate (1/s) of a power-law fluid carrying ``flow_m3_s`` through a tube of ``diameter_m``.

        gamma_w = (3n + 1) / (4n) * 32 |Q| / (pi d^3)

    the Newtonian wall rate 8 V / d (V = 4 Q / (pi d^2)) with the Rabinowitsch-Mooney correction of a
    power-law fluid (Bird, Armstrong & Hassager 1987, Dynamics of Polymeric Liquids vol. 1, sec. 4.2).
    Poiseuille's law with the viscosity at this rate still gives a drop (3n+1)/(4n) too small; the
    vessels take :func:`tube_flow_viscosity`, whose power-law limit is eta(gamma_w) (3n+1)/(4n).
    Limiting case n = 1: 32 Q / (pi d^3) (tested); zero flow gives 0.
    """
    q = np.abs(np.asarray(flow_m3_s, dtype=np.float64))
    d = np.asarray(diameter_m, dtype=np.float64)
    return (3.0 * n + 1.0) / (4.0 * n) * 32.0 * q / (np.pi * d**3)


@numba.njit(cache=True)
def _tube_viscosity_kernel(
    flow: np.ndarray,
    diameter: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    coef: np.ndarray,
    expo: np.ndarray,
    eta_min: float,
    eta_max: float,
    out: np.ndarray,
) -> None:
    """out[i] = tau_w / (4 Q / (pi R^3)) for the piecewise flow curve gamma = coef tau^expo (see
    :func:`tube_flow_viscosity`). tau_w solves ln Q(tau_w) = ln Q by Newton's method in ln tau_w,
    safeguarded by bisection inside the Newtonian bounds (eta_min and eta_max Hagen-Poiseuille)."""
    n_p = lo.shape[0]
    for i in range(flow.shape[0]):
        q = abs(flow[i])
        r = 0.5 * diameter[i]
        scale = 4.0 * q / (math.pi * r**3)  # Newtonian wall rate 8 V / d (the caller refuses r < 5e-10 m)
        if expo[0] == 1.0 and scale / coef[0] <= hi[0]:
            out[i] = 1.0 / coef[0]  # the wall stress on the low-stress plateau: the whole section Newtonian
            continue
        a = math.log(eta_min * scale)
        b = math.log(eta_max * scale)
        target = math.log(q / (math.pi * r**3))
        x = 0.5 * (a + b)
        converged = False
        for _ in range(200):
            tau = math.exp(x)
            integral = 0.0
            rate = 0.0
            for k in range(n_p):
                if lo[k] >= tau:
                    break
                top = min(hi[k], tau)
                integral += coef[k] * (top ** (expo[k] + 3.0) - lo[k] ** (expo[k] + 3.0)) / (expo[k] + 3.0)
                rate = coef[k] * tau ** expo[k]
            f = math.log(integral) - 3.0 * x - target  # ln Q(tau) - ln Q
            if f > 0.0:
                b = x
            else:
                a = x
            # f has a round-off floor of a few ulps of 3 x: stop also once [a, b] is two ulps of x wide
            if abs(f) < 1e-14 or b - a < max(1e-15, 4.5e-16 * abs(x)):
                converged = True
                break
            slope = tau**3 * rate / integral - 3.0  # d ln Q / d ln tau: the local 1 / n (>= 1)
            x_new = x - f / slope
            x = x_new if a < x_new < b else 0.5 * (a + b)
        if not converged:  # bisection alone halves [a, b] ~ 60 times to round-off: cannot happen
            raise ArithmeticError("tube_flow_viscosity: the wall stress did not converge")
        out[i] = math.exp(x) / scale


def tube_flow_viscosity(model: CementModel, flow_m3_s: Any, diameter_m: Any, age_s: float) -> np.ndarray:
    """Poiseuille-equivalent viscosity (Pa s) of the cement carrying ``flow_m3_s`` through tubes of
    ``diameter_m``: the mu_P for which Hagen-Poiseuille, dp = 128 mu_P L Q / (pi d^4), gives the
    exact pressure drop of fully developed laminar flow of the clipped power law.

        mu_P = tau_w / (32 |Q| / (pi d^3)),   Q = (pi R^3 / tau_w^3) int_0^tau_w tau^2 gamma(tau) dtau

    (Rabinowitsch-Mooney; Bird, Armstrong & Hassager 1987, Dynamics of Polymeric Liquids vol. 1,
    sec. 4.2), the wall stress over the Newtonian wall rate 8 V / d. For the unclipped power law it
    is K ((3n+1)/(4n))^n (8 V / d)^(n-1) = eta(gamma_w) (3n+1)/(4n), eta taken at the true wall rate
    :func:`tube_wall_shear_rate`: Poiseuille with eta(gamma_w) underestimates the drop by
    (3n+1)/(4n) (1.16 at n = 0.6, 1.46 at n = 0.35), with eta(8 V / d) by ((3n+1)/(4n))^n. The
    viscosity clips (plateau below the shear-rate floor, eta_min, eta_max) are honoured exactly, as in
    :func:`cannula_pressure_drop_pa`. Limiting cases (tested): a Newtonian cement gives its viscosity;
    zero flow the low-stress plateau; 128 mu_P L Q / (pi d^4) equals :func:`cannula_pressure_drop_pa`.
    """
    q_in, d_in = np.broadcast_arrays(
        np.asarray(flow_m3_s, dtype=np.float64), np.asarray(diameter_m, dtype=np.float64)
    )
    shape = q_in.shape
    q, d = np.array(q_in, dtype=np.float64).ravel(), np.array(d_in, dtype=np.float64).ravel()
    if not (np.all(np.isfinite(q)) and np.all((d >= 1e-9) & (d <= 1.0))):
        raise ValueError("tube_flow_viscosity: flows must be finite and diameters within 1e-9 to 1 m")
    pieces = _flow_curve_pieces(model, float(age_s))
    lo, hi, coef, expo = (np.array([p[j] for p in pieces], dtype=np.float64) for j in range(4))
    out = np.empty(q.size)
    _tube_viscosity_kernel(
        q,
        d,
        lo,
        hi,
        coef,
        expo,
        float(model.viscosity_min_pa_s),
        float(model.viscosity_max_pa_s),
        out,
    )
    return out.reshape(shape)


def _flow_curve_pieces(model: CementModel, age_s: float) -> list[tuple[float, float, float, float]]:
    """The clipped power law as stress pieces: (tau_lo, tau_hi, coefficient c, exponent m).

    On each piece the shear rate is gamma(tau) = c * tau**m (m = 1 Newtonian, m = 1/n power law).
    """
    k = float(consistency_pa_sn(model, age_s))
    n = float(power_law_index(model, age_s))
    e_min, e_max = model.viscosity_min_pa_s, model.viscosity_max_pa_s
    if not math.isfinite(k) or n >= 1.0:
        mu = e_max if not math.isfinite(k) else min(max(k, e_min), e_max)
        return [(0.0, math.inf, 1.0 / mu, 1.0)]
    # eta(g) = clip(K max(g, g_f)^(n-1), e_min, e_max) is non-increasing in g: a Newtonian plateau
    # eta_hi for g <= g1, the power law for g1 < g < g2, the floor e_min for g >= g2.
    g_f = model.shear_rate_floor_per_s
    eta_f = e_max if g_f <= 0.0 else min(max(k * g_f ** (n - 1.0), e_min), e_max)
    g1 = max(g_f, (e_max / k) ** (1.0 / (n - 1.0)))
    g2 = (e_min / k) ** (1.0 / (n - 1.0))
    if g2 <= g1:  # the power law never shows between the two clips
        tau_switch = eta_f * g1 if eta_f > e_min else 0.0
        if tau_switch <= 0.0:
            return [(0.0, math.inf, 1.0 / e_min, 1.0)]
        return [(0.0, tau_switch, 1.0 / eta_f, 1.0), (tau_switch, math.inf, 1.0 / e_min, 1.0)]
    tau1 = eta_f * g1
    tau2 = e_min * g2
    return [
        (0.0, tau1, 1.0 / eta_f, 1.0),
        (tau1, tau2, k ** (-1.0 / n), 1.0 / n),
        (tau2, math.inf, 1.0 / e_min, 1.0),
    ]


def _pipe_flow(tau_w: float, radius_m: float, pieces: list[tuple[float, float, float, float]]) -> float:
    """Q(tau_w) = pi R^3 / tau_w^3 * integral_0^tau_w tau^2 gamma(tau) dtau (Rabinowitsch-Mooney)."""
    total = 0.0
    for lo, hi, c, m in pieces:
        if lo >= tau_w:
            break
        top = min(hi, tau_w)
        total += c * (top ** (m + 3.0) - lo ** (m + 3.0)) / (m + 3.0)
    return math.pi * radius_m**3 * total / tau_w**3


def cannula_pressure_drop_pa(
    model: CementModel, flow_m3_s: float, inner_diameter_m: float, length_m: float, age_s: float
) -> float:
    """Pressure drop (Pa) of fully developed laminar flow through a cannula.

    For the unclipped power law this is dp = (2 K L / R) * ((3n+1)/n * Q / (pi R^3))**n
    (Bird, Armstrong & Hassager 1987), whose n = 1 limit is Hagen-Poiseuille 8 mu L Q/(pi R^4).
    The model's viscosity clips (eta_min, eta_max, low-shear plateau) are honoured exactly: the
    wall stress tau_w solves Q = (pi R^3 / tau_w^3) int_0^tau_w tau^2 gamma(tau) dtau for the
    piecewise flow curve, and dp = 2 L tau_w / R.
    """
    q = float(flow_m3_s)
    r = 0.5 * float(inner_diameter_m)
    length = float(length_m)
    if not (r > 0.0 and length > 0.0):
        raise ConfigError(
            f"cannula_pressure_drop_pa: inner_diameter_m = {inner_diameter_m}, length_m = {length_m}: "
            "must be > 0"
        )
    if q == 0.0:
        return 0.0
    sign = 1.0 if q > 0.0 else -1.0
    q = abs(q)
    pieces = _flow_curve_pieces(model, float(age_s))
    # The whole section on the low-shear plateau (the first piece is always Newtonian; a Newtonian cement
    # is one piece to infinite stress): Hagen-Poiseuille in closed form, also for flows so small that
    # tau_w**3 in the Rabinowitsch integral would underflow.
    tau_plateau = 4.0 * q / (pieces[0][2] * math.pi * r**3)
    if tau_plateau <= pieces[0][1]:
        return sign * 2.0 * length * tau_plateau / r
    # Bracket tau_w between the two Newtonian bounds (eta_max and eta_min Hagen-Poiseuille).
    lo = 4.0 * model.viscosity_min_pa_s * q / (math.pi * r**3)
    hi = 4.0 * model.viscosity_max_pa_s * q / (math.pi * r**3)
    if not hi > lo:
        return sign * 2.0 * length * lo / r
    f_lo = _pipe_flow(lo, r, pieces) - q
    f_hi = _pipe_flow(hi, r, pieces) - q
    if f_lo >= 0.0:
        tau_w = lo
    elif f_hi <= 0.0:
        tau_w = hi
    else:
        # The root is sought in log(tau_w); exp(log(x)) != x in the last bit, so the bracket is checked
        # again on the function brentq sees: when the root sits on an end (flow on a Newtonian clip),
        # round-off can put both ends on one side, and that end is the answer.
        def log_ratio(x: float) -> float:
            ratio = _pipe_flow(math.exp(x), r, pieces) / q
            return math.log(ratio) if ratio > 0.0 else -1.0e3

        a, b = math.log(lo), math.log(hi)
        g_a, g_b = log_ratio(a), log_ratio(b)
        if g_a >= 0.0 or g_b <= 0.0:
            tau_w = lo if abs(g_a) <= abs(g_b) else hi
        else:
            tau_w = math.exp(brentq(log_ratio, a, b, xtol=1e-14, rtol=1e-15))
    return sign * 2.0 * length * tau_w / r


# --------------------------------------------------------------------------- fitting


def fit_preset(
    base: CementModel,
    points: list[dict[str, float]],
    free: tuple[str, ...] = ("viscosity_ref_pa_s", "divergence_exponent", "exponential_rate_per_s"),
) -> tuple[CementModel, np.ndarray]:
    """Least-squares fit of ``base``'s consistency law to published viscosity-time points.

    Each point is a mapping with ``time_after_mixing_s``, ``temperature_k`` (constant during the
    measurement), ``shear_rate_per_s`` and ``viscosity_pa_s``. Times are converted to equivalent
    age with the model's Arrhenius rate; residuals are log(eta_model / eta_measured). The fields
    in ``free`` are varied (positive; log-parametrised except ``exponential_rate_per_s``, which
    is bounded to [0, 0.05] 1/s). Returns the fitted model and the relative errors per point.
    """
    from scipy.optimize import least_squares

    if not points:
        raise ConfigError(f"fit_preset('{base.name}'): no viscosity points given")
    t = np.array([p["time_after_mixing_s"] for p in points], dtype=np.float64)
    temp = np.array([p["temperature_k"] for p in points], dtype=np.float64)
    g = np.array([p["shear_rate_per_s"] for p in points], dtype=np.float64)
    eta = np.array([p["viscosity_pa_s"] for p in points], dtype=np.float64)
    if np.any(eta <= 0.0) or np.any(t < 0.0):
        raise ConfigError(f"fit_preset('{base.name}'): viscosities must be > 0 and times >= 0")
    logged = [f != "exponential_rate_per_s" for f in free]
    x0 = np.array(
        [math.log(getattr(base, f)) if lg else getattr(base, f) for f, lg in zip(free, logged, strict=True)]
    )
    lo = np.array([-np.inf if lg else 0.0 for lg in logged])
    hi = np.array([np.inf if lg else 0.05 for lg in logged])
    x0 = np.clip(x0, lo, hi)

    def build(x: np.ndarray) -> CementModel:
        vals = {f: (math.exp(v) if lg else float(v)) for f, v, lg in zip(free, x, logged, strict=True)}
        return replace(base, **vals)

    def residual(x: np.ndarray) -> np.ndarray:
        m = build(x)
        age = t * np.array([age_rate(m, tk) for tk in temp])
        return np.log(cement_viscosity(m, g, age) / eta)

    sol = least_squares(residual, x0, bounds=(lo, hi), x_scale="jac")
    model = build(sol.x)
    return model, np.expm1(residual(sol.x))
