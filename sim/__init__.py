"""pce-sim: vertebroplasty cement injection, venous leakage and pulmonary cement embolism."""

import os
from importlib.metadata import PackageNotFoundError, version

# One BLAS thread per process unless the user chose otherwise: OpenBLAS's extra threads gain nothing on
# these sparse solves and slow runs when the other cores are busy. Set here, before numpy is imported by
# the package, so the CLI, library use that imports sim first, and sweep and cohort workers (which inherit
# it) run alike. Results do not depend on it: a run limits BLAS to one thread itself
# (sim/core/blas_threads.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sim.core.numba_cache import configure_numba_cache

# Before numba is first imported: a writable kernel cache even when the package folder and the home
# are read-only (numba would otherwise fail with "cannot cache function ...: no locator available").
configure_numba_cache()

try:
    __version__ = version("pce-sim")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
