"""The one place that decides which kernel serves which op: CPU features, and the frozen kernel policy.

A `KernelPolicy` is built once (the engine: from its KernelConfig, the detected `CpuFeatures` and the
device) and handed to the model, whose modules pass it to the ops. Every threshold and switch lives
here with the measurement behind it; each op site keeps only its own shape tests and asks
`policy.takes(kernel, ...)` for the rest (switch, device, dtype, contiguity, library built). "Off" is
spelled one way: a switch set to False (`policy.without("norm")`). A policy forced down a tier
(`policy.for_tier("avx2")`) builds the kernel library for that tier only, so every fallback runs and is
tested on any machine at least as capable.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from gemmaserve.config import CPU_ISA_TIERS, KernelConfig
from gemmaserve.ops import cpu_isa

if TYPE_CHECKING:
    from gemmaserve.ops.kernel_lib import KernelLib

TIERS = CPU_ISA_TIERS  # lowest first: portable < avx2 < avx512 (with VNNI) < avx512bf16 < amx (ops/cpu_isa.py)
assert TIERS == tuple(cpu_isa.NAMES[t] for t in cpu_isa.Tier), "config.CPU_ISA_TIERS and ops/cpu_isa.py disagree"
_BF16 = (torch.bfloat16,)
# The kernel families, each with its own switch field on KernelPolicy.
KERNELS = ("gemv", "norm", "geglu", "decode_attention", "qkv_post", "decode_layer", "moe_gemv", "int8_gemv",
           "int4_gemv")


@dataclass(frozen=True)
class CpuFeatures:
    """The x86 features the kernels care about, as the ISA tier they add up to (ops/cpu_isa.py: a
    feature counts only with every lower tier's, so no AVX512 kernel runs without AVX2). VNNI comes
    with the AVX512 tier (Ice Lake and every later AVX512 CPU have it)."""

    model: str = ""
    avx2: bool = False  # AVX2 + FMA + F16C
    avx512: bool = False  # F/BW/VL/DQ/CD
    vnni: bool = False  # AVX512_VNNI
    avx512_bf16: bool = False
    amx: bool = False  # AMX tiles for bf16 and int8

    @classmethod
    def from_tier(cls, tier: cpu_isa.Tier, model: str = "") -> "CpuFeatures":
        return cls(model=model, avx2=tier >= cpu_isa.Tier.AVX2, avx512=tier >= cpu_isa.Tier.AVX512,
                   vnni=tier >= cpu_isa.Tier.AVX512, avx512_bf16=tier >= cpu_isa.Tier.AVX512_BF16,
                   amx=tier >= cpu_isa.Tier.AMX)

    @classmethod
    def from_flags(cls, flags: Iterable[str], model: str = "") -> "CpuFeatures":
        return cls.from_tier(cpu_isa.detect(frozenset(flags)), model)

    @classmethod
    def detect(cls) -> "CpuFeatures":
        """This machine's features (read once per process; the CPU does not change)."""
        return _detected()

    @property
    def level(self) -> cpu_isa.Tier:
        """The tier as ops/cpu_isa.py's enum: the last of an unbroken run of features from the bottom."""
        level = cpu_isa.Tier.PORTABLE
        steps = ((self.avx2, cpu_isa.Tier.AVX2), (self.avx512 and self.vnni, cpu_isa.Tier.AVX512),
                 (self.avx512_bf16, cpu_isa.Tier.AVX512_BF16), (self.amx, cpu_isa.Tier.AMX))
        for on, tier in steps:
            if not on:
                break
            level = tier
        return level

    @property
    def tier(self) -> str:
        """The highest tier this CPU (or this capped view of it) supports."""
        return cpu_isa.NAMES[self.level]

    def capped(self, tier: str) -> "CpuFeatures":
        """The same CPU seen through a cap: every feature above `tier` cleared (never one added)."""
        return CpuFeatures.from_tier(min(self.level, cpu_isa.parse(tier)), self.model)

    def as_dict(self) -> dict[str, object]:
        """For benchmark JSON: the CPU model, its feature flags and the tier."""
        return {**dataclasses.asdict(self), "tier": self.tier}


@functools.lru_cache(maxsize=1)
def _detected() -> CpuFeatures:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
                break
    except OSError:  # not Linux: no model name
        pass
    return CpuFeatures.from_flags(cpu_isa.cpu_flags(), model)


@dataclass(frozen=True)
class KernelPolicy:
    """Which kernel serves which op on this machine: built once, never changed (variants are new
    objects via `without`, `for_tier` or dataclasses.replace). Thresholds below were measured on the
    bench model (hidden 1024, 32 experts top-4), bf16, 2 threads, unless stated otherwise."""

    device: str = "cpu"
    features: CpuFeatures = CpuFeatures()
    build: KernelConfig = KernelConfig()  # compiler and cache dir of the kernel library
    cpu_kernels: bool = True  # master switch: False = torch ops only (the A/B baseline)

    # -- switches, one per kernel family (False = that family's torch path) -----------------------
    gemv: bool = True  # few-row bf16 GEMV (linear, LM head)
    norm: bool = True  # one-call RMSNorm
    geglu: bool = True  # one-pass gelu_tanh(gate) * up for prefill sizes, and the padded MoE's column form
    decode_attention: bool = True  # paged decode attention reading the cache in place
    qkv_post: bool = True  # norms, RoPE and cache write after the fused q/k/v projection
    decode_layer: bool = True  # a whole MoE decoder layer in one call
    moe_gemv: bool = True  # the MoE expert gather on the GEMV kernel
    int8_gemv: bool = True  # weight-only int8 GEMV and its expert gather
    int4_gemv: bool = True  # group-wise 4-bit GEMV, expert gather and dequantisation (ops/cpu_int4.py)
    grouped_mm: bool = True  # torch._grouped_mm MoE (CUDA sm90+, and CPU if grouped_mm_cpu)

    # -- linear -------------------------------------------------------------------------------------
    # Up to this many rows a CPU matmul is computed as (W @ x^T)^T. Measured (us, F.linear vs W @ x^T):
    # [1024x1024] at 4 rows 177 vs 101, at 32 rows 168 vs 129, at 64 rows 213 vs 134, at 512 rows 606
    # vs 928; the [32768x1024] LM head at 32 rows 3123 vs 1776.
    wxt_max_rows: int = 64
    # Up to this many rows the GEMV kernel reads each weight row once for all rows; past the library's
    # rows per pass (32 with AMX, else 8) it would re-read W, so W @ x^T takes those rows.
    gemv_max_rows: int = 32

    # -- activation ---------------------------------------------------------------------------------
    # Inputs of at least this many gate elements (prefill: 512 tokens x 512+ columns) use the threaded
    # GeGLU kernel: one pass instead of torch's gelu and mul passes. Decode sizes stay on torch (the
    # one-call decode layer has its own).
    geglu_min_numel: int = 1 << 16

    # -- attention ----------------------------------------------------------------------------------
    # Up to this many rows the norms, RoPE and cache write after the fused projection are one
    # qkv_post call (same rounding points) instead of ~20 small ops.
    qkv_max_rows: int = 64

    # -- one-call decode layer ----------------------------------------------------------------------
    # Decode batches of at most this many rows take the one-call layer. With AMX one GEMV pass serves
    # 32 rows: same process, medians of 3, ms/step torch layer vs one call: 24 rows 101.8/92.1,
    # 32 rows 113.1/105.5 (AMX machine).
    decode_layer_max_rows: int = 32
    # Without AMX the GEMV re-reads dense weights per 8-row group, yet saving the ops still pays up to
    # ~16 rows (1 thread, ms/step torch layer vs one call: 12 rows 192/160, 16 rows 199/185, 24 rows
    # 223/222). int8 layers stop here too (the int8 GEMV passes 8 rows at a time).
    decode_layer_max_rows_without_amx: int = 16

    # -- MoE (benchmarks/probes/ops_moe.py) ---------------------------------------------------------
    # Token count at or above which the grouped path replaces the gather: min wall ms gather vs
    # grouped 0.58/0.62 at 1 token, 1.14/1.22 at 2, 1.69/1.65 at 3, 4.5/2.9 at 8, 78/9.6 at 128.
    moe_grouped_min_tokens: int = 3
    # Up to this many tokens, when at least moe_padded_min_active of the experts are chosen, the padded
    # path (two batched matmuls over all experts) replaces the grouped loop. ms grouped vs padded:
    # 8 tokens (21 of 32 experts active) 4.87/5.13, 16 (30) 8.16/6.04, 32 (32) 7.81/5.94, 64 (32) 8.33/6.52.
    moe_padded_max_tokens: int = 64
    moe_padded_min_active: float = 0.75
    # At any token count on CPU the padded path also wins when padding adds at most this factor of rows
    # (E * busiest expert's count <= waste * T * K). ms grouped vs padded (padding factor): 128 tokens
    # 12.2/9.5 (1.38), 10.0/9.3 (2.31), 8.5/12.5 (3.81); 512 tokens 20.6/17.8 (1.20), 20.1/27.2 (2.41).
    moe_padded_max_waste: float = 1.5
    # Up to this many tokens the GEMV kernel's expert gather replaces every path above (two calls per
    # layer). min ms gemv vs padded: 8 tokens 1.95/3.33, 16 2.52/3.38, 32 3.23/3.67, 64 4.97/4.03;
    # decode steps of 24 / 32 rows 107.9 -> 103.1 and 109.9 -> 106.3 ms when raised from 8 to 32.
    moe_gemv_max_tokens: int = 32
    # The grouped GEMM on CPU measured mixed against the per-expert loop (15% faster at 256-512 tokens,
    # 5-25% slower at 16 and 2048, noisy), so CPU keeps the loop.
    grouped_mm_cpu: bool = False
    # CUDA-graph decode MoE: the gather path below this many weight passes' worth of tokens
    # (ops.paged_decode.moe_graph).
    graph_gather_passes: int = 3

    # -- weight-only int8 ---------------------------------------------------------------------------
    # Up to this many rows the int8 GEMV reads each int8 weight row once for all rows (8 per pass).
    int8_gemv_max_rows: int = 8
    # Up to this many tokens the int8 MoE runs as two expert-gather kernel calls.
    int8_moe_max_tokens: int = 8
    # Past the kernel's rows (or without it), up to this many rows torch's int8 kernel
    # (aten._weight_int8pack_mm) beats dequantising: [1024, 1024], the kernel ~11 us per row,
    # dequantise + GEMM ~150 us flat; crossover ~12-16 rows. It needs K % 32 == 0 (torch 2.13 returns
    # garbage for bf16 with K = 24 or 40 and crashes on K = 13).
    int8pack_max_rows: int = 12

    # -- group-wise int4 (ops/int4.py) --------------------------------------------------------------
    # Up to this many rows the int4 GEMV reads the 4-bit weights once; past it the kernel-dequantised bf16
    # matrix in a torch matmul (compute bound, where torch's GEMM does ~4x the kernel's MACs per cycle).
    # [4096 x 2816] group 64, one thread, ms: kernel (avx512bf16) at 1 / 8 / 32 rows 0.51 / 2.3 / 17;
    # dequantise ~3 + bf16 GEMM (benchmarks/probes/int4_bench.py).
    int4_gemv_max_rows: int = 16
    # Up to this many tokens the int4 MoE runs as two expert-gather kernel calls (each chosen expert read
    # once for all its tokens: decode steps); past it, grouped by expert with int4_linear per expert.
    int4_moe_max_tokens: int = 32

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: KernelConfig, device: str | torch.device = "cpu",
               features: CpuFeatures | None = None) -> "KernelPolicy":
        """The policy for `device` from the engine's kernel config and the CPU's features (detected
        when not given), capped at config.cpu_isa."""
        feats = features or CpuFeatures.detect()
        if config.cpu_isa is not None:
            feats = feats.capped(config.cpu_isa)
        return cls(device=torch.device(device).type, features=feats, build=config,
                   cpu_kernels=config.cpu_kernels, grouped_mm=config.grouped_mm)

    @classmethod
    def default(cls) -> "KernelPolicy":
        """The CPU policy from the environment's KernelConfig: what a model built outside an engine
        uses until it is handed one (model.use_kernel_policy)."""
        return _default()

    def without(self, *kernels: str) -> "KernelPolicy":
        """This policy with the named kernel families switched off (KERNELS, or "grouped_mm")."""
        unknown = set(kernels) - set(KERNELS) - {"grouped_mm"}
        if unknown:
            raise ValueError(f"unknown kernels {sorted(unknown)}; known: {', '.join(KERNELS)}, grouped_mm")
        return dataclasses.replace(self, **{k: False for k in kernels})

    def torch_only(self) -> "KernelPolicy":
        """Every gcc-built kernel off: the torch ops (the A/B baseline)."""
        return dataclasses.replace(self, cpu_kernels=False)

    def for_tier(self, tier: str) -> "KernelPolicy":
        """The policy a CPU of at most `tier` would get: features above it cleared, the library built
        for that tier. A tier above the machine's changes nothing (features are never added)."""
        return dataclasses.replace(self, features=self.features.capped(tier))

    # -- the one eligibility predicate ------------------------------------------------------------
    @property
    def tier(self) -> str:
        return self.features.tier

    @functools.cached_property
    def lib(self) -> "KernelLib | None":
        """The kernel library built for this policy's tier, or None (kernels off, not a CPU policy,
        or the build failed: logged once, then torch ops)."""
        if not self.cpu_kernels or self.device != "cpu":
            return None
        from gemmaserve.ops.kernel_lib import load

        return load(self.tier, self.build)

    @functools.cached_property
    def gemv_rows(self) -> int:
        """Rows one bf16 GEMV pass reads the weights once for (32 with AMX, else 8; 0 without the library)."""
        return self.lib.rows_per_pass if self.lib is not None else 0

    def takes(self, kernel: str, *tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = _BF16,
              strided: tuple[torch.Tensor, ...] = ()) -> bool:
        """Whether `kernel` may run on these inputs: its switch is on, the library built, and every
        tensor lies on the CPU in one of `dtypes`; `tensors` must be contiguous (the kernels index them
        as raw arrays), `strided` may have any layout (row inputs the wrappers copy when they must).
        Sites add only their own shape tests."""
        if not getattr(self, kernel):
            return False
        for t in tensors:
            if t.dtype not in dtypes or t.device.type != "cpu" or not t.is_contiguous():
                return False
        for t in strided:
            if t.dtype not in dtypes or t.device.type != "cpu":
                return False
        return self.lib is not None

    def describe(self) -> dict[str, object]:
        """For logs and benchmark JSON: device, CPU, tier, which kernel families are on, the library's ISA."""
        lib = self.lib
        return {"device": self.device, "cpu": self.features.as_dict(), "cpu_kernels": self.cpu_kernels,
                "kernels": [k for k in KERNELS if getattr(self, k)], "grouped_mm": self.grouped_mm,
                "library_isa": lib.isa if lib is not None else "", "gemv_rows_per_pass": self.gemv_rows}


@functools.lru_cache(maxsize=1)
def _default() -> KernelPolicy:
    return KernelPolicy.create(KernelConfig.from_env(), "cpu")


TORCH_ONLY = KernelPolicy(cpu_kernels=False, grouped_mm=False)  # immutable: no kernel, no grouped GEMM
