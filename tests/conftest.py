"""Test session setup: one BLAS thread, as the CLI uses (sim/cli.py).

OpenBLAS's thread count changes the last bits of dot products inside the pressure solves, and a
loaded machine made the marrow balance of a leak-path test land at 1.35e-10 against the 1e-10
tolerance in one run. Tests should see the arithmetic users get from ``pce-sim``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
