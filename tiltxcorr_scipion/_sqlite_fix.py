"""Work around pyworkflow's sqlite deadlock on Python >= 3.11.

pyworkflow shares one ``sqlite3`` connection between a set and its nested sets
and may close it while a cursor still holds an unfinished SELECT. Up to Python
3.10 ``Connection.close()`` finalised every statement; from 3.11 it does not,
so the closed connection keeps a SHARED lock and the next writer on that file
waits until pyworkflow's 1000 s timeout ("database is locked").

The fix: a ``sqlite3.Connection`` subclass that remembers its cursors and
closes them before closing itself.

A second deadlock, on any Python: ``SqliteDb.close()`` removes the file's entry
from the shared connection cache (``SqliteDb.OPEN_CONNECTIONS``) even when the
entry is another object's live connection. Nested sets (a TiltSeries inside a
SetOfTiltSeries) reuse the cached connection of their file; so when a stale set
object on the same file is garbage-collected (``Set.__del__`` closes it) while
a producer appends, the producer's new TiltSeries opens a second connection and
waits for ever on the first one's uncommitted insert (seen: a streaming test's
producer stuck in ``createTables``/``setVersion``, at random, only in long test
sessions). The fix: ``close()`` drops the cache entry only if it is its own.

Both are installed into ``pyworkflow.mapper.sqlite_db`` when the plugin class is loaded
(``tiltxcorr_scipion._plugin``): Scipion's plugin discovery does that in every
Scipion process (the protocol subprocess too), so the fix is active wherever
the plugin is installed.
"""

from __future__ import annotations

import sqlite3
import types
import weakref


class CursorClosingConnection(sqlite3.Connection):
    """A connection that finalises its open cursors when it is closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._open_cursors: weakref.WeakSet = weakref.WeakSet()

    def cursor(self, *args, **kwargs):
        cursor = super().cursor(*args, **kwargs)
        self._open_cursors.add(cursor)
        return cursor

    def execute(self, *args, **kwargs):
        # Connection.execute makes a hidden cursor; route it through cursor()
        # so that it is tracked too.
        return self.cursor().execute(*args, **kwargs)

    def close(self) -> None:
        for cursor in list(self._open_cursors):
            try:
                cursor.close()
            except sqlite3.Error:
                pass  # already closed, or its statement is gone: nothing holds a lock
        self._open_cursors.clear()
        super().close()


def _close_keeping_others_cached(self) -> None:
    """``SqliteDb.close`` that uncaches the connection only if the cache holds this one."""
    self.connection.close()
    if self.OPEN_CONNECTIONS.get(self._dbName) is self.connection:
        del self.OPEN_CONNECTIONS[self._dbName]


def install() -> None:
    """Make pyworkflow open its sqlite connections as ``CursorClosingConnection`` and
    close them without uncaching another object's connection. Idempotent."""
    from pyworkflow.mapper import sqlite_db

    sqlite_db.SqliteDb.close = _close_keeping_others_cached
    if getattr(sqlite_db.sqlite, "Connection", None) is CursorClosingConnection:
        return
    # sqlite_db uses the module name `sqlite` (sqlite3.dbapi2) for Connection,
    # Row and errors: give it a copy of that module with our Connection.
    patched = types.ModuleType("sqlite3_dbapi2_cursor_closing")
    patched.__dict__.update(vars(sqlite_db.sqlite))
    patched.Connection = CursorClosingConnection
    sqlite_db.sqlite = patched
