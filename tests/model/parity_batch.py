"""Test-side paged-KV simulator: builds ForwardBatch / block tables for parity tests (the engine's
model_runner does this in production)."""

from __future__ import annotations

import torch

from gemmaserve.model.batch import ForwardBatch, KindMetadata
from gemmaserve.model.config import Gemma4TextConfig


class PagedSim:
    """Hands out blocks per attention kind from separate pools and releases sliding blocks that fell
    wholly out of the window (their table entry becomes -1 and their memory is filled with NaN, so
    any read of them would poison the logits). Caches start all-NaN for the same reason."""

    def __init__(self, model, block_size: int = 4, num_blocks: int = 64, dtype=torch.float32) -> None:
        self.cfg: Gemma4TextConfig = model.config
        self.block_size = block_size
        kinds = [s.kind for s in self.cfg.attention_kinds()]
        self.window = {s.kind: s.window for s in self.cfg.attention_kinds()}
        self.caches = model.allocate_kv_caches({k: num_blocks for k in kinds}, block_size, dtype, "cpu")
        for k, v in self.caches:
            k.fill_(float("nan"))
            v.fill_(float("nan"))
        self.free = {k: list(range(num_blocks)) for k in kinds}
        self.tables: dict[int, dict[str, list[int]]] = {}
        self.lens: dict[int, int] = {}
        self.released = 0

    def _layers_of(self, kind: str) -> list[int]:
        return [i for i, t in enumerate(self.cfg.layer_types) if t == kind]

    def _release_out_of_window(self, seq: int, ctx: int) -> None:
        bs = self.block_size
        for kind, window in self.window.items():
            if window is None:
                continue
            oldest = ctx - window + 1  # oldest key position the next query can see
            table = self.tables[seq][kind]
            for b, blk in enumerate(table):
                if blk >= 0 and (b + 1) * bs <= oldest:
                    for i in self._layers_of(kind):
                        self.caches[i][0][blk].fill_(float("nan"))
                        self.caches[i][1][blk].fill_(float("nan"))
                    self.free[kind].append(blk)
                    table[b] = -1
                    self.released += 1

    def batch(self, steps: list[tuple[int, list[int]]], all_logits: bool = False) -> ForwardBatch:
        """steps: (seq id, new token ids) per request, in batch order. Logits rows: the last new
        token of each request, or every row with all_logits."""
        bs = self.block_size
        ids, pos, qsl, seq_lens, logits_rows = [], [], [0], [], []
        slots = {k: [] for k in self.free}
        for seq, new in steps:
            ctx = self.lens.get(seq, 0)
            self.tables.setdefault(seq, {k: [] for k in self.free})
            self._release_out_of_window(seq, ctx)
            total = ctx + len(new)
            for kind, table in self.tables[seq].items():
                while len(table) * bs < total:
                    table.append(self.free[kind].pop(0))
                for p in range(ctx, total):
                    slots[kind].append(table[p // bs] * bs + p % bs)
            start = len(ids)
            ids += new
            pos += list(range(ctx, total))
            qsl.append(len(ids))
            seq_lens.append(total)
            logits_rows += list(range(start, len(ids))) if all_logits else [len(ids) - 1]
            self.lens[seq] = total
        kinds = {}
        for kind in self.free:
            tabs = [self.tables[s][kind] for s, _ in steps]
            width = max(len(t) for t in tabs)
            bt = torch.full((len(tabs), width), -1, dtype=torch.int32)
            for r, t in enumerate(tabs):
                bt[r, : len(t)] = torch.tensor(t, dtype=torch.int32)
            kinds[kind] = KindMetadata(bt, torch.tensor(slots[kind], dtype=torch.int64))
        return ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            positions=torch.tensor(pos, dtype=torch.int64),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            kinds=kinds,
            logits_indices=torch.tensor(logits_rows, dtype=torch.int64),
            block_size=bs,
            query_lens_cpu=[len(n) for _, n in steps],
            seq_lens_cpu=seq_lens,
        )
