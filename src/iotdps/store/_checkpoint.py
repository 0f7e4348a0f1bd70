"""SQLite WAL checkpoints on a thread of their own, for the long-running server.

In WAL mode every commit appends pages to the -wal file, and by default the connection that
commits past 1,000 pages copies the log back into the database file and syncs it, inside that
COMMIT. The store's connection runs on the event loop, so that copy and its fsyncs stalled
every connection the server had, about once per hundred registrations (bench/PROFILE.md).

`iotdps up` hands the work to a `WalCheckpointer`: a thread with its own connection that runs
PASSIVE checkpoints (they never wait for, nor block, the writer) after every few hundred
commits, or once a second while commits trickle in. sqlite3 releases the GIL while it
works, so the loop goes on meanwhile. The store's connection keeps an automatic checkpoint
at a much larger log size, a backstop for a thread that cannot keep up.

Durability is unchanged: with synchronous=NORMAL a commit is in the log (the OS has it) when
COMMIT returns, whichever connection later copies it into the database file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["BACKSTOP_PAGES", "WalCheckpointer"]

log = logging.getLogger(__name__)

# The store connection's own automatic checkpoint, in pages of the log (4 KiB each): 40 MiB.
BACKSTOP_PAGES = 10_000


class WalCheckpointer:
    def __init__(self, path: str, *, every_commits: int = 256, interval: float = 1.0) -> None:
        self._path = path
        self._every = every_commits
        self._interval = interval
        self._commits = 0  # commits so far; only the store's (event loop's) thread writes it
        self._signalled = 0  # self._commits when the thread was last woken for them
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iotdps-wal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """Count one commit of the store's connection (called on its thread, after COMMIT)."""
        self._commits += 1
        if self._commits - self._signalled >= self._every:
            self._signalled = self._commits
            self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; a checkpoint in progress finishes first (bounded by `timeout`)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoints stay inline: cannot open the database: %s", exc)
            return
        seen = 0  # self._commits at the last run
        try:
            while not self._stopping:
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stopping:
                    break
                commits = self._commits
                if commits == seen:
                    continue  # idle: nothing new in the log since the last run
                seen = commits
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    # Another process may hold what the checkpoint needs; the next run retries,
                    # and the store connection's backstop bounds the log meanwhile.
                    log.debug("WAL checkpoint deferred: %s", exc)
        finally:
            conn.close()
