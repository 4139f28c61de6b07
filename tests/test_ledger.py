"""Sweep ledger (sim.studies.ledger): rows survive reopening and crashes, documented states, one driver."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sim.core.errors import ConfigError
from sim.studies.ledger import export_tables, open_ledger, results_table

ROOT = Path(__file__).resolve().parent.parent


def scenarios(n=3, tag="a"):
    """(index, hash, replicate, inputs, config) rows as the sweep registers them."""
    return [(i, f"{tag}{i:063d}", i % 2, {"x": 0.1 * i}, {"name": f"s{i}", "x": 0.1 * i}) for i in range(n)]


def register(ledger, rows, fingerprint="fp-1", force=False):
    ledger.register_expansion("sweep", fingerprint, rows, force=force)


def test_registered_rows_are_read_back_after_reopening(tmp_path):
    """Scenarios and run records are durable: a new connection sees exactly what was written."""
    rows = scenarios(3)
    with open_ledger(tmp_path) as led:
        register(led, rows)
        assert led.pending() == [r[1] for r in rows]
        assert led.mark_running(rows[0][1]) == 1
        led.record_done(rows[0][1], {"a": 0.1 + 0.2, "b": np.float64(1 / 3), "c": np.arange(3)}, {"d": [1.5]},
                        "runs/0", 2.5)  # fmt: skip
    with open_ledger(tmp_path) as led:
        got = led.rows()
        assert [(r.index, r.hash, r.replicate, r.inputs, r.config) for r in got] == [
            (i, h, rep, inp, cfg) for i, h, rep, inp, cfg in rows
        ]
        done = got[0]
        assert (done.status, done.attempts, done.run_dir, done.wall_time_s) == ("done", 1, "runs/0", 2.5)
        assert done.summary == {"a": 0.1 + 0.2, "b": 1 / 3, "c": [0, 1, 2]}  # floats round-trip exactly
        assert done.emboli == {"d": [1.5]}
        assert done.started_utc and done.finished_utc and done.started_utc <= done.finished_utc
        assert [r.status for r in got[1:]] == [None, None]
        assert led.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 0}
        assert led.meta("fingerprint") == "fp-1" and led.meta("name") == "sweep"


def test_status_transitions_and_retries(tmp_path):
    """running -> done | failed; failed runs are retried (or skipped), attempts count every start."""
    rows = scenarios(3)
    h0, h1, h2 = (r[1] for r in rows)
    with open_ledger(tmp_path) as led:
        register(led, rows)
        led.mark_running(h0)
        led.record_done(h0, {"m": 1.0}, {}, "r0", 1.0)
        led.mark_running(h1)
        led.record_failed(h1, "Traceback...\nSolverError: no convergence", 0.5)
        row1 = led.rows()[1]
        assert row1.status == "failed" and row1.error.startswith("Traceback") and row1.summary is None
        assert led.pending() == [h1, h2]  # done is skipped, failed is retried
        assert led.pending(retry_failed=False) == [h2]
        assert led.mark_running(h1) == 2
        row1 = led.rows()[1]
        assert (row1.status, row1.attempts, row1.error, row1.finished_utc) == ("running", 2, None, None)
        led.record_done(h1, {"m": 2.0}, {}, "r1", 1.0)
        assert led.pending() == [h2]
        assert led.counts() == {"pending": 1, "running": 0, "done": 2, "failed": 0}
        with pytest.raises(ConfigError, match="never marked running"):
            led.record_done(h2, {}, {}, "r2", 1.0)
        with pytest.raises(ConfigError, match="never marked running"):
            led.record_failed(h2, "boom")
        assert led.rows()[2].status is None


def test_non_finite_summary_values_are_stored_as_null(tmp_path):
    """JSON has no nan/inf: they are written as null (a missing metric), numpy values unwrapped."""
    with open_ledger(tmp_path) as led:
        register(led, scenarios(1))
        h = led.rows()[0].hash
        led.mark_running(h)
        led.record_done(
            h, {"t": math.nan, "p": np.inf, "n": np.int64(3)}, {"x": np.array([np.nan, 2.0])}, "r", 0.1
        )
        row = led.rows()[0]
        assert row.summary == {"t": None, "p": None, "n": 3} and row.emboli == {"x": [None, 2.0]}


def test_a_run_interrupted_by_a_crash_is_run_again(tmp_path):
    """A process killed mid-run leaves its row 'running'; the next sweep sees it pending and retries it,
    and the dead holder's folder lock is gone."""
    rows = scenarios(2)
    with open_ledger(tmp_path) as led:
        register(led, rows)
    crash = textwrap.dedent(
        f"""
        import os
        from sim.studies.ledger import open_ledger
        with open_ledger({str(tmp_path)!r}) as led:
            led.mark_running({rows[0][1]!r})
            os._exit(9)  # killed: no cleanup, no unlock
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", crash], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 9, proc.stderr
    with open_ledger(tmp_path) as led:  # exclusive: the kernel dropped the dead process's lock
        row = led.rows()[0]
        assert (row.status, row.attempts, row.finished_utc) == ("running", 1, None)
        assert led.pending() == [rows[0][1], rows[1][1]]
        assert led.mark_running(rows[0][1]) == 2
        led.record_done(rows[0][1], {"m": 1.0}, {}, "r", 1.0)
        assert len(led.rows()) == 2  # retried in place: no duplicate row


def test_registering_again_adds_no_duplicates(tmp_path):
    """Resuming the same sweep re-registers its expansion without touching scenarios or results."""
    rows = scenarios(3)
    with open_ledger(tmp_path) as led:
        register(led, rows)
        led.mark_running(rows[1][1])
        led.record_done(rows[1][1], {"m": 1.0}, {}, "r", 1.0)
    with open_ledger(tmp_path) as led:
        register(led, rows)
        assert [r.hash for r in led.rows()] == [r[1] for r in rows]
        assert led.rows()[1].status == "done" and led.pending() == [rows[0][1], rows[2][1]]


def test_a_different_sweep_is_refused_unless_forced_and_forcing_keeps_valid_results(tmp_path):
    """Another expansion in the same folder is an error; with force the scenario list is replaced and
    results of scenarios still in the sweep (same content hash) are kept."""
    old = scenarios(3)
    with open_ledger(tmp_path) as led:
        register(led, old)
        for r in old[:2]:
            led.mark_running(r[1])
            led.record_done(r[1], {"m": float(r[0])}, {}, "r", 1.0)
        new = [old[1], *scenarios(2, tag="b")]
        new = [(i, h, rep, inp, cfg) for i, (_, h, rep, inp, cfg) in enumerate(new)]
        with pytest.raises(ConfigError, match="holds a different sweep"):
            register(led, new, fingerprint="fp-2")
        assert [r.hash for r in led.rows()] == [r[1] for r in old]
        register(led, new, fingerprint="fp-2", force=True)
        got = led.rows()
        assert [r.hash for r in got] == [r[1] for r in new]
        assert got[0].status == "done" and got[0].summary == {"m": 1.0}
        assert led.pending() == [new[1][1], new[2][1]]
        assert led.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 0}


def test_second_exclusive_open_fails_clearly_and_the_lock_is_released_on_close(tmp_path):
    """One sweep drives a folder at a time; readers (exclusive=False) may look meanwhile."""
    with open_ledger(tmp_path) as led:
        register(led, scenarios(2))
        with pytest.raises(ConfigError, match="another pce-sim sweep is running in this folder"):
            with open_ledger(tmp_path):
                pass
        with open_ledger(tmp_path, exclusive=False) as reader:
            assert len(reader.rows()) == 2
    with open_ledger(tmp_path) as led:  # released
        assert len(led.rows()) == 2


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path):
    """A corrupt or foreign ledger.sqlite is a ConfigError naming the file, and the lock is released."""
    (tmp_path / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a usable sweep ledger"):
        with open_ledger(tmp_path):
            pass
    (tmp_path / "ledger.sqlite").unlink()
    with open_ledger(tmp_path) as led:
        assert led.rows() == []


def test_exported_results_table_matches_the_ledger(tmp_path):
    """results.csv: one row per scenario, dotted metric columns, exact float text, first error line."""
    rows = scenarios(3)
    with open_ledger(tmp_path) as led:
        register(led, rows)
        led.mark_running(rows[0][1])
        led.record_done(rows[0][1], {"m": 0.1 + 0.2, "nested": {"k": 2}}, {"d": [1.0, 2.0]}, "r0", 1.0)
        led.mark_running(rows[1][1])
        led.record_failed(rows[1][1], "ValueError: bad\nmore lines")
        table = results_table(led.rows(), ["x"])
        written = export_tables(led, tmp_path, ["x"])
    assert table["status"] == ["done", "failed", "pending"]
    assert table["m"] == [0.1 + 0.2, None, None] and table["nested.k"] == [2, None, None]
    assert table["error"] == [None, "ValueError: bad", None]
    assert tmp_path / "results.csv" in written and tmp_path / "emboli.csv" in written
    with (tmp_path / "results.csv").open() as fh:
        back = list(csv.DictReader(fh))
    assert float(back[0]["m"]) == 0.1 + 0.2 and back[1]["m"] == ""
    with (tmp_path / "emboli.csv").open() as fh:
        emb = list(csv.DictReader(fh))
    assert [e["d"] for e in emb] == ["1.0", "2.0"] and {e["hash"] for e in emb} == {rows[0][1]}
