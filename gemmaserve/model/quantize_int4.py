"""Weight-only group-wise 4-bit modules (compressed-tensors layout) and the swap that puts them in a
decoder before its weights arrive, so a checkpoint is quantized tensor by tensor while it loads."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gemmaserve.model.attention import Gemma4Attention
from gemmaserve.model.batch import StepMode
from gemmaserve.model.layers import GeGLUMLP, KernelUser, Linear
from gemmaserve.model.moe import Gemma4Experts
from gemmaserve.model.quantize import Int8LMHead
from gemmaserve.ops.int4 import GROUP_SIZE, dequantize_int4, int4_linear, moe_experts_int4, quantize_int4
from gemmaserve.ops.quant import quantize_per_channel

# Random 4-bit weights for --dummy-weights: nibbles uniform over [-8, 7] have mean square 21.5, so this
# scale gives weights of std ~0.02, the std init_random_ draws bf16 matrices with.
_DUMMY_SCALE = 0.02 / 21.5**0.5


def _packed_shape(n: int, k: int, group_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (n, -(-k // 8)), (n, -(-k // group_size))


class Int4Linear(KernelUser, nn.Module):
    """Drop-in for layers.Linear: y = x W^T, W [out, in] stored as weight_packed [out, ceil(in/8)] int32 and
    weight_scale [out, ceil(in/G)] bf16 (the compressed-tensors names, so state_dict keys match the file)."""

    def __init__(self, weight_packed: torch.Tensor, weight_scale: torch.Tensor, in_features: int, group_size: int) -> None:
        super().__init__()
        self.register_buffer("weight_packed", weight_packed)
        self.register_buffer("weight_scale", weight_scale)
        self.in_features = in_features
        self.group_size = group_size

    @classmethod
    def empty(cls, out_features: int, in_features: int, group_size: int, device="cpu") -> "Int4Linear":
        ps, ss = _packed_shape(out_features, in_features, group_size)
        return cls(torch.empty(ps, dtype=torch.int32, device=device), torch.empty(ss, dtype=torch.bfloat16, device=device),
                   in_features, group_size)

    @classmethod
    def concat(cls, parts: list["Int4Linear"]) -> "Int4Linear":
        """The module computing cat([p(x) for p in parts], -1) (layers.fuse_linears): rows concatenate."""
        if len({(p.in_features, p.group_size) for p in parts}) != 1:
            raise TypeError("cannot fuse 4-bit linears of different input widths or group sizes")
        return cls(torch.cat([p.weight_packed for p in parts]), torch.cat([p.weight_scale for p in parts]),
                   parts[0].in_features, parts[0].group_size)

    @property
    def out_features(self) -> int:
        return self.weight_packed.shape[0]

    def set_weight_(self, w: torch.Tensor) -> None:
        """Quantize a float [out, in] weight into this module's buffers."""
        p, s = quantize_int4(w, self.group_size)
        self.weight_packed.copy_(p)
        self.weight_scale.copy_(s)

    def dequantized(self) -> torch.Tensor:
        """[out, in] fp32: for error measurement and tests."""
        return dequantize_int4(self.weight_packed, self.weight_scale, self.in_features, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int4_linear(x, self.weight_packed, self.weight_scale, self.in_features, self.group_size,
                           policy=self.kernel_policy)  # [..., out]


class Int4Experts(KernelUser, nn.Module):
    """Drop-in for moe.Gemma4Experts: gate_up_packed [E, 2I, ceil(H/8)] (gate rows first) + gate_up_scale
    [E, 2I, ceil(H/G)]; down_packed [E, H, ceil(I/8)] + down_scale [E, H, ceil(I/G)]."""

    graph_safe = False  # its grouped loop reads counts back to the host: never graph-captured

    def __init__(self, num_experts: int, hidden: int, inter: int, group_size: int, device="cpu") -> None:
        super().__init__()
        self.hidden, self.inter, self.group_size = hidden, inter, group_size
        gp, gs = _packed_shape(2 * inter, hidden, group_size)
        dp, ds = _packed_shape(hidden, inter, group_size)
        self.register_buffer("gate_up_packed", torch.empty(num_experts, *gp, dtype=torch.int32, device=device))
        self.register_buffer("gate_up_scale", torch.empty(num_experts, *gs, dtype=torch.bfloat16, device=device))
        self.register_buffer("down_packed", torch.empty(num_experts, *dp, dtype=torch.int32, device=device))
        self.register_buffer("down_scale", torch.empty(num_experts, *ds, dtype=torch.bfloat16, device=device))

    def set_gate_up_(self, w: torch.Tensor, experts: slice | int = slice(None), rows: slice = slice(None)) -> None:
        """Quantize float gate_up rows ([E', 2I', H] or one expert's [2I', H]) into the buffers."""
        p, s = quantize_int4(w, self.group_size)
        self.gate_up_packed[experts, rows].copy_(p)
        self.gate_up_scale[experts, rows].copy_(s)

    def set_down_(self, w: torch.Tensor, experts: slice | int = slice(None)) -> None:
        p, s = quantize_int4(w, self.group_size)
        self.down_packed[experts].copy_(p)
        self.down_scale[experts].copy_(s)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, mode: StepMode = StepMode.MIXED) -> torch.Tensor:
        # x [T, H], idx/w [T, K] -> [T, H]; one path in every step mode (its grouped loop syncs the host)
        return moe_experts_int4(x, self.gate_up_packed, self.gate_up_scale, self.down_packed, self.down_scale, idx, w,
                                self.group_size, policy=self.kernel_policy)


Sink = Callable[[torch.Tensor], None]


@torch.no_grad()
def to_int4_(model: nn.Module, group_size: int = GROUP_SIZE) -> dict[str, Sink]:
    """In place, before any weight is loaded: attention and dense-MLP linears become Int4Linear, expert
    blocks Int4Experts (empty; the bf16 tensors they replace were never written, so never resident), and
    on CPU the tied LM head gets an int8 copy slot (the lookup keeps the bf16 rows). Returns, per
    checkpoint name of a replaced float tensor (model-relative, e.g. `layers.0.experts.gate_up_proj`), the
    function that quantizes that tensor into place: the loader's sinks."""
    sinks: dict[str, Sink] = {}
    for prefix, module in list(model.named_modules()):
        dot = prefix + "." if prefix else ""
        if isinstance(module, (Gemma4Attention, GeGLUMLP)):
            for name, child in list(module.named_children()):
                if isinstance(child, Linear):
                    out_f, in_f = child.weight.shape
                    new = Int4Linear.empty(out_f, in_f, group_size, child.weight.device)
                    setattr(module, name, new)
                    sinks[f"{dot}{name}.weight"] = new.set_weight_
        for name, child in list(module.named_children()):
            if isinstance(child, Gemma4Experts):
                e, two_i, h = child.gate_up_proj.shape
                new = Int4Experts(e, h, two_i // 2, group_size, child.gate_up_proj.device)
                setattr(module, name, new)
                sinks[f"{dot}{name}.gate_up_proj"] = _per_expert(new.set_gate_up_)
                sinks[f"{dot}{name}.down_proj"] = _per_expert(new.set_down_)
    return sinks


def _per_expert(setter: Callable[..., None]) -> Sink:
    """A sink for a fused [E, ...] float tensor that quantizes one expert at a time (one fp32 slice)."""

    def sink(w: torch.Tensor) -> None:
        for e in range(w.shape[0]):
            setter(w[e], e)

    return sink


@torch.no_grad()
def add_int8_lm_head_(model: nn.Module) -> None:
    """The tied LM head's int8 copy on CPU (model/quantize.py's Int8LMHead): a 4-bit decode step's other
    weights are ~1.2 GB at the 26B-A4B shape and the bf16 head 1.5 GB; the copy halves the head's share."""
    embed = model.embed_tokens.weight
    if embed.device.type == "cpu" and hasattr(model, "lm_head_int8"):
        # In row chunks: one fp32 copy of the whole [262144, 2816] matrix would be 3 GB, above the
        # load's peak budget (final footprint plus one shard).
        q = torch.empty(embed.shape, dtype=torch.int8)
        scale = torch.empty(embed.shape[0], dtype=embed.dtype)
        for start in range(0, embed.shape[0], 8192):
            q[start : start + 8192], scale[start : start + 8192] = quantize_per_channel(embed.data[start : start + 8192])
        model.lm_head_int8 = Int8LMHead(q, scale)


@torch.no_grad()
def init_random_int4_(model: nn.Module, seed: int = 0) -> None:
    """--dummy-weights for a 4-bit model: uniform nibbles and one scale giving std ~0.02 weights, drawn
    straight into the packed buffers (no float copy of the 26B shape is ever made)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, buf in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if buf.dtype is torch.int32 and leaf.endswith("packed"):
            # In place, 16 bits at a time (every nibble uniform): no temporaries, which on the 26B shape
            # left ~1 GiB of freed heap resident.
            buf.view(torch.int16).random_(-(2**15), 2**15, generator=gen)
        elif leaf.endswith("scale") and buf.dtype is torch.bfloat16 and buf.dim() >= 2:
            buf.fill_(_DUMMY_SCALE)
