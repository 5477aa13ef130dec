"""The running node: listener, scheduler, worker processes and delivery, tied together by the journal.

Spool layout (``config.spool_dir``)::

    journal.sqlite                      series states (see :mod:`.journal`)
    incoming/<series>/<sop>.dcm         received instances, fsync'ed before C-STORE success is answered
    results/<series>/                   result files of the last processing of a series

One scheduler thread moves series along: ``receiving`` → ``queued`` after the quiet period; ``queued`` →
``processing`` when a worker process is free (a ``ProcessPoolExecutor`` whose workers load the model once);
``sending`` → ``sent`` by a delivery thread, retried with exponential back-off. Stopping the node (or
killing it) leaves the journal consistent: on the next start series caught in ``processing`` are queued
again and pending deliveries resume.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..batch import safe_name
from ..model.inference import usable_cores
from .config import NodeConfig
from .journal import Journal, SeriesRow
from .scp import Receiver, short_uid
from .sender import DeliveryError, send
from .worker import PipelineSettings, init_worker, run_job

LOG = logging.getLogger("backmice.node")
TICK_S = 0.2


class Node:
    """A DICOM node for one :class:`NodeConfig`. ``start()`` returns once it listens; ``stop()`` ends it."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.spool = config.spool_dir
        self.incoming = self.spool / "incoming"
        self.results = self.spool / "results"
        self.journal: Journal | None = None
        self.port: int = config.port
        self._server: Any = None
        self._pool: ProcessPoolExecutor | None = None
        self._delivery = ThreadPoolExecutor(max_workers=max(2, config.workers), thread_name_prefix="deliver")
        self._jobs: dict[Future[tuple[list[str], str]], SeriesRow] = {}
        self._sending: dict[Future[None], SeriesRow] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        threads = max(1, usable_cores() // config.workers)
        self.settings = PipelineSettings(
            pipeline=config.pipeline,
            outputs=config.outputs,
            model=config.model,
            device=config.device,
            precision=config.precision,
            processing_delay_s=config.processing_delay_s,
            threads=threads,
        )

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for d in (self.incoming, self.results):
            d.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.spool / "journal.sqlite")
        recovered = self.journal.recover()
        if recovered:
            LOG.info("restart: %d series interrupted in processing are queued again", recovered)
        pending = self.journal.counts()
        if any(pending.get(s) for s in ("receiving", "queued", "sending")):
            LOG.info("restart: pending series %s", {k: v for k, v in pending.items() if k != "sent"})
        self._pool = self._new_pool()
        receiver = Receiver(self.config, self.journal, self.incoming)
        ae = receiver.make_ae()
        ssl_context = self.config.tls.context() if self.config.tls else None
        self._server = ae.start_server(
            (self.config.bind_address, self.config.port),
            block=False,
            evt_handlers=receiver.handlers(),
            ssl_context=ssl_context,
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._loop, name="node-scheduler", daemon=True)
        self._thread.start()
        LOG.info(
            "listening: AE %s on %s:%d%s, %d worker(s), pipeline %s",
            self.config.ae_title,
            self.config.bind_address,
            self.port,
            " (TLS)" if ssl_context else "",
            self.config.workers,
            self.config.pipeline,
        )

    def stop(self) -> None:
        """Stop listening and scheduling. Series in processing stay journaled and resume on restart."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            # Workers busy on a series are terminated: the journal still says "processing", so the series
            # is processed again after the restart (the executor offers no public way to do this).
            workers = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.terminate()
        self._delivery.shutdown(wait=True, cancel_futures=True)
        if self.journal is not None:
            self.journal.close()
        LOG.info("stopped")

    def serve_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM."""
        import signal

        def _terminate(signum: int, frame: Any) -> None:
            self._stop.set()

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=mp.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.settings, os.getpid()),
        )

    # --- scheduling ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the scheduler must survive anything; the journal keeps the state
                LOG.exception("scheduler error")
            self._stop.wait(TICK_S)

    def _tick(self) -> None:
        journal = self.journal
        assert journal is not None and self._pool is not None
        for uid in journal.queue_quiet(self.config.quiet_period_s):
            LOG.info("series %s queued (quiet for %.1f s)", short_uid(uid), self.config.quiet_period_s)
        self._collect_jobs()
        for row in journal.claim_queued(self.config.workers - len(self._jobs)):
            key = safe_name(row.series_uid)
            LOG.info(
                "series %s processing: %s, %d instance(s), attempt %d",
                short_uid(row.series_uid),
                row.modality or "?",
                row.n_instances,
                row.process_attempts,
            )
            try:
                fut = self._pool.submit(
                    run_job, str(self.incoming / key), str(self.results / key), self.settings
                )
            except BrokenProcessPool:
                self._pool = self._new_pool()
                fut = self._pool.submit(
                    run_job, str(self.incoming / key), str(self.results / key), self.settings
                )
            self._jobs[fut] = row
        self._collect_deliveries()
        busy = {row.series_uid for row in self._sending.values()}
        for row in journal.due_for_delivery(exclude=busy):
            dest = self.config.destinations.get(row.destination)
            if dest is None:
                journal.delivery_failed(row.series_uid, row.generation, "destination not configured", None)
                continue
            files = [self.spool / p for p in row.outputs]
            self._sending[self._delivery.submit(send, files, dest, self.config.ae_title)] = row

    def _collect_jobs(self) -> None:
        journal = self.journal
        assert journal is not None
        broken = False
        for fut in [f for f in self._jobs if f.done()]:
            row = self._jobs.pop(fut)
            uid = short_uid(row.series_uid)
            try:
                paths, error = fut.result()
            except BrokenProcessPool:
                broken = True
                retry = row.process_attempts < self.config.max_process_attempts
                journal.processing_failed(row.series_uid, row.generation, "worker process died", retry)
                LOG.error("series %s: worker process died%s", uid, ", queued again" if retry else "")
                continue
            if error:
                journal.processing_failed(row.series_uid, row.generation, error, retry=False)
                LOG.error("series %s failed: %s", uid, error)
                continue
            rel = [str(Path(p).relative_to(self.spool)) for p in paths]
            if journal.processed(row.series_uid, row.generation, rel):
                LOG.info("series %s processed: %d result file(s)", uid, len(rel))
            else:
                LOG.info("series %s changed while processing; it will be processed again", uid)
        if broken:
            assert self._pool is not None
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def _collect_deliveries(self) -> None:
        journal = self.journal
        assert journal is not None
        for fut in [f for f in self._sending if f.done()]:
            row = self._sending.pop(fut)
            uid = short_uid(row.series_uid)
            exc = fut.exception()
            if exc is None:
                if journal.delivered(row.series_uid, row.generation):
                    LOG.info(
                        "series %s sent: %d file(s) to %s, attempt %d",
                        uid,
                        len(row.outputs),
                        row.destination,
                        row.attempts + 1,
                    )
                continue
            error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            attempt = row.attempts + 1
            if attempt >= self.config.max_delivery_attempts:
                journal.delivery_failed(row.series_uid, row.generation, error, None)
                LOG.error("series %s delivery failed after %d attempts: %s", uid, attempt, error)
            else:
                delay = self.config.backoff_s(attempt)
                journal.delivery_failed(row.series_uid, row.generation, error, time.time() + delay)
                LOG.warning(
                    "series %s delivery attempt %d failed (%s); retry in %.1f s", uid, attempt, error, delay
                )
