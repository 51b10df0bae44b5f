"""LISTEN/NOTIFY between ``serve`` replicas on PostgreSQL: a hint that a job may have become claimable.

A replica that answered an enqueue, release, reap, requeue or report sends
``NOTIFY aq_claimable``; every replica (itself included) listens on its own
connection, on its own thread, and wakes its held claims on each
notification. A hint only: a lost notification (the database restarting, a
listener reconnecting) costs at most one ``--claim-recheck`` interval, never
a job. Neither side touches the store's pool, so healthz (503
``store_unavailable`` while the database is down) and the graceful stop are
exactly as without it. Only this module and ``postgres`` import psycopg.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import psycopg

from coordinator_stub.settings import redact_url

CHANNEL = "aq_claimable"
CONNECT_TIMEOUT_S = 2
POLL_S = 0.5  # how often the listener looks at its stop flag
RETRY_S = 1.0  # after the database went away, the listener tries again this often
log = logging.getLogger(__name__)


class PgWake:
    """``notify()`` (any thread, best effort) tells every replica; ``on_hint`` hears every replica's."""

    def __init__(self, url: str, on_hint: Callable[[], None]) -> None:
        self.url = url
        self.on_hint = on_hint
        self._stop = threading.Event()
        self._sender: psycopg.Connection[tuple[object, ...]] | None = None
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._listen, name="aq-pg-wake", daemon=True)

    def start(self) -> PgWake:
        self._thread.start()
        return self

    def notify(self) -> None:
        """Send the hint; a failure is dropped (the recheck covers it) and the connection opened anew next time."""
        with self._send_lock:
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
                self._sender.execute(f"NOTIFY {CHANNEL}")
            except psycopg.Error as exc:
                log.debug("wake-up hint not sent: %s", exc)
                self._close_sender()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_S + CONNECT_TIMEOUT_S + 1)
        with self._send_lock:
            self._close_sender()

    def _close_sender(self) -> None:
        if self._sender is not None:
            with contextlib.suppress(psycopg.Error):
                self._sender.close()
            self._sender = None

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.on_hint()  # anything missed while not listening: claim again once
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=POLL_S):
                            self.on_hint()
            except psycopg.Error as exc:
                log.info("wake-up listener on %s lost (%s); retrying", redact_url(self.url), str(exc)[:200])
                self._stop.wait(RETRY_S)
