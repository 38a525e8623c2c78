"""Alembic environment: runs migrations on the engine the store hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from gemmaserve.store.schema import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
