"""The app factory the embedded Prefect API server runs (`uvicorn --factory flows.prefect_app:create_app`).

It is Prefect's own app, with one saving: Prefect runs its Alembic migrations at every start (about a
second on 2 cores, most of it loading 100+ migration scripts), even when the database is already at
the newest revision. Here the database's `alembic_version` is compared with the head revision of the
installed Prefect's SQLite migrations first, and the migration is skipped only when they are equal: a
fresh Prefect home, an older database, another database backend, or anything that cannot be read
migrates as before. Runs in the server process; imports nothing from gptflow, so it starts fast.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

MIGRATE_ON_START = "PREFECT_SERVER_DATABASE_MIGRATE_ON_START"
_REVISION = re.compile(r"""^revision\s*(?::\s*str\s*)?=\s*["']([0-9a-f]+)["']""", re.M)
_DOWN = re.compile(r"""^down_revision\s*(?::[^=]*)?=\s*(.+)$""", re.M)


def head_revisions(versions: Path) -> set[str]:
    """The head revisions of an Alembic versions folder: those no other revision names as its parent.

    Read from the scripts' `revision = "..."` / `down_revision = ...` lines; empty when the folder is
    missing or a script does not say, so the caller migrates."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN.search(text)
        if revision is None or down is None:
            return set()
        revisions.add(revision.group(1))
        parents.update(re.findall(r"[0-9a-f]{6,}", down.group(1)))
    return revisions - parents


def sqlite_revisions(database: Path) -> set[str]:
    """The revisions recorded in a SQLite database's `alembic_version` table (empty: none, or unreadable)."""
    if not database.is_file():
        return set()
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            return {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
    except sqlite3.Error:
        return set()


def database_is_current(connection_url: str, versions: Path) -> bool:
    """Whether `connection_url` is a SQLite file already at the head revision of `versions` (nothing to migrate)."""
    from sqlalchemy.engine import make_url

    url = make_url(connection_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return False
    heads = head_revisions(versions)
    return len(heads) == 1 and sqlite_revisions(Path(url.database)) == heads


def create_app() -> Any:
    """Prefect's API app, told not to migrate when the database is already at the newest revision.

    Imported with the garbage collector off, then frozen: importing the server allocates about a million
    long-lived objects, and collecting while they pile up costs a quarter of the import time."""
    gc.disable()
    try:
        return _create_app()
    finally:
        gc.freeze()  # what the app holds lives as long as the server: never scan it again
        gc.enable()


def _create_app() -> Any:
    import prefect.server.database
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_DATABASE_MIGRATE_ON_START

    versions = Path(prefect.server.database.__file__).parent / "_migrations" / "versions" / "sqlite"
    if PREFECT_API_DATABASE_MIGRATE_ON_START.value() and database_is_current(
        PREFECT_API_DATABASE_CONNECTION_URL.value(), versions
    ):
        os.environ[MIGRATE_ON_START] = "false"  # this server process only
        refresh_global_settings_context()
    from prefect.server.api.server import create_app as prefect_app

    return prefect_app()
