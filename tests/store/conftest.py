"""Store tests run on both backends: SQLite in a temp dir, and a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess

import pytest
from pg_support import PostgresServer


@pytest.fixture(scope="session")
def postgres():
    try:
        server = PostgresServer()
    except (FileNotFoundError, OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the store tests on PostgreSQL: {exc}")
        pytest.skip(f"no local PostgreSQL server could be started: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gs.sqlite3'}"
    return request.getfixturevalue("postgres").url()
