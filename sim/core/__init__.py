"""Shared foundations: the validated scenario (config), SI units, errors, the bone grid types,
geometry data loading and run provenance. Nothing here imports a physics, run or study module."""
