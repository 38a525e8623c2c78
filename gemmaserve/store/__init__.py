"""Durable state: keys and limits, generations and usage, request outcomes for live stats.

SQLAlchemy 2 over SQLite (WAL, a file in the data directory) by default or PostgreSQL by URL;
schema changes are Alembic revisions in migrations/, applied at every start. `Store` (store.py)
is the entry point; `queries` holds the read side, `records` the values written."""

from gemmaserve.store.keys import KeyRecord, hash_key
from gemmaserve.store.ledger import LimitExceeded, Reservation
from gemmaserve.store.records import Content, GenerationRecord, Outcome
from gemmaserve.store.store import Store, StoreOptions, utcnow

__all__ = ["Content", "GenerationRecord", "KeyRecord", "LimitExceeded", "Outcome", "Reservation", "Store",
           "StoreOptions", "hash_key", "utcnow"]
