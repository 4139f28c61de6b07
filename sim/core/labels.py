"""Names shared by several stages and outputs (one definition each)."""

from __future__ import annotations

# Pulmonary lobes, right lung first (index order of the lobe arrays of the tree and the emboli table).
LOBE_NAMES: tuple[str, ...] = ("RUL", "RML", "RLL", "LUL", "LLL")
