"""What a decoder layer's forward takes besides h, built the way Gemma4ForCausalLM.forward builds it:
one layer can then be run alone (the CPU decode-kernel tests compare its paths); and a counter of
which path each layer took."""

from __future__ import annotations

import torch

from gemmaserve.ops.attention import build_plan
from gemmaserve.ops.rope import rope_cos_sin, signed_sin


def layer_rope(model, batch, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) [T, D] bf16 for the batch's positions under `kind`'s inverse frequencies."""
    cos, sin = rope_cos_sin(batch.positions, getattr(model, f"{kind}_inv_freq"), torch.bfloat16)
    return cos, signed_sin(sin)


def layer_plan(model, batch, kind: str):
    """The attention plan of `kind` for the batch (its window, its block tables)."""
    spec = next(s for s in model.config.attention_kinds() if s.kind == kind)
    meta = batch.kinds[kind]
    return build_plan(meta.block_tables, batch.query_lens_cpu, batch.seq_lens_cpu, batch.block_size, spec.window)


def count_fast_layers(monkeypatch) -> list[int]:
    """Counts, from now on, [layers run as one decode_layer kernel call, DECODE-step layers that fell back
    to torch] (MIXED steps never ask)."""
    import gemmaserve.model.decoder as decoder_mod

    seen = [0, 0]
    real = decoder_mod.decode_layer

    def counted(*a, **k):
        out = real(*a, **k)
        seen[out is None] += 1
        return out

    monkeypatch.setattr(decoder_mod, "decode_layer", counted)
    return seen
