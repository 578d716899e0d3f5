"""The batch writer: ledger rows buffered in this worker, written off the request path.

A request only appends its row to a bounded buffer. A background greenlet writes the buffer
in batches, when BATCH_ROWS rows wait or every FLUSH_INTERVAL seconds. A database that is
down or slow delays the batch, never a request: rows stay buffered and are written when it
answers again. Past the bound, new rows are dropped and counted (metric and log line), never
silently. A stopping worker flushes (`flush_all`).

psycopg 3 yields to gevent while PostgreSQL works. SQLite's calls hold the worker for the
insert (about 10 ms per 500 rows here), once per batch; its lock waits are cut short
(database.WRITER_BUSY_TIMEOUT) and the batch retried. Not a thread: it measured no cheaper,
and every row of an executemany hands the GIL back and forth with the request greenlets.
"""
from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import RLock
from sqlalchemy import Engine, insert
from sqlalchemy.exc import SQLAlchemyError

from app.ledger.tables import ledger
from app.observe import metrics

log = logging.getLogger(__name__)

BATCH_ROWS = 500
FLUSH_INTERVAL = 1.0
DROP_LOG_INTERVAL = 10.0  # seconds between two "rows dropped" lines while the buffer stays full

_writers: weakref.WeakSet[BatchWriter] = weakref.WeakSet()


class BatchWriter:
    """This worker's buffer of ledger rows and the greenlet that writes them."""

    def __init__(self, engine: Engine, *, max_buffered: int, interval: float = FLUSH_INTERVAL,
                 batch_rows: int = BATCH_ROWS, maintenance: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.max_buffered = max_buffered
        self.interval = interval
        self.batch_rows = batch_rows
        self.maintenance = maintenance  # run between batches (retention pruning)
        self.buffer: deque[dict[str, Any]] = deque()
        self.written = 0
        self.dropped = 0
        self._dropped_logged_at = 0.0
        self._down_since: float | None = None
        self._wake = Event()
        self._writing = RLock()  # the greenlet and a final flush never write the same rows twice
        self._greenlet: gevent.Greenlet | None = None
        _writers.add(self)

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one row (never blocks); dropped and counted when the buffer is full."""
        if len(self.buffer) >= self.max_buffered:
            self._drop()
            return
        self.buffer.append(row)
        metrics.LEDGER_BUFFERED.inc()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        if len(self.buffer) >= self.batch_rows:
            self._wake.set()

    def flush(self) -> bool:
        """Write every buffered row now; False when the database did not take them all."""
        with self._writing:
            while self.buffer:
                if not self._write_batch():
                    return False
        return True

    def close(self) -> bool:
        """Stop the background greenlet once its current batch is written, then flush the rest."""
        with self._writing:  # waits for a batch in progress: killing it mid-write could write it twice
            if self._greenlet is not None:
                self._greenlet.kill()
                self._greenlet = None
            return self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._writing:
                while self.buffer and self._write_batch():
                    gevent.sleep(0)  # let requests run between batches
            if self.maintenance is not None and self._down_since is None:
                self.maintenance()

    def _write_batch(self) -> bool:
        rows = list(islice(self.buffer, self.batch_rows))
        try:
            self._insert(rows)
        except SQLAlchemyError as exc:
            self._failed(exc)
            return False
        for _ in rows:  # only now: rows leave the buffer once the database has them
            self.buffer.popleft()
        self.written += len(rows)
        metrics.LEDGER_BUFFERED.dec(len(rows))
        metrics.LEDGER_ROWS.labels("written").inc(len(rows))
        if self._down_since is not None:
            log.warning("ledger database answers again after %.1f s: writing the %d buffered rows",
                        time.monotonic() - self._down_since, len(self.buffer) + len(rows))
            self._down_since = None
        return True

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(ledger), rows)

    def _failed(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("ledger database unreachable (%s): %d rows wait in this worker's buffer (bound %d), "
                        "retrying every %g s", type(exc).__name__, len(self.buffer), self.max_buffered,
                        self.interval)

    def _drop(self) -> None:
        self.dropped += 1
        metrics.LEDGER_ROWS.labels("dropped").inc()
        now = time.monotonic()
        if now - self._dropped_logged_at >= DROP_LOG_INTERVAL:
            self._dropped_logged_at = now
            log.error("ledger buffer full (%d rows, SLUICE_LEDGER_BUFFER): dropping usage rows until the database "
                      "answers; %d dropped by this worker so far", self.max_buffered, self.dropped)


def flush_all() -> None:
    """Flush every writer of this process: a worker that stops or reloads loses no row it can write."""
    for writer in list(_writers):
        if writer.buffer and not writer.close():
            log.error("ledger: %d rows could not be written before the worker stopped (database unreachable)",
                      len(writer.buffer))
