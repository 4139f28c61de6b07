"""One BLAS thread inside a simulation, whatever the process was started with.

OpenBLAS splits a dot product of more than 10,000 entries over its threads, and each thread count sums
in another order, so a run's results depended in the last bits (about 1e-10 relative on the default
5 ml run) on ``OPENBLAS_NUM_THREADS`` or on whether numpy was imported before ``sim`` (it then starts
one thread per core). :func:`one_blas_thread` limits every loaded BLAS (numpy's and scipy's) to one
thread for the duration of a block and restores the caller's setting afterwards, so the same config
gives bit-identical results in any process on a machine. The extra threads gain nothing on these
sparse solves (benchmarks/results/bench.md, the sweep section).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

from threadpoolctl import threadpool_limits

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with every loaded BLAS library at one thread (about 1 ms to set and restore)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def with_one_blas_thread(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate ``func`` to run under :func:`one_blas_thread`."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with one_blas_thread():
            return func(*args, **kwargs)

    return wrapper
