"""Opening a SQLite file in the state directory, the same way for every state the
gateway keeps (the ledger, the Responses store).

An empty file where one existed is refused rather than taken as a fresh start: a
truncated copy must not come up as an empty ledger or store. Another writer holding
the file is waited for ``OPEN_BUSY_TIMEOUT_S`` at start before the open is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

OPEN_BUSY_TIMEOUT_S = 5.0


def open_state_file(state_dir: str | Path, name: str, fault: Callable[[Path, str], Exception],
                    what: str) -> tuple[Path, sqlite3.Connection, bool]:
    """``(path, connection, existed)``; ``fault(path, why)`` is raised when it cannot be used."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    existed = path.exists()
    if existed and path.stat().st_size == 0:
        raise fault(path, f"the file is empty (zero bytes) where a {what} existed")
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=OPEN_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise fault(path, f"cannot be opened ({exc})") from exc
    return path, db, existed
