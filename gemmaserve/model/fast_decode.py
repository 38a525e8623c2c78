"""One-call CPU decode layers: a fused bf16 or weight-only int8 MoE decoder layer in one decode_layer kernel call."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.kernel_lib import DECODE_LAYER_DIMS, DECODE_LAYER_WEIGHTS

# The row limits (decode_layer_max_rows, decode_layer_max_rows_without_amx) live on
# ops.dispatch.KernelPolicy with their measurements.

# Order of the weight pointers the kernel expects (ops/csrc/decode_layer.cpp, enum W_*).
_WEIGHTS = (
    "input_layernorm.weight", "self_attn.qkv_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "self_attn.o_proj.weight", "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
    "mlp.gate_up_proj.weight", "mlp.down_proj.weight", "post_feedforward_layernorm_1.weight", "router.scale",
    "router.proj.weight", "router.per_expert_scale", "pre_feedforward_layernorm_2.weight",
    "experts.gate_up_proj", "experts.down_proj", "post_feedforward_layernorm_2.weight",
    "post_feedforward_layernorm.weight", "layer_scalar",
)  # fmt: skip
# A weight-only int8 layer (model/quantize.py) holds these six as int8 tensors with per-row scales: kernel
# slot -> (int8 tensor, scale), the scales going to the W_*_S slots after _WEIGHTS, in this order.
_INT8 = {
    "self_attn.qkv_proj.weight": ("self_attn.qkv_proj.qweight", "self_attn.qkv_proj.scale"),
    "self_attn.o_proj.weight": ("self_attn.o_proj.qweight", "self_attn.o_proj.scale"),
    "mlp.gate_up_proj.weight": ("mlp.gate_up_proj.qweight", "mlp.gate_up_proj.scale"),
    "mlp.down_proj.weight": ("mlp.down_proj.qweight", "mlp.down_proj.scale"),
    "experts.gate_up_proj": ("experts.gate_up_q", "experts.gate_up_scale"),
    "experts.down_proj": ("experts.down_q", "experts.down_scale"),
}
# The library checks its own slot counts against kernel_lib's at load; these tuples must agree with them.
assert len(_WEIGHTS) + len(_INT8) == DECODE_LAYER_WEIGHTS, "model/fast_decode.py and csrc/gs_kernels.h disagree"


class _Packed:
    """A layer's weight pointers and dims for the kernel, with the tensors they point into (kept alive,
    and compared by identity so a re-fused or re-quantized layer is packed again)."""

    def __init__(self, layer: nn.Module, tensors: list[torch.Tensor], scales: list[torch.Tensor] | None) -> None:
        attn = layer.self_attn
        self.tensors = tensors + (scales or [])
        ptrs = [t.data_ptr() for t in tensors] + ([s.data_ptr() for s in scales] if scales else [None] * len(_INT8))
        self.ptrs = (ctypes.c_void_p * len(ptrs))(*ptrs)
        named = dict(zip(_WEIGHTS, tensors))
        e, two_i, _ = named["experts.gate_up_proj"].shape
        dims = [named["input_layernorm.weight"].shape[0], attn.num_heads, attn.num_kv_heads, attn.head_dim,
                int(attn.has_v), named["mlp.down_proj.weight"].shape[1], e, two_i // 2, layer.router.top_k,
                int(scales is not None), int(bool(scales) and scales[0].dtype is torch.float32)]
        assert len(dims) == DECODE_LAYER_DIMS, "model/fast_decode.py and csrc/gs_kernels.h disagree"
        self.dims = (ctypes.c_int64 * len(dims))(*dims)
        self.root = float(layer.router.root_size)
        self.int8 = scales is not None
        # The submodules at packing time, one level below the layer too (fuse_ and the int8 swap
        # replace the projections inside self_attn and mlp).
        self.modules = [(m, dict(m._modules)) for m in (layer, attn, layer.mlp)]


def _lookup(layer: nn.Module, name: str) -> torch.Tensor | None:
    """A parameter or buffer by dotted name, through _modules/_parameters/_buffers only: an attribute such
    as QuantLinear.weight is a property that would dequantize a fresh copy."""
    *path, leaf = name.split(".")
    mod = layer
    for part in path:
        mod = mod._modules.get(part)
        if mod is None:
            return None
    t = mod._parameters.get(leaf)
    return mod._buffers.get(leaf) if t is None else t


def _usable(t: torch.Tensor | None, dtypes: tuple[torch.dtype, ...]) -> bool:
    return t is not None and t.dtype in dtypes and t.device.type == "cpu" and t.is_contiguous()


def _tensors(layer: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor] | None] | None:
    """The layer's 19 tensors in kernel order and, for a weight-only int8 layer, the six scales (the
    six projections' slots then hold their int8 tensors); None when the layer is neither a fused bf16
    MoE layer nor its int8 form (all six projections int8, scales of one dtype, the rest bf16)."""
    tensors, scales = [], []
    for name in _WEIGHTS:
        t = _lookup(layer, name)
        if t is None and name in _INT8:
            q, s = (_lookup(layer, n) for n in _INT8[name])
            if not (_usable(q, (torch.int8,)) and _usable(s, (torch.bfloat16, torch.float32))):
                return None
            tensors.append(q)
            scales.append(s)
        elif _usable(t, (torch.bfloat16,)):
            tensors.append(t)
        else:
            return None
    if not scales:
        return tensors, None
    if len(scales) != len(_INT8) or len({s.dtype for s in scales}) != 1:
        return None  # a partly quantized layer: the torch layer handles it
    return tensors, scales


def decode_layer(layer: nn.Module, h: torch.Tensor, cos_sin, plan, slot_mapping: torch.Tensor, kv_cache,
                 keep_rows: torch.Tensor | None, policy: KernelPolicy) -> torch.Tensor | None:
    """The layer's forward for a DECODE step (ops.attention plan) in one kernel call, or None when it does
    not apply (then the caller runs the torch layer): h [T, H] bf16 CPU with T within the policy's
    decode_layer rows, one in-order decode group, every row kept, a fused bf16 (or weight-only int8) MoE
    layer, contiguous bf16 caches and int64 slots."""
    t = h.shape[0]
    if t > policy.decode_layer_max_rows or not layer.enable_moe or not policy.takes("decode_layer", h):
        return None
    if t > policy.decode_layer_max_rows_without_amx and t > policy.gemv_rows:
        return None
    if plan.prefills or len(plan.decodes) != 1:
        return None
    group = plan.decodes[0]
    if not group.in_order or group.n_keys is None or slot_mapping.dtype is not torch.int64:
        return None
    # The kernel indexes these as plain int64 arrays: slots [T, L] row-major, n_keys [T], slot_mapping [T].
    if group.slots.stride(-1) != 1 or not (group.n_keys.is_contiguous() and slot_mapping.is_contiguous()):
        return None
    if keep_rows is not None and keep_rows.tolist() != list(range(t)):
        return None
    k_cache, v_cache = kv_cache
    cos, sin = cos_sin
    if k_cache.dtype is not torch.bfloat16 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return None
    if cos.dtype is not torch.bfloat16 or not (cos.is_contiguous() and sin.is_contiguous()) or not h.is_contiguous():
        return None
    packed = _packed(layer)
    if packed is None:
        return None
    if packed.int8 and t > policy.decode_layer_max_rows_without_amx:
        return None  # the int8 GEMV passes 8 rows at a time: past 16 rows the torch layer is faster
    out = torch.empty_like(h)  # [T, H]
    policy.lib.fn.gs_decode_layer_bf16(
        h.data_ptr(), out.data_ptr(), t, packed.ptrs, packed.dims, layer.eps, packed.root, cos.data_ptr(),
        sin.data_ptr(), slot_mapping.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), group.slots.data_ptr(),
        group.slots.stride(0), group.n_keys.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def _packed(layer: nn.Module) -> _Packed | None:
    """The cached packing, rebuilt when a submodule was swapped (fuse_, int8) or a tensor moved (.to)."""
    cached = layer.__dict__.get("_fast_decode_packed")
    if cached is not None:
        same_mods = all(
            len(m._modules) == len(kids) and all(m._modules.get(k) is v for k, v in kids.items())
            for m, kids in cached.modules
        )
        if same_mods and all(t.data_ptr() == p for t, p in zip(cached.tensors, cached.ptrs)):
            return cached
    found = _tensors(layer)
    if found is None:
        return None
    cached = _Packed(layer, *found)
    layer.__dict__["_fast_decode_packed"] = cached  # plain attribute: not a submodule or buffer
    return cached
