"""The node's journal: one SQLite row per received series and its state, durable across crashes.

States: ``receiving`` (instances arriving) → ``queued`` (complete, waiting for a worker) → ``processing``
→ ``sending`` (results on disk, delivery pending or being retried) → ``sent``; or ``failed`` (with the last
error). ``attempts`` counts delivery attempts, ``process_attempts`` processing attempts. ``generation``
grows with every received instance, so a result computed from an older set of instances is never sent.

The database uses WAL and ``synchronous=FULL``: a committed row survives a power cut, and ``--status``
reads it from another process while the node writes. Times are Unix seconds (float).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATES = ("receiving", "queued", "processing", "sending", "sent", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    updated REAL NOT NULL,
    process_attempts INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '[]',
    sent_at REAL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
"""


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    modality: str
    calling_ae: str
    destination: str
    state: str
    n_instances: int
    generation: int
    first_seen: float
    last_seen: float
    updated: float
    process_attempts: int
    attempts: int
    next_attempt_at: float
    last_error: str
    outputs: list[str]
    sent_at: float | None


class Journal:
    """Thread-safe access to ``journal.sqlite`` (one connection guarded by a lock)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            cur = self._db.execute(sql, args)
            return cur.rowcount

    # --- receiving -------------------------------------------------------------------------------

    def record_instance(
        self,
        series_uid: str,
        study_uid: str,
        sop_uid: str,
        modality: str,
        calling_ae: str,
        destination: str,
        now: float | None = None,
    ) -> None:
        """Note one instance that is already on disk; the series (re)enters ``receiving``."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO instances(sop_uid, series_uid, received) VALUES (?, ?, ?)",
                    (sop_uid, series_uid, now),
                )
                n = self._db.execute(
                    "SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series_uid,)
                ).fetchone()[0]
                self._db.execute(
                    """INSERT INTO series(series_uid, study_uid, modality, calling_ae, destination, state,
                                          n_instances, generation, first_seen, last_seen, updated)
                       VALUES (?, ?, ?, ?, ?, 'receiving', ?, 1, ?, ?, ?)
                       ON CONFLICT(series_uid) DO UPDATE SET
                         state = 'receiving', n_instances = excluded.n_instances,
                         generation = generation + 1, last_seen = excluded.last_seen,
                         updated = excluded.updated, calling_ae = excluded.calling_ae,
                         destination = excluded.destination, process_attempts = 0, attempts = 0,
                         last_error = ''""",
                    (series_uid, study_uid, modality, calling_ae, destination, n, now, now, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def queue_quiet(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Move series with no new instance for ``quiet_s`` seconds from ``receiving`` to ``queued``."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT series_uid FROM series WHERE state = 'receiving' AND last_seen <= ?", (now - quiet_s,)
            ).fetchall()
            uids = [r[0] for r in rows]
            for uid in uids:
                self._db.execute(
                    "UPDATE series SET state = 'queued', updated = ? "
                    "WHERE series_uid = ? AND state = 'receiving'",
                    (now, uid),
                )
        return uids

    def queue_now(self, series_uid: str) -> bool:
        """Queue a series at once (its association was released); True if it was ``receiving``."""
        n = self._write(
            "UPDATE series SET state = 'queued', updated = ? WHERE series_uid = ? AND state = 'receiving'",
            (time.time(), series_uid),
        )
        return n > 0

    # --- processing ------------------------------------------------------------------------------

    def claim_queued(self, limit: int) -> list[SeriesRow]:
        """Up to ``limit`` queued series, oldest first, now in ``processing``."""
        if limit <= 0:
            return []
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM series WHERE state = 'queued' ORDER BY last_seen LIMIT ?", (limit,)
            ).fetchall()
            for r in rows:
                self._db.execute(
                    """UPDATE series SET state = 'processing', process_attempts = process_attempts + 1,
                       updated = ? WHERE series_uid = ?""",
                    (now, r["series_uid"]),
                )
        return [self._row(r, state="processing", process_attempts=r["process_attempts"] + 1) for r in rows]

    def processed(self, series_uid: str, generation: int, outputs: list[str]) -> bool:
        """Results are on disk: ``processing`` → ``sending``. False if newer instances arrived meanwhile."""
        n = self._write(
            """UPDATE series SET state = 'sending', outputs = ?, attempts = 0, next_attempt_at = 0,
               last_error = '', updated = ?
               WHERE series_uid = ? AND state = 'processing' AND generation = ?""",
            (json.dumps(outputs), time.time(), series_uid, generation),
        )
        return n > 0

    def processing_failed(self, series_uid: str, generation: int, error: str, retry: bool) -> None:
        """Back to ``queued`` (``retry``) or ``failed``, unless newer instances arrived meanwhile."""
        self._write(
            """UPDATE series SET state = ?, last_error = ?, updated = ?
               WHERE series_uid = ? AND state = 'processing' AND generation = ?""",
            ("queued" if retry else "failed", error[:500], time.time(), series_uid, generation),
        )

    # --- delivery --------------------------------------------------------------------------------

    def due_for_delivery(self, now: float | None = None, exclude: set[str] | None = None) -> list[SeriesRow]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM series WHERE state = 'sending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at",
                (now,),
            ).fetchall()
        skip = exclude or set()
        return [self._row(r) for r in rows if r["series_uid"] not in skip]

    def delivered(self, series_uid: str, generation: int) -> bool:
        now = time.time()
        n = self._write(
            """UPDATE series SET state = 'sent', attempts = attempts + 1, sent_at = ?, last_error = '',
               updated = ? WHERE series_uid = ? AND state = 'sending' AND generation = ?""",
            (now, now, series_uid, generation),
        )
        return n > 0

    def delivery_failed(
        self, series_uid: str, generation: int, error: str, next_attempt_at: float | None
    ) -> None:
        """Count a failed attempt; retry at ``next_attempt_at``, or ``failed`` when it is None."""
        self._write(
            """UPDATE series SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ?,
               updated = ? WHERE series_uid = ? AND state = 'sending' AND generation = ?""",
            (
                "sending" if next_attempt_at is not None else "failed",
                error[:500],
                next_attempt_at or 0.0,
                time.time(),
                series_uid,
                generation,
            ),
        )

    # --- restart and status ----------------------------------------------------------------------

    def recover(self) -> int:
        """After a crash: series caught in ``processing`` go back to ``queued``. Returns how many."""
        return self._write(
            "UPDATE series SET state = 'queued', updated = ? WHERE state = 'processing'", (time.time(),)
        )

    def get(self, series_uid: str) -> SeriesRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return None if r is None else self._row(r)

    def rows(self) -> list[SeriesRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM series ORDER BY first_seen").fetchall()
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    @staticmethod
    def _row(r: sqlite3.Row, **override: Any) -> SeriesRow:
        values = {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row is not a mapping
        values["outputs"] = json.loads(values["outputs"] or "[]")
        values.update(override)
        return SeriesRow(**values)
