"""One BLAS thread inside a simulation, whatever the process was started with.

OpenBLAS splits a dot product of more than 10,000 entries over its threads, and each thread count sums
in another order, so a run's results depended in the last bits (about 1e-10 relative on the default
5 ml run) on ``OPENBLAS_NUM_THREADS`` or on whether numpy was imported before ``sim`` (it then starts
one thread per core). :func:`one_blas_thread` limits every loaded BLAS (numpy's and scipy's) to one
thread for the duration of a block and restores the caller's setting afterwards, so the same config
gives bit-identical results in any process on a machine. The extra threads gain nothing on these
sparse solves (benchmarks/results/bench.md, the sweep section).
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from threadpoolctl import threadpool_limits

P = ParamSpec("P")
R = TypeVar("R")

# BLAS's thread count is a setting of the process, not of a thread: runs in several threads of one
# process (a Dask worker with several threads) share one limit, set by the first block to enter and
# restored by the last to leave. OpenBLAS does not always honour a setting made from a worker thread
# (seen with numpy 2.4's OpenBLAS 0.3.31), so threaded workers should also start with
# OPENBLAS_NUM_THREADS=1, which ``import sim`` sets unless the user chose otherwise.
_lock = threading.Lock()
_active = 0
_limit: Any = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with every loaded BLAS library at one thread (about 1 ms to set and restore)."""
    global _active, _limit
    with _lock:
        if _active == 0:
            _limit = threadpool_limits(limits=1, user_api="blas")
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _limit.restore_original_limits()
                _limit = None


def with_one_blas_thread(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate ``func`` to run under :func:`one_blas_thread`."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with one_blas_thread():
            return func(*args, **kwargs)

    return wrapper
