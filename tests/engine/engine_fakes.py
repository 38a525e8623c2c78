"""Test double for engine tests: a fake model that checks paged-KV addressing on every step."""

from __future__ import annotations

import torch

from gemmaserve.model.batch import ForwardBatch, KVCaches
from gemmaserve.model.config import FULL, SLIDING, Gemma4TextConfig

VOCAB = 97


def fake_config(window: int = 8, vocab: int = VOCAB, max_pos: int = 4096) -> Gemma4TextConfig:
    """Two layers, one per attention kind, 1 KV head of dim 2 (token+1, position+1 are stored)."""
    return Gemma4TextConfig(
        vocab_size=vocab,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=2,
        global_head_dim=2,
        num_global_key_value_heads=1,
        attention_k_eq_v=False,
        sliding_window=window,
        layer_types=(SLIDING, FULL),
        max_position_embeddings=max_pos,
        eos_token_ids=(1,),
    )


class PagedEchoModel:
    """Stores (token+1, position+1) of every new token at its slot, then, for each sampled row,
    reads the sequence back through the block tables (full kind: every position; sliding kind:
    the window) and asserts every slot holds the right position. The next token is a hash of the
    tokens read from the full-attention cache, so any paging, prefix-reuse or preemption mistake
    changes the generated tokens (or raises)."""

    def __init__(self, config: Gemma4TextConfig):
        self.config = config
        self.calls: list[ForwardBatch] = []

    def allocate_kv_caches(self, num_blocks, block_size, dtype, device) -> KVCaches:
        return [
            (torch.zeros(num_blocks[kind], block_size, 1, 2), torch.zeros(num_blocks[kind], block_size, 1, 2))
            for kind in self.config.layer_types
        ]

    def forward(self, batch: ForwardBatch, kv_caches: KVCaches) -> torch.Tensor:
        self.calls.append(batch)
        bs = batch.block_size
        for layer, kind in enumerate(self.config.layer_types):
            k = kv_caches[layer][0].view(-1, 2)  # [num_blocks * bs, 2]
            slots = batch.kinds[kind].slot_mapping
            k[slots, 0] = batch.input_ids.float() + 1
            k[slots, 1] = batch.positions.float() + 1
        rows = []
        ends = batch.query_start_loc.tolist()[1:]
        sample_rows = set(batch.logits_indices.tolist())
        for i, end in enumerate(ends):
            if end - 1 not in sample_rows:
                continue
            seq_len = batch.seq_lens_cpu[i]
            tokens = self._read(batch, kv_caches, i, FULL, 0, seq_len)
            window = self.config.sliding_window
            assert self._read(batch, kv_caches, i, SLIDING, max(0, seq_len - window), seq_len) == tokens[-window:]
            h = 0
            for t in tokens:
                h = (h * 131 + t + 7) % 1_000_003
            logits = torch.full((self.config.vocab_size,), -5.0)
            logits[h % self.config.vocab_size] = 5.0
            rows.append(logits)
        return torch.stack(rows) if rows else torch.empty(0, self.config.vocab_size)

    def _read(self, batch, kv_caches, seq: int, kind: str, start: int, end: int) -> list[int]:
        layer = self.config.layer_types.index(kind)
        k = kv_caches[layer][0]
        table = batch.kinds[kind].block_tables[seq].tolist()
        bs = batch.block_size
        out = []
        for p in range(start, end):
            block = table[p // bs]
            assert block >= 0, f"{kind} position {p} has no block"
            tok, pos = k[block, p % bs, 0].tolist()
            assert int(pos) == p + 1, f"{kind} slot for position {p} holds position {int(pos) - 1}"
            out.append(int(tok) - 1)
        return out


def echo_engine(sliding_blocks: int, full_blocks: int, max_num_seqs: int, budget: int):
    """An Engine over PagedEchoModel (fp32, 4-token blocks, no real weights) for tests that exercise
    the engine loop or the benchmark tooling around it rather than the model."""
    from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from gemmaserve.engine.engine import Engine
    from gemmaserve.model.config import FULL, SLIDING

    cfg = fake_config()
    ec = EngineConfig(dtype="float32", cache=CacheConfig(block_size=4, num_blocks={SLIDING: sliding_blocks, FULL: full_blocks}),
                      scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget))
    return Engine(PagedEchoModel(cfg), cfg, ec)
