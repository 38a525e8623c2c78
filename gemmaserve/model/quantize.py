"""Swaps a loaded decoder's linear and expert weights for per-channel int8 modules (weight-only)."""

from __future__ import annotations

import torch
from torch import nn

from gemmaserve.model.attention import Gemma4Attention
from gemmaserve.model.batch import StepMode
from gemmaserve.model.layers import GeGLUMLP, KernelUser, Linear
from gemmaserve.model.moe import Gemma4Experts
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.linear import linear
from gemmaserve.ops.quant import dequantize, int8_linear, moe_experts_int8, quantize_per_channel


class QuantLinear(KernelUser, nn.Module):
    """Drop-in for layers.Linear: y = x W^T with W = qweight * scale[:, None].
    Buffers: qweight [out, in] int8, scale [out] in the compute dtype."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, lin: Linear) -> "QuantLinear":
        q, s = quantize_per_channel(lin.weight.data)
        return cls(q, s)

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised [out, in] weight, for callers that do F.linear(x, mod.weight) instead of
        mod(x): correct, but it rebuilds the full-precision matrix on every access (slow path)."""
        return dequantize(self.qweight, self.scale, self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.qweight, self.scale, self.kernel_policy)  # [..., in] -> [..., out]


class Int8LMHead(QuantLinear):
    """The tied LM head's int8 copy (CPU): few rows (decode steps of up to KernelPolicy.int8pack_max_rows
    sequences) read the int8 matrix; more rows use the bf16 embedding matrix, because the int8 path
    past those rows dequantises the whole vocab x hidden matrix, costlier than reading the bf16 one."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # x [T, H] -> [T, vocab]; weight: the bf16 embedding matrix [vocab, H]
        p = self.kernel_policy or KernelPolicy.default()
        if x.shape[0] <= p.int8pack_max_rows:
            return int8_linear(x, self.qweight, self.scale, p)
        return linear(x, weight, p)


class QuantExperts(KernelUser, nn.Module):
    """Drop-in for moe.Gemma4Experts with int8 fused expert tensors:
    gate_up_q [E, 2I, H] + gate_up_scale [E, 2I]; down_q [E, H, I] + down_scale [E, H]. One path in
    every step mode (ops.quant.moe_experts_int8); its grouped loop reads counts back to the host."""

    graph_safe = False  # engine.cuda_graph does not capture models with these experts

    def __init__(self, experts: Gemma4Experts) -> None:
        super().__init__()
        gu_q, gu_s = quantize_per_channel(experts.gate_up_proj.data)
        d_q, d_s = quantize_per_channel(experts.down_proj.data)
        self.register_buffer("gate_up_q", gu_q)
        self.register_buffer("gate_up_scale", gu_s)
        self.register_buffer("down_q", d_q)
        self.register_buffer("down_scale", d_s)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, mode: StepMode = StepMode.MIXED) -> torch.Tensor:
        # x [T, H], idx/w [T, K] -> [T, H]
        return moe_experts_int8(x, self.gate_up_q, self.gate_up_scale, self.down_q, self.down_scale, idx, w,
                                self.kernel_policy)


@torch.no_grad()
def quantize_model_int8_(model: nn.Module) -> nn.Module:
    """In place: attention q/k/v/o and dense-MLP linears become QuantLinear, expert blocks become
    QuantExperts, and on CPU the tied LM head gets an int8 copy of the embedding matrix
    (`lm_head_int8`, Int8LMHead; the lookup keeps reading the bf16 rows, exact). Norms and the
    router stay in the compute dtype: they are small and the router's top-k is sensitive to rounding. Each bf16 weight is released as
    soon as its int8 copy exists, so the peak is the bf16 model plus one tensor."""
    embed = getattr(model, "embed_tokens", None)
    if embed is not None and hasattr(model, "lm_head_int8") and embed.weight.device.type == "cpu":
        # The LM head reads all vocab x hidden weights each step, a fifth of a bench-model decode
        # step's bf16 bytes and a third of its int8 bytes: the int8 copy adds vocab x hidden bytes.
        # Not on GPUs, where an int8 matmul dequantises the whole matrix (int8 there saves memory).
        model.lm_head_int8 = Int8LMHead(*quantize_per_channel(embed.weight.data))
    for module in list(model.modules()):
        if isinstance(module, (Gemma4Attention, GeGLUMLP)):
            for name, child in list(module.named_children()):
                if isinstance(child, Linear):
                    setattr(module, name, QuantLinear.from_linear(child))
        for name, child in list(module.named_children()):
            if isinstance(child, Gemma4Experts):
                setattr(module, name, QuantExperts(child))
    return model
