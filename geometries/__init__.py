"""Anatomy and material data (YAML/CSV with sources), installed as ``sim.geometries``."""
