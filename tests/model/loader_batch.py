"""Test helper: one-sequence prefill/decode ForwardBatches over a contiguous block table."""

from __future__ import annotations

import torch

from gemmaserve.model.batch import ForwardBatch, KindMetadata


class OneSeq:
    """Runs one sequence through a Gemma4ForCausalLM: blocks 0..N-1 of every kind, in order."""

    def __init__(self, model, block_size: int = 16, num_blocks: int = 16, cache_dtype=None) -> None:
        self.model = model
        self.block_size = block_size
        kinds = [s.kind for s in model.config.attention_kinds()]
        self.kinds = kinds
        self.caches = model.allocate_kv_caches({k: num_blocks for k in kinds}, block_size, cache_dtype)
        self.num_blocks = num_blocks
        self.len = 0

    @torch.no_grad()
    def step(self, ids: list[int], all_logits: bool = False) -> torch.Tensor:
        """Feed `ids` as the next tokens; fp32 logits [len(ids) or 1, vocab]."""
        start, end = self.len, self.len + len(ids)
        n_blocks = -(-end // self.block_size)
        table = torch.arange(n_blocks, dtype=torch.int32)[None, :]  # [1, n_blocks]
        slots = torch.arange(start, end, dtype=torch.int64)  # block b at slot b*bs: identity map
        rows = list(range(len(ids))) if all_logits else [len(ids) - 1]
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            positions=torch.arange(start, end, dtype=torch.int64),
            query_start_loc=torch.tensor([0, len(ids)], dtype=torch.int32),
            seq_lens=torch.tensor([end], dtype=torch.int32),
            kinds={k: KindMetadata(table.clone(), slots.clone()) for k in self.kinds},
            logits_indices=torch.tensor(rows, dtype=torch.int64),
            block_size=self.block_size,
            query_lens_cpu=[len(ids)],
            seq_lens_cpu=[end],
        )
        self.len = end
        return self.model(batch, self.caches)
