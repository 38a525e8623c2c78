"""The flat forward batch the model runner hands to the model: tokens of many requests at once."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch


class StepMode(enum.Enum):
    """What kind of step a forward batch is; the layers choose their paths from it (one source of truth).
    MIXED: some request brings more than one new token (prefill chunks, maybe beside decodes).
    DECODE: every request brings exactly one token, host-built plans (the one-call CPU layer may run).
    GRAPH_DECODE: a fixed-shape decode step with device-built plans (engine.cuda_graph): no host syncs
    anywhere, so the attention reads the DecodePlan and the MoE takes its capture-safe form."""

    MIXED = "mixed"
    DECODE = "decode"
    GRAPH_DECODE = "graph-decode"


@dataclass
class KindMetadata:
    """Paged-KV addressing for one attention kind (sliding or full); one block pool per kind.

    Block tables are indexed by *logical* block number (position // block_size) from the start of
    the sequence. Sliding-window layers free blocks that fell out of the window; their entries are
    -1 and the attention op must never read them (they are outside the window by construction).
    """

    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, -1 = unassigned / released
    slot_mapping: torch.Tensor  # [T] int64: flat slot (block_id * block_size + offset) for each new token's K/V


@dataclass
class ForwardBatch:
    """Requests are laid end to end: request i owns rows query_start_loc[i]:query_start_loc[i+1]
    of the token dimension T. A request's rows are its *new* tokens (a prefill chunk, or one decode
    token); its earlier tokens are already in the KV cache. Positions are absolute."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, cumulative new-token counts
    seq_lens: torch.Tensor  # [num_seqs] int32: tokens in cache after this step (context + new)
    kinds: dict[str, KindMetadata]  # keyed by model.config.SLIDING / FULL
    logits_indices: torch.Tensor  # [num_sample] int64 rows of T whose logits are needed
    block_size: int
    # Host-side copies for the CPU attention path, so it need not sync on device tensors.
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    # Per attention kind, a fixed-shape decode plan built on the device (ops.paged_decode.DecodePlan)
    # by the CUDA-graph runner; None = the model builds ops.attention plans from the host lists.
    decode_plans: dict[str, Any] | None = None
    # Media soft tokens (spec 8.3): rows of T whose input embedding is a projected vision vector
    # instead of the token's embedding, and those vectors; None = a text-only step.
    mm_rows: torch.Tensor | None = None  # [M] int64
    mm_embeds: torch.Tensor | None = None  # [M, H] in the model dtype
    # Per sequence, the absolute position ranges [start, end) of its bidirectional blocks (one image's,
    # or one video frame's, soft-token run) among this step's new tokens: on sliding layers a block's
    # queries also see its later keys (spec 4.3). The scheduler never splits a block across steps.
    mm_blocks: list[list[tuple[int, int]]] | None = None
    mode: StepMode = field(init=False)  # derived from decode_plans and query_lens_cpu

    def __post_init__(self) -> None:
        if self.decode_plans is not None:
            self.mode = StepMode.GRAPH_DECODE
        elif self.query_lens_cpu and all(q == 1 for q in self.query_lens_cpu):
            self.mode = StepMode.DECODE
        else:
            self.mode = StepMode.MIXED

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


# KV cache storage handed to the model: one (k_cache, v_cache) pair per decoder layer, each of shape
# [num_blocks_of_kind, block_size, num_kv_heads_of_kind, head_dim_of_kind] in the cache dtype.
KVCaches = list[tuple[torch.Tensor, torch.Tensor]]
