"""pce-sim: vertebroplasty cement injection, venous leakage and pulmonary cement embolism."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pce-sim")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
