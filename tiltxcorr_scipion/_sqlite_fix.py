"""Work around pyworkflow's sqlite deadlock on Python >= 3.11.

pyworkflow shares one ``sqlite3`` connection between a set and its nested sets
and may close it while a cursor still holds an unfinished SELECT. Up to Python
3.10 ``Connection.close()`` finalised every statement; from 3.11 it does not,
so the closed connection keeps a SHARED lock and the next writer on that file
waits until pyworkflow's 1000 s timeout ("database is locked").

The fix: a ``sqlite3.Connection`` subclass that remembers its cursors and
closes them before closing itself. It is installed into
``pyworkflow.mapper.sqlite_db`` when the plugin class is loaded
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


def install() -> None:
    """Make pyworkflow open its sqlite connections as ``CursorClosingConnection``. Idempotent."""
    from pyworkflow.mapper import sqlite_db

    if getattr(sqlite_db.sqlite, "Connection", None) is CursorClosingConnection:
        return
    # sqlite_db uses the module name `sqlite` (sqlite3.dbapi2) for Connection,
    # Row and errors: give it a copy of that module with our Connection.
    patched = types.ModuleType("sqlite3_dbapi2_cursor_closing")
    patched.__dict__.update(vars(sqlite_db.sqlite))
    patched.Connection = CursorClosingConnection
    sqlite_db.sqlite = patched
