"""The temporary Prefect API: migrations skipped only for a database at the newest revision, and the
server launched early is stopped when nobody uses it."""

from __future__ import annotations

import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import prefect.server.database

from flows.api_server import launched_api
from flows.prefect_app import database_is_current, head_revisions

PREFECT_SQLITE_VERSIONS = Path(prefect.server.database.__file__).parent / "_migrations" / "versions" / "sqlite"


def script(folder: Path, revision: str, down: str | None) -> None:
    parent = f'"{down}"' if down else "None"
    (folder / f"{revision}_step.py").write_text(f'"""a step"""\nrevision = "{revision}"\ndown_revision = {parent}\n')


def database(path: Path, *revisions: str) -> str:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.executemany("INSERT INTO alembic_version VALUES (?)", [(r,) for r in revisions])
        db.commit()
    return f"sqlite+aiosqlite:///{path}"


def test_only_a_database_at_the_head_revision_skips_the_migration(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir()
    script(versions, "aaaaaa01", None)
    script(versions, "bbbbbb02", "aaaaaa01")
    script(versions, "cccccc03", "bbbbbb02")
    assert head_revisions(versions) == {"cccccc03"}
    assert database_is_current(database(tmp_path / "head.db", "cccccc03"), versions)
    assert not database_is_current(database(tmp_path / "older.db", "bbbbbb02"), versions)
    assert not database_is_current(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}", versions)  # a new home
    (tmp_path / "empty.db").touch()  # no alembic_version table
    assert not database_is_current(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", versions)
    assert not database_is_current("postgresql+asyncpg://u@localhost/prefect", versions)
    assert not database_is_current("sqlite+aiosqlite:///:memory:", versions)
    script(versions, "dddddd04", "bbbbbb02")  # two heads: not understood, so migrate
    assert not database_is_current(database(tmp_path / "branched.db", "cccccc03"), versions)
    assert not database_is_current(database(tmp_path / "gone.db", "cccccc03"), tmp_path / "missing")


def test_installed_prefect_has_one_sqlite_head():
    """The scripts' `revision`/`down_revision` lines still parse: else every start would migrate again."""
    assert len(head_revisions(PREFECT_SQLITE_VERSIONS)) == 1


def test_no_server_is_launched_when_an_api_url_is_set(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with launched_api() as server:
        assert server is None


def test_an_unused_launched_server_is_stopped(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    with launched_api() as server:  # e.g. the run's checks then fail: nobody waits for the server
        assert server is not None
        proc = server.proc
        assert proc.poll() is None
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert (tmp_path / "prefect" / "server-start.lock").exists()
