"""A real PostgreSQL server for the tests: initdb + pg_ctl from Debian's `postgresql` package in a
temporary directory, listening on a Unix socket only (no port clashes between test runs).

A module of its own (not conftest.py) so other test folders can import it too."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway cluster; `url(db)` makes a database and returns its SQLAlchemy URL."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install -y postgresql)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="gs-pg-"))
        self.port = _free_port()
        self.data = self.root / "data"
        # The server refuses to run as root: under root (CI) it runs as Debian's postgres user.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "gs", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.root / "log"), "-o",
                  f"-k {self.root} -p {self.port} -c listen_addresses='' -c fsync=off", "start")
        self._dbs = 0

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def url(self, name: str | None = None) -> str:
        self._dbs += 1
        name = name or f"db{self._dbs}"
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", "gs", name)
        return f"postgresql+psycopg://gs@/{name}?host={self.root}&port={self.port}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
