"""Batches on the durable store: the api's BatchRepository (api/batches.py) over the batches and
batch_results tables, written through the store's group-commit writer."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update

from gemmaserve.store.schema import BatchResultRow, BatchRow
from gemmaserve.store.store import Store

_BODY = ("items", "results")


def _header(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in _BODY}


class StoreBatches:
    """Writes are queued in order on the store's writer (a finished item is durable one commit
    after it finished; after a crash at most the last queued items run again)."""

    def __init__(self, store: Store):
        self.store = store

    def create(self, batch: dict[str, Any]) -> None:
        row = BatchRow(id=batch["id"], key_hash=batch["key_hash"], status=batch["status"],
                       created_at=datetime.fromtimestamp(batch["created_at"], timezone.utc),
                       header=_header(batch), items=list(batch["items"]))
        self.store.submit(lambda s: s.add(row))

    def update(self, batch: dict[str, Any]) -> None:
        stmt = update(BatchRow).where(BatchRow.id == batch["id"]).values(status=batch["status"],
                                                                         header=_header(batch))
        self.store.submit(lambda s: s.execute(stmt))

    def add_result(self, batch_id: str, result: dict[str, Any]) -> None:
        row = BatchResultRow(batch_id=batch_id, custom_id=result["custom_id"], result=result)
        self.store.submit(lambda s: s.merge(row))

    def load(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            results: dict[str, dict[str, Any]] = {}
            for r in s.scalars(select(BatchResultRow)):
                results.setdefault(r.batch_id, {})[r.custom_id] = r.result
            return [{**row.header, "items": row.items, "results": results.get(row.id, {})}
                    for row in s.scalars(select(BatchRow).order_by(BatchRow.created_at))]
