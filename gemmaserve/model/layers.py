"""Building blocks of the Gemma 4 decoder: the kernel-policy hook, uninitialised bias-free linear,
RMSNorm, dense GeGLU MLP."""

from __future__ import annotations

import torch
from torch import nn

from gemmaserve.ops import batch_invariant
from gemmaserve.ops.activation import gelu_tanh_mul
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.ops.linear import linear
from gemmaserve.ops.norm import rms_norm


class KernelUser:
    """Mixin of every module whose ops choose kernels: they pass `self.kernel_policy` to the ops.
    None (the class default) = the ops' default policy, until use_kernel_policy hands one over."""

    kernel_policy: KernelPolicy | None = None


def use_kernel_policy(model: nn.Module, policy: KernelPolicy) -> nn.Module:
    """Hands `policy` to every KernelUser in `model` (after any module swap: fuse_, int8); returns model."""
    for m in model.modules():
        if isinstance(m, KernelUser):
            m.kernel_policy = policy
    return model


def empty_param(*shape: int, dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    """An uninitialised, inference-only parameter: no random-init cost, so the 26B shape builds fast
    (and on device="meta" without memory)."""
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Linear(KernelUser, nn.Module):
    """y = x W^T with W [out, in]; state_dict key `weight` like nn.Linear, but never initialised."""

    batch_invariant = False  # set by Gemma4ForCausalLM.batch_invariant_: rows computed alike at any count

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.weight = empty_param(out_features, in_features, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_invariant:
            return batch_invariant.linear(x, self.weight, self.kernel_policy)
        return linear(x, self.weight, self.kernel_policy)


@torch.no_grad()
def fuse_linears(parts: list[nn.Module]) -> nn.Module:
    """One module computing cat([p(x) for p in parts], -1): a Linear, or (duck-typed, so layers need not
    import model/quantize.py) a per-output-channel int8 module of the same class with its rows and
    scales concatenated. The parts' tensors are released once the fused copy exists."""
    if all(isinstance(p, Linear) for p in parts):
        w = torch.cat([p.weight for p in parts])  # [sum(out), in]
        fused = Linear.__new__(Linear)
        nn.Module.__init__(fused)
        fused.weight = nn.Parameter(w, requires_grad=False)
        return fused
    kind = type(parts[0])
    if all(type(p) is kind for p in parts) and hasattr(kind, "concat"):  # 4-bit (model/quantize_int4.py)
        return kind.concat(parts)
    if all(type(p) is kind and hasattr(p, "qweight") and hasattr(p, "scale") for p in parts):
        return kind(torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts]))
    raise TypeError(f"cannot fuse {[type(p).__name__ for p in parts]}")


class RMSNorm(KernelUser, nn.Module):
    """Gemma 4 RMSNorm with a learned weight (multiplied directly, not 1 + w)."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = empty_param(dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.kernel_policy)


class GeGLUMLP(KernelUser, nn.Module):
    """Dense MLP: down(gelu_tanh(gate(x)) * up(x))."""

    batch_invariant = False  # see Linear

    def __init__(self, hidden: int, width: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, width, dtype, device)
        self.up_proj = Linear(hidden, width, dtype, device)
        self.down_proj = Linear(width, hidden, dtype, device)

        self.gate_up_proj: nn.Module | None = None  # set by fuse_()

    @torch.no_grad()
    def fuse_(self) -> None:
        """gate and up become one [2W, H] matmul (one weight read, one dispatch); after this the
        module's state_dict names are gate_up_proj.*, so fuse only after loading."""
        if self.gate_up_proj is None:
            self.gate_up_proj = fuse_linears([self.gate_proj, self.up_proj])
            del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, H] -> [T, H]
        if self.batch_invariant and self.gate_up_proj is not None:
            return self.down_proj(batch_invariant.geglu(self.gate_up_proj(x), self.kernel_policy))
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [T, W] each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(gelu_tanh_mul(gate, up, self.kernel_policy))
