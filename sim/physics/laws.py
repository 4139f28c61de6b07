"""Constitutive-law seams: every physical law is a small named class, selected by name in the config.

Like the pore-scale models OpenPNM attaches to a network, each law kind below has a contract and
one or more named implementations. A scenario picks one per kind in its ``laws`` section
(``laws: {rheology: power_law_cure}``); :func:`law_class` returns the class, whose
``from_params`` builds it from the run's typed parameters. Implementations live in the physics
module of their kind and register themselves with :func:`register`; each states its equation,
source and limiting case in its docstring and has a test of that limiting case.

- ``permeability`` (:mod:`sim.physics.permeability`): ``tensor_diagonal(phi)``, k of porous cells (m^2)
- ``rheology`` (:mod:`sim.physics.rheology`): viscosity, strength and cure of the cement
  (:class:`~sim.physics.rheology.CementModel` and its module functions)
- ``exchange`` (:mod:`sim.physics.bone_vein_exchange`): ``entries(exits, graph)``, the bone cells
  each venous exit drains and their conductances
- ``fragmentation`` (:mod:`sim.physics.fragmentation`): ``shed(columns, flows, cement, age, t, rng)``
- ``lodging`` (:mod:`sim.physics.fragment_transport`): ``margin(cement, age)``, how much wider than
  a vessel a fragment may be and still pass
- ``marrow_outflow`` (:mod:`sim.physics.marrow_outflow`): ``series_factor(g_total)``, the
  resistance displaced marrow meets on its way out of the bone
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from sim.core.errors import ConfigError

T = TypeVar("T", bound=type)

# kind -> the module that defines its implementations (imported on first look-up)
LAW_HOMES: dict[str, str] = {
    "permeability": "sim.physics.permeability",
    "rheology": "sim.physics.rheology",
    "exchange": "sim.physics.bone_vein_exchange",
    "fragmentation": "sim.physics.fragmentation",
    "lodging": "sim.physics.fragment_transport",
    "marrow_outflow": "sim.physics.marrow_outflow",
}
_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in LAW_HOMES}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` the law ``name`` of ``kind`` (sets ``cls.law_name``)."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown law kind {kind!r} (kinds: {', '.join(_REGISTRY)})")

    def decorate(cls: T) -> T:
        if name in _REGISTRY[kind] and _REGISTRY[kind][name] is not cls:
            raise ValueError(f"{kind} law {name!r} registered twice")
        cls.law_name = name  # type: ignore[attr-defined]
        _REGISTRY[kind][name] = cls
        return cls

    return decorate


def available(kind: str) -> tuple[str, ...]:
    """Names of the implementations of ``kind``."""
    importlib.import_module(LAW_HOMES[kind])
    return tuple(_REGISTRY[kind])


def law_class(kind: str, name: str) -> type:
    """The class implementing law ``name`` of ``kind``; ConfigError naming the choices otherwise."""
    if kind not in LAW_HOMES:
        raise ConfigError(f"laws.{kind}: no such law kind (kinds: {', '.join(LAW_HOMES)})")
    choices = available(kind)
    if name not in _REGISTRY[kind]:
        raise ConfigError(f"laws.{kind} = {name!r}: unknown law (allowed: {', '.join(choices)})")
    return _REGISTRY[kind][name]
