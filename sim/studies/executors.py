"""Where sweep runs execute: in-process, a local process pool, or a Dask distributed cluster.

Each run is a :class:`RunTask` (scenario config, run folder, runner and writer given as
``"module:function"`` strings or picklable module-level callables). :func:`execute_task` runs in a
worker: it rebuilds the Scenario, checks its content hash, calls the runner, writes the run folder
atomically (the writer replaces a folder left by a run that was killed before the ledger heard of
it) and returns a plain :class:`Outcome` (summary + emboli table as lists, error text, wall time).
A runner that raises yields a failed Outcome; the sweep goes on.

Executors keep at most ``capacity`` tasks in flight (one per worker), so the parent marks a run
``running`` in the ledger when it is really handed to a worker; only the parent writes the ledger.
The local pool uses the ``spawn`` start method (safe with numba/BLAS threads and on every OS); a
worker process that dies (killed, out of memory) fails the runs it held and the pool is rebuilt.
Dask (Rocklin 2015, SciPy proceedings) runs the same tasks on ``Client(address)`` or on a
``LocalCluster(n_workers, threads_per_worker=1, processes=True)``; results are identical to the
local pool because every run is a pure function of its scenario.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.core.errors import ConfigError, interruption_in
from sim.studies.ledger import plain_json_value

DEFAULT_RUNNER = "sim.run.pipeline:run_scenario"
DEFAULT_WRITER = "sim.run.pipeline:write_run"

Runner = str | Callable[..., Any]


@dataclass(frozen=True)
class RunTask:
    """One scenario to run and where its folder goes."""

    hash: str
    config: dict[str, Any]
    run_dir: str
    runner: Runner = DEFAULT_RUNNER
    writer: Runner = DEFAULT_WRITER
    code_digest: str | None = None  # the parent's code; a worker running other code refuses the task


@dataclass
class Outcome:
    """What a worker reports back for one task (plain, picklable, JSON-able values)."""

    hash: str
    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)
    emboli: dict[str, list[Any]] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float = 0.0


def resolve_callable(spec: Runner) -> Callable[..., Any]:
    """A callable from ``"package.module:function"`` (or the callable itself)."""
    if callable(spec):
        return spec
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"runner '{spec}': expected 'package.module:function'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"runner '{spec}': cannot import ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a module that fails while importing is a bad runner too
        raise ConfigError(
            f"runner '{spec}': importing '{module_name}' failed ({type(exc).__name__}: {exc})"
        ) from None
    if not callable(target):
        raise ConfigError(f"runner '{spec}': '{attr}' is not callable")
    return target


def execute_task(task: RunTask) -> Outcome:
    """Run one scenario and write its folder; never raises for a failing run (returns ok=False)."""
    from sim.core.config import scenario_from_dict
    from sim.core.provenance import code_digest, code_label

    t0 = time.perf_counter()
    try:
        scenario = scenario_from_dict(task.config, source=f"run {task.hash[:12]}")
        if scenario.content_hash() != task.hash:
            raise ConfigError(
                f"run {task.hash[:12]}: scenario hash differs on this worker "
                f"({scenario.content_hash()[:12]}); worker and parent run different pce-sim versions"
            )
        if task.code_digest is not None and task.code_digest != code_digest():
            raise ConfigError(
                f"run {task.hash[:12]}: this worker runs other code ({code_label()}) than the sweep's "
                f"parent (code {task.code_digest[:12]}); install the same pce-sim on every worker"
            )
        result = resolve_callable(task.runner)(scenario)
        resolve_callable(task.writer)(result, Path(task.run_dir), overwrite=True)
        emboli = {str(k): plain_json_value(v) for k, v in (result.emboli or {}).items()}
        return Outcome(
            task.hash, True, plain_json_value(dict(result.summary)), emboli, None, time.perf_counter() - t0
        )
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, the sweep goes on
        interrupt = interruption_in(exc)
        if interrupt is not None:  # Ctrl-C inside numba, wrapped in a SystemError: not the run's failure
            raise interrupt from None
        text = f"{type(exc).__name__}: {exc}".strip()
        tb = traceback.format_exc(limit=6)
        return Outcome(task.hash, False, error=f"{text}\n{tb}", wall_time_s=time.perf_counter() - t0)


class Executor:
    """Runs tasks with a bounded number in flight; subclasses provide submit/wait/close."""

    capacity: int = 1

    def submit(self, task: RunTask) -> Any:
        raise ConfigError(f"{type(self).__name__} cannot submit tasks")

    def wait_first(self, handles: dict[Any, RunTask]) -> list[tuple[Any, Outcome]]:
        raise ConfigError(f"{type(self).__name__} cannot wait for tasks")

    def close(self) -> None:
        return None

    def run(self, tasks: Iterable[RunTask], on_start: Callable[[RunTask], None]) -> Iterator[Outcome]:
        """Yield outcomes as tasks finish; ``on_start(task)`` is called just before each submission."""
        queue = iter(tasks)
        in_flight: dict[Any, RunTask] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < self.capacity:
                task = next(queue, None)
                if task is None:
                    exhausted = True
                    break
                on_start(task)
                in_flight[self.submit(task)] = task
            if not in_flight:
                return
            for handle, outcome in self.wait_first(in_flight):
                in_flight.pop(handle)
                yield outcome

    def abort(self) -> None:
        """Stop after an interruption (Ctrl-C, SIGTERM): by default as :meth:`close`."""
        self.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.abort()
        else:
            self.close()


class SharedExecutor(Executor):
    """One executor for several sweeps: made by ``factory`` at the first submission, kept open when a
    sweep's ``with`` block ends, and closed by :meth:`shutdown` (a cohort's phases share its workers)."""

    def __init__(self, factory: Callable[[], Executor]) -> None:
        self._factory = factory
        self._inner: Executor | None = None

    def _executor(self) -> Executor:
        if self._inner is None:
            self._inner = self._factory()
        return self._inner

    @property
    def capacity(self) -> int:  # type: ignore[override]
        return self._executor().capacity

    def submit(self, task: RunTask) -> Any:
        return self._executor().submit(task)

    def wait_first(self, handles: dict[Any, RunTask]) -> list[tuple[Any, Outcome]]:
        return self._executor().wait_first(handles)

    def close(self) -> None:
        return None  # the end of one sweep; the workers stay for the next

    def shutdown(self, interrupted: bool = False) -> None:
        """Close the underlying executor, if one was made (``interrupted``: abort it)."""
        if self._inner is not None:
            inner, self._inner = self._inner, None
            if interrupted:
                inner.abort()
            else:
                inner.close()


class SerialExecutor(Executor):
    """Runs each task in this process when it is submitted (debugging, profiling)."""

    capacity = 1

    def __init__(self) -> None:
        self._results: dict[int, Outcome] = {}

    def submit(self, task: RunTask) -> Any:
        token = len(self._results)
        self._results[token] = execute_task(task)
        return token

    def wait_first(self, handles: dict[Any, RunTask]) -> list[tuple[Any, Outcome]]:
        return [(h, self._results[h]) for h in handles]


PARENT_POLL_S = 0.5  # how often a pool worker checks that the sweep that started it is alive


def _exit_with_parent(parent_pid: int) -> None:
    """Pool-worker initializer: end this worker when its parent is gone.

    A sweep killed with SIGKILL (or by the OOM killer, a scheduler's time limit) cannot shut its pool
    down; its spawn workers, reparented, waited for tasks forever (about 420 MB each). A daemon thread
    checks the parent every PARENT_POLL_S and ends the worker (its run is redone on resume: the ledger
    still says ``running``).
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="pce-exit-with-parent", daemon=True).start()


class LocalExecutor(Executor):
    """A spawn-based ProcessPoolExecutor with ``workers`` processes; they end with the parent."""

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ConfigError(f"executor workers = {workers}: need at least 1")
        self.capacity = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self.capacity,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )

    def submit(self, task: RunTask) -> Any:
        return self._pool.submit(execute_task, task)

    def wait_first(self, handles: dict[Any, RunTask]) -> list[tuple[Any, Outcome]]:
        done, _ = cf.wait(list(handles), return_when=cf.FIRST_COMPLETED)
        out = []
        broken = False
        for fut in done:
            task = handles[fut]
            try:
                out.append((fut, fut.result()))
            except cf.process.BrokenProcessPool as exc:
                broken = True
                out.append((fut, Outcome(task.hash, False, error=f"worker process died: {exc}")))
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                out.append((fut, Outcome(task.hash, False, error=f"{type(exc).__name__}: {exc}")))
        if broken:
            for fut, task in handles.items():
                if fut not in done:
                    out.append((fut, Outcome(task.hash, False, error="worker process died (pool broken)")))
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop at once: the workers' runs are abandoned (they stay ``running`` in the ledger and are
        redone on resume), so an interrupted sweep does not wait for them."""
        for proc in list(getattr(self._pool, "_processes", {}).values()):
            proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


DASK_LOGGERS = (
    "distributed",
    "distributed.nanny",
    "distributed.scheduler",
    "distributed.worker",
    "distributed.core",
    "distributed.comm",
    "distributed.batched",
    "distributed.http.proxy",
    "distributed.deploy.spec",
    "distributed.utils_perf",
)


class QuietDaskLogs:
    """ERROR-only Dask logging in this process while a cluster lives, restored afterwards.

    ``LocalCluster(silence_logs=...)`` restores the previous levels inside ``close()``, before the
    nanny and scheduler log their shutdown at INFO; holding the levels (and dask's own logging
    config) from before the cluster starts until after it is closed keeps those lines away.
    """

    def __init__(self) -> None:
        self._levels: dict[str, int] = {}
        self._config: Any = None

    def __enter__(self) -> QuietDaskLogs:
        import logging

        import dask

        for name in DASK_LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)
        self._config = dask.config.set({"distributed.logging.distributed": "error"})
        self._config.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._levels.clear()


class DaskExecutor(Executor):
    """Dask distributed: ``Client(address)``, or a LocalCluster of ``workers`` single-threaded processes.

    Dask's INFO logging is held at ERROR from before the cluster starts until after it is closed
    (:class:`QuietDaskLogs`); a LocalCluster's HTTP server takes a free port (never the busy 8787).
    """

    def __init__(self, address: str | None = None, workers: int = 2) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise ConfigError(
                "executor kind 'dask' needs dask.distributed: pip install 'pce-sim[dask]'"
            ) from exc
        import logging

        self._quiet = QuietDaskLogs().__enter__()
        self._cluster = None
        try:
            if address is None:
                self._cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                )
                self._client = Client(self._cluster)
            else:
                self._client = Client(address, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or an address dask cannot parse
            if self._cluster is not None:
                self._cluster.close()
            self._quiet.__exit__()
            raise ConfigError(f"dask scheduler {address or 'LocalCluster'}: cannot connect ({exc})") from None
        except BaseException:
            self._quiet.__exit__()
            raise
        self.capacity = max(1, sum(self._client.nthreads().values()))

    def submit(self, task: RunTask) -> Any:
        return self._client.submit(
            execute_task, task, pure=False, key=f"pce-run-{task.hash[:16]}-{time.time_ns()}"
        )

    def wait_first(self, handles: dict[Any, RunTask]) -> list[tuple[Any, Outcome]]:
        from dask.distributed import wait

        done, _ = wait(list(handles), return_when="FIRST_COMPLETED")
        out = []
        for fut in done:
            task = handles[fut]
            try:
                out.append((fut, fut.result()))
            except Exception as exc:  # noqa: BLE001 - a lost worker fails this run, not the sweep
                out.append((fut, Outcome(task.hash, False, error=f"dask: {type(exc).__name__}: {exc}")))
            fut.release()
        return out

    def close(self) -> None:
        try:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        finally:
            self._quiet.__exit__()


def make_executor(kind: str, workers: int = 2, address: str | None = None) -> Executor:
    """Executor from a sweep file's ``executor`` section."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "dask":
        return DaskExecutor(address, workers)
    if kind == "serial":
        return SerialExecutor()
    raise ConfigError(f"executor kind '{kind}': allowed: local, dask, serial")
