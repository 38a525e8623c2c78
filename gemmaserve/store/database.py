"""Opening the database: URL from a data directory or --database-url, SQLite pragmas, migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_FILENAME = "gemmaserve.sqlite3"


def database_url(data_dir: str | Path | None, url: str | None) -> str:
    """`url` when given (e.g. postgresql+psycopg://user@host/db), else SQLite in `data_dir`."""
    if url:
        return url
    if data_dir is None:
        raise ValueError("either a data directory or a database URL is required")
    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / SQLITE_FILENAME}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (the stats and /generation queries) never block the writer thread and vice versa.
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL under WAL: a commit is in the OS once it returns, so it survives the server process
    # being killed (what the SIGKILL test checks); only an OS crash or power cut can drop the last
    # commits. FULL would fsync every commit for that last case.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str) -> Engine:
    """A SQLAlchemy engine for `url`; SQLite connections get the WAL pragmas above."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent; run at every start, before any read or write)."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Step the schema back to `revision` ("base" drops every table the migrations made)."""
    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
