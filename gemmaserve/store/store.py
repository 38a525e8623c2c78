"""The Store: the one object the server talks to for durable state (keys, generations, stats).

Writes go through the writer thread (`writer.StoreWriter`) and return a concurrent Future that
resolves once committed; the server awaits that Future before the last byte of a response, so a
finished generation is durable when its client has it. Reads are synchronous SQLAlchemy calls:
call them through `asyncio.to_thread` from the event loop. Key records and the spending ledger
live in memory (loaded at open, advanced by every change) so admission never waits on the database.

For other features that need durable rows (batches, say): add a model to schema.py and a new
revision under migrations/versions/, then write with `store.submit(lambda session: ...)` and read
with `with store.session() as s: ...` - the writer's batching and the migrations come for free.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from gemmaserve.store import queries
from gemmaserve.store.database import database_url, migrate, open_engine
from gemmaserve.store.keys import KeyRecord, hash_key, mask, new_plaintext
from gemmaserve.store.ledger import Ledger
from gemmaserve.store.records import Content, GenerationRecord, Outcome
from gemmaserve.store.schema import ApiKey
from gemmaserve.store.writer import StoreWriter

log = logging.getLogger("gemmaserve.store")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class StoreOptions:
    store_content: bool = False  # keep prompts and outputs for /generation/content
    min_uptime_samples: int = 100  # OpenRouter shows no uptime below this many counted requests


class Store:
    """Invariant: `keys` mirrors the api_keys table (this process is its only writer while it
    runs) and `ledger` holds each key's committed-or-queued charges plus open reservations."""

    def __init__(self, engine: Engine, options: StoreOptions = StoreOptions()):
        self.engine = engine
        self.options = options
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.ledger = Ledger()
        self.keys: dict[str, KeyRecord] = {}
        now = utcnow()
        with self._sessions() as s:
            self.keys = {row.hash: KeyRecord.from_row(row) for row in s.scalars(select(ApiKey))}
            for key_hash, sums in queries.key_usage_sums(s, now).items():
                self.ledger.load(key_hash, sums["total"], sums, now)
        self.writer = StoreWriter(self._sessions)

    @classmethod
    def open(cls, data_dir: str | None = None, url: str | None = None,
             options: StoreOptions = StoreOptions()) -> "Store":
        """Connect, migrate to the newest schema, and load keys and usage."""
        engine = open_engine(database_url(data_dir, url))
        migrate(engine)
        return cls(engine, options)

    def close(self) -> None:
        """Commit what is queued, stop the writer, release connections."""
        self.writer.close()
        self.engine.dispose()

    # -- generic access (for features that bring their own tables) --------------------------------

    def submit(self, write: Callable[[Session], Any]) -> Future:
        return self.writer.submit(write)

    def session(self) -> Session:
        return self._sessions()

    # -- generations and outcomes ------------------------------------------------------------------

    def record_generation(self, rec: GenerationRecord, outcome: Outcome | None = None,
                          content: Content | None = None, reservation=None) -> Future:
        """Charge the key (in memory now, releasing `reservation`), and queue the generation row,
        its request outcome and (with content storage on) its content in one transaction."""
        if rec.api_key_hash is not None:
            self.ledger.charge(rec.api_key_hash, Decimal(str(rec.total_cost)), rec.created_at, reservation)
        rows = [rec.to_row()]
        if outcome is not None:
            rows.append(outcome.to_row())
        if content is not None and self.options.store_content:
            rows.append(content.to_row(rec.id))
        return self.writer.submit(lambda s: s.add_all(rows))

    def record_outcome(self, outcome: Outcome) -> Future:
        row = outcome.to_row()
        return self.writer.submit(lambda s: s.add(row))

    def read(self, query: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one function of queries.py in a fresh session: `store.read(queries.activity, now)`."""
        with self._sessions() as s:
            return query(s, *args, **kwargs)

    def generation(self, gen_id: str) -> GenerationRecord | None:
        return self.read(queries.generation, gen_id)

    # -- keys (management calls are rare: they block until committed) ------------------------------

    def create_key(self, name: str = "", *, is_management: bool = False, limit: float | None = None,
                   limit_reset: str | None = None, expires_at: datetime | None = None,
                   rate_limit_rpm: int | None = None, rate_limit_rpd: int | None = None,
                   plaintext: str | None = None) -> tuple[KeyRecord, str]:
        """Make a key; returns its record and the plaintext (which is stored nowhere)."""
        plaintext = plaintext or new_plaintext()
        now = utcnow()
        rec = KeyRecord(hash=hash_key(plaintext), name=name, label=mask(plaintext), is_management=is_management,
                        limit=limit, limit_reset=limit_reset, expires_at=expires_at, rate_limit_rpm=rate_limit_rpm,
                        rate_limit_rpd=rate_limit_rpd, created_at=now, updated_at=None)
        row = rec.to_row()
        self.writer.submit(lambda s: s.add(row)).result()
        self.keys[rec.hash] = rec
        return rec, plaintext

    def update_key(self, key_hash: str, **changes: Any) -> KeyRecord | None:
        """Apply `changes` (KeyRecord fields) and stamp updated_at; None when no such key."""
        old = self.keys.get(key_hash)
        if old is None:
            return None
        rec = old.with_changes(**changes, updated_at=utcnow())
        row = rec.to_row()
        self.writer.submit(lambda s: s.merge(row)).result()
        self.keys[key_hash] = rec
        return rec

    def delete_key(self, key_hash: str) -> bool:
        """Remove the key (its generations stay, still billed and shown in activity)."""
        if key_hash not in self.keys:
            return False
        self.writer.submit(lambda s: s.execute(delete(ApiKey).where(ApiKey.hash == key_hash))).result()
        del self.keys[key_hash]
        return True

    def list_keys(self, *, management: bool = False, include_disabled: bool = False) -> list[KeyRecord]:
        """Keys of one kind, oldest first."""
        keys = [k for k in self.keys.values() if k.is_management == management and (include_disabled or not k.disabled)]
        return sorted(keys, key=lambda k: (k.created_at or utcnow(), k.hash))
