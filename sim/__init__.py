"""pce-sim: vertebroplasty cement injection, venous leakage and pulmonary cement embolism."""

from importlib.metadata import PackageNotFoundError, version

from sim.core.numba_cache import configure_numba_cache

# Before numba is first imported: a writable kernel cache even when the package folder and the home
# are read-only (numba would otherwise fail with "cannot cache function ...: no locator available").
configure_numba_cache()

try:
    __version__ = version("pce-sim")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
