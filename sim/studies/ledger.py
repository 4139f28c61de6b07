"""Resumable SQLite ledger of a sweep: one row per scenario, keyed by the scenario content hash.

Tables
- ``meta``: the sweep name and the fingerprint of its expansion (hash of the ordered scenario hashes),
  so a different sweep is not silently mixed into the same folder.
- ``scenarios``: the current expansion (index, hash, replicate, swept inputs, full config JSON).
- ``runs``: per scenario hash, ``status`` (``running`` / ``done`` / ``failed``), attempt count, error
  text, summary JSON, emboli table JSON, run folder, UTC start/finish, worker wall time, and the
  code that made a done run (:func:`sim.core.provenance.code_digest` and a readable label). A
  scenario hash names the inputs, not the code: a sweep resumed by other code finds done runs it did
  not make (:meth:`Ledger.other_code`) and the sweep refuses, re-runs or keeps them as asked.

The database runs in WAL mode with ``synchronous=FULL``; every state change is one
``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction, so a process killed at any instant leaves either the
old or the new row, never half of one. Only the sweep's parent process writes (workers return their
results to it). A run found ``running`` when a sweep starts was interrupted (its process died) and is
run again; ``done`` runs are skipped. An exclusive ``flock`` on ``<dir>/.sweep.lock`` keeps two
sweeps from driving the same ledger at once (the kernel drops it when the holder dies).

Versions. ``meta`` records the ledger's schema (2 since the code columns); a ledger of a higher schema
is refused on open by name (before anything is written to it), an older one is upgraded in place.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.core.errors import ConfigError

# Schema 2 (December 2026) added the code of each done run. A ledger records its schema in ``meta``;
# one written by a newer pce-sim (a higher schema) is refused on open rather than half understood.
SCHEMA_VERSION = "2"
STATUSES = ("running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenarios (
    idx INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    replicate INTEGER NOT NULL,
    inputs_json TEXT NOT NULL,
    config_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    hash TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    summary_json TEXT,
    emboli_json TEXT,
    run_dir TEXT,
    started_utc TEXT,
    finished_utc TEXT,
    wall_time_s REAL,
    code_digest TEXT,
    code_label TEXT
);
"""
# columns added after the first ledgers were written: (name, SQL type), added on open when missing
_ADDED_RUN_COLUMNS = (("code_digest", "TEXT"), ("code_label", "TEXT"))


def _schema_readable(schema: str) -> bool:
    """A recorded schema this code reads: a whole number up to :data:`SCHEMA_VERSION`."""
    return schema.isascii() and schema.isdigit() and int(schema) <= int(SCHEMA_VERSION)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def to_json(value: Any) -> str:
    """JSON with numpy values unwrapped and non-finite floats as null (floats round-trip exactly)."""
    return json.dumps(plain_json_value(value), sort_keys=False, allow_nan=False)


def plain_json_value(value: Any) -> Any:
    """Numpy scalars/arrays to Python values, non-finite floats to None (JSON-safe, exact floats)."""
    if isinstance(value, dict):
        return {str(k): plain_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json_value(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json_value(value.tolist())
    if isinstance(value, np.generic):
        return plain_json_value(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class LedgerRow:
    """One scenario of the current expansion joined with its run record (if any)."""

    index: int
    hash: str
    replicate: int
    inputs: dict[str, Any]
    config: dict[str, Any]
    status: str | None
    attempts: int
    error: str | None
    summary: dict[str, Any] | None
    emboli: dict[str, list[Any]] | None
    run_dir: str | None
    started_utc: str | None
    finished_utc: str | None
    wall_time_s: float | None
    code_digest: str | None = None
    code_label: str | None = None


class Ledger:
    """The SQLite ledger of one sweep folder (open with :func:`open_ledger`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        """Refuse a newer schema, then WAL mode, the tables, the columns added since schema 1, the schema."""
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        found = self.meta("schema") if has_meta else None
        if found is not None and not _schema_readable(found):
            raise ConfigError(
                f"{self.path}: written by a newer pce-sim (ledger schema {found!r}; this one reads "
                f"schema {SCHEMA_VERSION} and older): resume it with that version, or use another --out"
            )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self.transaction() as cur:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    cur.execute(statement)
            have = {row[1] for row in cur.execute("PRAGMA table_info(runs)")}
            for name, kind in _ADDED_RUN_COLUMNS:
                if name not in have:  # a ledger written before the column existed: its runs say NULL
                    cur.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            if found != SCHEMA_VERSION:  # written once, not at every open (readers open it too)
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", [SCHEMA_VERSION])

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One atomic write: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    # ------------------------------------------------------------------ expansion

    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def register_expansion(
        self,
        name: str,
        fingerprint: str,
        scenarios: Sequence[tuple[int, str, int, dict[str, Any], dict[str, Any]]],
        force: bool = False,
    ) -> None:
        """Record the sweep's scenarios (index, hash, replicate, inputs, config).

        A folder that already holds a different expansion is refused unless ``force``; with
        ``force`` the scenario list is replaced and runs already done for hashes that are still
        in the sweep are kept (a hash identifies the exact scenario, so its result is still valid).
        """
        old = self.meta("fingerprint")
        if old is not None and old != fingerprint and not force:
            n_old = self._conn.execute("SELECT COUNT(*) FROM scenarios").fetchone()[0]
            raise ConfigError(
                f"{self.path.parent}: holds a different sweep ('{self.meta('name')}', {n_old} scenarios, "
                f"expansion {old[:12]}; this file expands to {len(scenarios)} scenarios, "
                f"{fingerprint[:12]}); use another --out folder, or --force to switch this folder "
                "to the new sweep"
            )
        if old == fingerprint:
            return
        with self.transaction() as cur:
            cur.execute("DELETE FROM scenarios")
            cur.executemany(
                "INSERT INTO scenarios (idx, hash, replicate, inputs_json, config_json) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i, h, r, to_json(inp), to_json(cfg)) for i, h, r, inp, cfg in scenarios],
            )
            for key, value in (("name", name), ("fingerprint", fingerprint)):  # the schema: written on open
                cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ run states

    def pending(self, retry_failed: bool = True, rerun_other_than: str | None = None) -> list[str]:
        """Hashes of the current expansion still to run, in index order (interrupted runs included).

        With ``rerun_other_than`` (a code digest), done runs made by other code are pending too.
        """
        skip = ("done",) if retry_failed else ("done", "failed")
        other = ""
        if rerun_other_than is not None:
            other = " OR (r.status = 'done' AND (r.code_digest IS NULL OR r.code_digest != ?))"
        rows = self._conn.execute(
            "SELECT s.hash FROM scenarios s LEFT JOIN runs r ON r.hash = s.hash "
            f"WHERE r.status IS NULL OR r.status NOT IN ({','.join('?' * len(skip))}){other} "
            "ORDER BY s.idx",
            (*skip, rerun_other_than) if other else skip,
        ).fetchall()
        return [r[0] for r in rows]

    def other_code(self, digest: str, among: Collection[str] | None = None) -> list[tuple[str, str | None]]:
        """Done runs not made by the code ``digest``: (hash, code label), in hash order; only those whose
        hash is in ``among`` when given (a sweep's or cohort's scenarios), else every run the ledger holds.

        A run recorded before the ledger kept the code has label None (its code is unknown).
        """
        rows = self._conn.execute(
            "SELECT hash, code_label FROM runs "
            "WHERE status = 'done' AND (code_digest IS NULL OR code_digest != ?) ORDER BY hash",
            (digest,),
        ).fetchall()
        return [(h, label) for h, label in rows if among is None or h in among]

    def mark_running(self, digest: str) -> int:
        """Record that a run is starting; returns its attempt number (1 for the first try)."""
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO runs (hash, status, attempts, started_utc) VALUES (?, 'running', 1, ?) "
                "ON CONFLICT(hash) DO UPDATE SET status = 'running', attempts = attempts + 1, "
                "error = NULL, started_utc = excluded.started_utc, finished_utc = NULL, "
                "code_digest = NULL, code_label = NULL",
                (digest, utc_now()),
            )
            return int(cur.execute("SELECT attempts FROM runs WHERE hash = ?", (digest,)).fetchone()[0])

    def record_done(
        self,
        digest: str,
        summary: dict[str, Any],
        emboli: dict[str, Any],
        run_dir: str,
        wall_time_s: float,
        code: tuple[str, str] | None = None,
    ) -> None:
        """Record a finished run; ``code`` = (digest, label) of the code that made it, default this one."""
        code_digest, code_label = code if code is not None else _this_code()
        with self.transaction() as cur:
            cur.execute(
                "UPDATE runs SET status = 'done', error = NULL, summary_json = ?, emboli_json = ?, "
                "run_dir = ?, finished_utc = ?, wall_time_s = ?, code_digest = ?, code_label = ? "
                "WHERE hash = ? AND status = 'running'",
                (
                    to_json(summary),
                    to_json(emboli),
                    run_dir,
                    utc_now(),
                    float(wall_time_s),
                    code_digest,
                    code_label,
                    digest,
                ),
            )
            if cur.rowcount != 1:
                raise ConfigError(
                    f"{self.path}: run {digest[:12]} finished but was never marked running (or already done)"
                )

    def record_failed(self, digest: str, error: str, wall_time_s: float | None = None) -> None:
        with self.transaction() as cur:
            cur.execute(
                "UPDATE runs SET status = 'failed', error = ?, summary_json = NULL, emboli_json = NULL, "
                "finished_utc = ?, wall_time_s = ? WHERE hash = ? AND status = 'running'",
                (error, utc_now(), wall_time_s, digest),
            )
            if cur.rowcount != 1:
                raise ConfigError(
                    f"{self.path}: run {digest[:12]} failed but was never marked running (or already done)"
                )

    # ------------------------------------------------------------------ reading

    def counts(self) -> dict[str, int]:
        """Number of scenarios of the current expansion per status ('pending' = never started)."""
        out = {"pending": 0, **{s: 0 for s in STATUSES}}
        for status, n in self._conn.execute(
            "SELECT COALESCE(r.status, 'pending'), COUNT(*) FROM scenarios s "
            "LEFT JOIN runs r ON r.hash = s.hash GROUP BY 1"
        ):
            out[status] = n
        return out

    def rows(self) -> list[LedgerRow]:
        """Every scenario of the current expansion with its run record, in index order."""
        cur = self._conn.execute(
            "SELECT s.idx, s.hash, s.replicate, s.inputs_json, s.config_json, r.status, "
            "COALESCE(r.attempts, 0), r.error, r.summary_json, r.emboli_json, r.run_dir, "
            "r.started_utc, r.finished_utc, r.wall_time_s, r.code_digest, r.code_label "
            "FROM scenarios s LEFT JOIN runs r ON r.hash = s.hash ORDER BY s.idx"
        )
        out = []
        for row in cur.fetchall():
            out.append(
                LedgerRow(
                    index=row[0],
                    hash=row[1],
                    replicate=row[2],
                    inputs=json.loads(row[3]),
                    config=json.loads(row[4]),
                    status=row[5],
                    attempts=row[6],
                    error=row[7],
                    summary=None if row[8] is None else json.loads(row[8]),
                    emboli=None if row[9] is None else json.loads(row[9]),
                    run_dir=row[10],
                    started_utc=row[11],
                    finished_utc=row[12],
                    wall_time_s=row[13],
                    code_digest=row[14],
                    code_label=row[15],
                )
            )
        return out


def _this_code() -> tuple[str, str]:
    from sim.core.provenance import code_digest, code_label

    return code_digest(), code_label()


@contextmanager
def open_ledger(sweep_dir: str | Path, exclusive: bool = True) -> Iterator[Ledger]:
    """Open ``<sweep_dir>/ledger.sqlite``; with ``exclusive`` hold the folder's sweep lock meanwhile."""
    folder = Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock_fd = None
    if exclusive:
        lock_fd = os.open(folder / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise ConfigError(f"{folder}: another pce-sim sweep is running in this folder") from None
    try:
        ledger = Ledger(folder / "ledger.sqlite")
    except BaseException as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        if not isinstance(exc, sqlite3.DatabaseError):
            raise
        raise ConfigError(f"{folder / 'ledger.sqlite'}: not a usable sweep ledger ({exc})") from None
    try:
        yield ledger
    finally:
        ledger.close()
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)


# ---------------------------------------------------------------------------- exports


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Nested dicts become dotted columns; lists become JSON text; scalars pass through."""
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, list | tuple):
        out[prefix] = json.dumps(plain_json_value(value))
    else:
        out[prefix] = value


def results_table(rows: Sequence[LedgerRow], input_names: Sequence[str]) -> dict[str, list[Any]]:
    """One row per scenario: identity, status, swept inputs (dotted paths), summary metrics, error, code.

    ``code`` is the first 12 hex digits of the code digest that made a done run (empty for a run not
    done, or one recorded before the ledger kept the code).
    """
    metric_names: list[str] = []
    flat_rows = []
    for row in rows:
        flat: dict[str, Any] = {}
        flatten("", row.summary or {}, flat)
        for name in flat:
            if name not in metric_names and name not in input_names:
                metric_names.append(name)
        flat_rows.append(flat)
    table: dict[str, list[Any]] = {
        name: [] for name in ("index", "run_id", "hash", "replicate", "status", *input_names, *metric_names)
    }
    table["error"] = []
    table["code"] = []
    for row, flat in zip(rows, flat_rows, strict=True):
        table["index"].append(row.index)
        table["run_id"].append(row.hash[:12])
        table["hash"].append(row.hash)
        table["replicate"].append(row.replicate)
        table["status"].append(row.status or "pending")
        for name in input_names:
            table[name].append(row.inputs.get(name))
        for name in metric_names:
            table[name].append(flat.get(name))
        table["error"].append(None if row.error is None else row.error.splitlines()[0])
        done_code = row.code_digest if row.status == "done" else None
        table["code"].append(None if done_code is None else done_code[:12])
    return table


def emboli_table(rows: Sequence[LedgerRow]) -> dict[str, list[Any]]:
    """All done runs' emboli tables stacked, each row tagged with its run's index, id and hash."""
    names: list[str] = []
    for row in rows:
        for name in row.emboli or {}:
            if name not in names:
                names.append(name)
    table: dict[str, list[Any]] = {name: [] for name in ("index", "run_id", "hash", *names)}
    for row in rows:
        if row.status != "done" or not row.emboli:
            continue
        n = max((len(v) for v in row.emboli.values()), default=0)
        table["index"].extend([row.index] * n)
        table["run_id"].extend([row.hash[:12]] * n)
        table["hash"].extend([row.hash] * n)
        for name in names:
            column = row.emboli.get(name)
            table[name].extend(column if column is not None and len(column) == n else [None] * n)
    return table


def write_csv(path: Path, table: dict[str, list[Any]]) -> None:
    """CSV with exact float text (repr) and empty cells for missing values; written atomically."""
    import csv

    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(table))
        for values in zip(*table.values(), strict=True):
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    os.replace(tmp, path)


def write_parquet(path: Path, table: dict[str, list[Any]]) -> bool:
    """Parquet version of a table when pyarrow is installed; returns whether it was written."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    arrays = {}
    for name, values in table.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arrays[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    tmp = path.with_name(f".{path.name}.partial")
    pq.write_table(pa.table(arrays), tmp)
    os.replace(tmp, path)
    return True


def export_tables(ledger: Ledger, out_dir: Path, input_names: Sequence[str]) -> list[Path]:
    """Write results.csv and emboli.csv (+ .parquet when pyarrow is available) into ``out_dir``."""
    rows = ledger.rows()
    written = []
    for stem, table in (("results", results_table(rows, input_names)), ("emboli", emboli_table(rows))):
        write_csv(out_dir / f"{stem}.csv", table)
        written.append(out_dir / f"{stem}.csv")
        if write_parquet(out_dir / f"{stem}.parquet", table):
            written.append(out_dir / f"{stem}.parquet")
    return written
