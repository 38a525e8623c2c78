"""The gcc-built 4-bit GEMV / expert-gather kernel (csrc/gemv_int4.cpp): build, tiers, ctypes calls."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gemmaserve.config import KernelConfig
from gemmaserve.ops import cpu_isa, kernel_lib
from gemmaserve.ops.dispatch import KernelPolicy

log = logging.getLogger(__name__)

_SRC = Path(__file__).parent / "csrc" / "gemv_int4.cpp"
_HEADER = Path(__file__).parent / "csrc" / "bf16.h"
_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
# The kernel's tiers, best last; the index is the C ABI's `tier` argument and equals cpu_isa.Tier's value
# (AMX adds nothing for 4-bit weights here: its tiles need the weights widened first, as int8's do).
TIERS = ("portable", "avx2", "avx512", "avx512bf16")
_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@dataclass
class _Lib:
    """The loaded library (or None after a failed build), built at most once per process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    lib: ctypes.CDLL | None = None
    tried: bool = False


_STATE = _Lib()  # one build per process: a cache, not configuration


def _compile(config: KernelConfig) -> ctypes.CDLL:
    """Builds the .so once per (source, flags, CPU, torch) in torch's extension dir and loads it."""
    # The build's target flags follow the CPU tier (cpu_isa: a capped build holds no higher instruction in
    # its generic code); the tier functions carry their own target attributes and run only when allowed.
    # Built at the tier the build config's policy gets (its cpu_isa cap applied); tier_for caps further.
    flags = [*_FLAGS, *cpu_isa.gcc_flags(cpu_isa.parse(KernelPolicy.create(config, "cpu").tier))]
    key = hashlib.sha256(
        b"\0".join([_SRC.read_bytes(), _HEADER.read_bytes(), " ".join(flags).encode(),
                    kernel_lib.cpu_id().encode(), torch.__version__.encode()])
    ).hexdigest()[:16]
    so = kernel_lib.build_dir(config) / f"gemv_int4_{key}.so"
    if not so.exists():
        cxx = config.cxx or shutil.which("g++") or shutil.which("c++")
        if cxx is None:
            raise RuntimeError("no C++ compiler (g++) on PATH")
        torch_lib = Path(torch.__file__).parent / "lib"
        # torch's own libgomp when it ships one: one OpenMP thread pool, not two spinning on the same cores.
        gomp = ["-L", str(torch_lib), "-Wl,-rpath," + str(torch_lib)] if (torch_lib / "libgomp.so.1").exists() else []
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
        os.close(fd)
        try:
            cmd = [cxx, *flags, str(_SRC), "-o", tmp, *gomp]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
            os.replace(tmp, so)  # atomic against concurrent builders
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(so))
    lib.gs_int4_tiers.restype = _int
    lib.gs_gemv_int4_experts.argtypes = [_p, _p, _i64, _i64, _i64, _i64, _p, _i64, _i64, _p, _i64, _p, _int, _int, _int]
    lib.gs_gemv_int4_experts.restype = None
    lib.gs_int4_dequant_bf16.argtypes = [_p, _p, _i64, _i64, _i64, _p, _int]
    lib.gs_int4_dequant_bf16.restype = None
    lib.gs_int4_quantize.argtypes = [_p, _int, _i64, _i64, _i64, _p, _p, _int]
    lib.gs_int4_quantize.restype = None
    return lib


def available(policy: KernelPolicy | None = None) -> bool:
    """Whether the kernel may run under `policy` (CPU kernels and its "int4_gemv" switch on, a CPU policy)
    and built (once per process; a failure is logged and the torch path serves)."""
    p = policy or KernelPolicy.default()
    if not (p.cpu_kernels and p.int4_gemv and p.device == "cpu"):
        return False
    if not _STATE.tried:
        with _STATE.lock:
            if not _STATE.tried:
                try:
                    _STATE.lib = _compile(p.build)
                except Exception as exc:  # noqa: BLE001 - any build/load problem means "use torch"
                    log.warning("CPU int4 kernel unavailable, using the torch path: %s", exc)
                _STATE.tried = True
    return _STATE.lib is not None


def tier_for(policy: KernelPolicy) -> str:
    """The int4 path a policy runs: the best tier the CPU has, at most the policy's (capped) tier."""
    cap = TIERS.index(policy.tier) if policy.tier in TIERS else len(TIERS) - 1  # amx: its bf16 tier
    have = [t for t in tiers() if TIERS.index(t) <= cap]
    return have[-1] if have else ""


def tiers() -> tuple[str, ...]:
    """The tiers this CPU runs (portable always) up to the process's default policy tier (GEMMASERVE_CPU_ISA
    caps it: KernelConfig.cpu_isa), worst first; () when the kernel did not build."""
    if not available():
        return ()
    mask = _STATE.lib.gs_int4_tiers()
    cap = int(cpu_isa.parse(KernelPolicy.default().tier))
    return tuple(t for i, t in enumerate(TIERS) if mask >> i & 1 and i <= cap)


def best_tier() -> str:
    """The fastest tier this CPU runs ('' when the kernel did not build)."""
    have = tiers()
    return have[-1] if have else ""


def vector_ok(k: int, group_size: int) -> bool:
    """Whether the vector tiers take this shape: 32-element chunks never straddle a group or the row end."""
    return k % 32 == 0 and group_size % 32 == 0


def gemv_int4_experts(packed: torch.Tensor, scale: torch.Tensor, group_size: int, expert_ids: torch.Tensor,
                      x: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16, tier: str | None = None) -> torch.Tensor:
    """out[m, j] = x[m] @ W[expert_ids[m, j]]^T for 4-bit experts W (packed [E, N, ceil(K/8)] int32,
    scale [E, N, ceil(K/G)] bf16), expert_ids [M, topk] int64 in [0, E), x [M, K] bf16 -> [M, topk, N]
    (bf16 or fp32). Each chosen expert is read once for all pairs that chose it. `tier` forces a path
    (tests); None takes the best one the CPU and the shape allow. Call available() first."""
    e, n, kw = packed.shape
    k = x.shape[-1]
    if packed.dtype is not torch.int32 or scale.dtype is not torch.bfloat16 or not (packed.is_contiguous() and scale.is_contiguous()):
        raise ValueError("packed must be contiguous int32 and scale contiguous bf16")
    if kw != (k + 7) // 8 or scale.shape[:2] != (e, n) or -(-k // group_size) != scale.shape[2]:
        raise ValueError(f"shapes disagree: packed {tuple(packed.shape)}, scale {tuple(scale.shape)}, K={k}, group {group_size}")
    if x.dtype is not torch.bfloat16 or x.dim() != 2 or x.stride(-1) != 1:
        x = x.to(torch.bfloat16).reshape(-1, k).contiguous()
    m = x.shape[0]
    ids = expert_ids.to(torch.int64).contiguous()
    if ids.dim() != 2 or ids.shape[0] != m:
        raise ValueError(f"expert_ids must be [M, topk] with M={m}, got {tuple(ids.shape)}")
    name = tier or best_tier()
    if name not in tiers():
        raise ValueError(f"tier {name!r} not available here (have {tiers()})")
    if name != "portable" and not vector_ok(k, group_size):
        name = "portable"
    out = torch.empty(m, ids.shape[1], n, dtype=out_dtype)  # [M, topk, N]
    if out.numel():
        _STATE.lib.gs_gemv_int4_experts(packed.data_ptr(), scale.data_ptr(), e, n, k, group_size, ids.data_ptr(), m,
                                        ids.shape[1], x.data_ptr(), x.stride(0), out.data_ptr(),
                                        int(out_dtype is torch.float32), TIERS.index(name), torch.get_num_threads())
    return out


def gemv_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int, x: torch.Tensor,
              out_dtype: torch.dtype = torch.bfloat16, tier: str | None = None) -> torch.Tensor:
    """x [M, K] bf16 @ W^T for one 4-bit matrix (packed [N, ceil(K/8)], scale [N, ceil(K/G)]) -> [M, N]."""
    ids = torch.zeros(x.shape[0], 1, dtype=torch.int64)
    y = gemv_int4_experts(packed[None], scale[None], group_size, ids, x, out_dtype, tier)  # [M, 1, N]
    return y.view(x.shape[0], packed.shape[0])


def dequantize_bf16(packed: torch.Tensor, scale: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """The bf16 [..., N, K] matrix of 4-bit packed [..., N, ceil(K/8)] / scale [..., N, ceil(K/G)] (contiguous),
    equal to ops.int4.dequantize_int4(..., torch.bfloat16); vectorised and threaded. Call available() first."""
    if packed.dtype is not torch.int32 or scale.dtype is not torch.bfloat16 or not (packed.is_contiguous() and scale.is_contiguous()):
        raise ValueError("packed must be contiguous int32 and scale contiguous bf16")
    out = torch.empty(*packed.shape[:-1], k, dtype=torch.bfloat16)
    rows = out.numel() // k if k else 0
    if rows:
        _STATE.lib.gs_int4_dequant_bf16(packed.data_ptr(), scale.data_ptr(), rows, k, group_size, out.data_ptr(),
                                        torch.get_num_threads())
    return out


def quantize(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.int4.quantize_int4 for a contiguous bf16 or fp32 CPU [..., N, K] tensor, threaded: the same packed
    words and scales (tested equal). Call available() first."""
    if w.dtype not in (torch.bfloat16, torch.float32) or not w.is_cpu:
        raise ValueError(f"w must be bf16 or fp32 on CPU, got {w.dtype} on {w.device}")
    w = w.contiguous()
    k = w.shape[-1]
    packed = torch.empty(*w.shape[:-1], -(-k // 8), dtype=torch.int32)
    scale = torch.empty(*w.shape[:-1], -(-k // group_size), dtype=torch.bfloat16)
    rows = packed.numel() // packed.shape[-1] if packed.numel() else 0
    if rows and k:
        _STATE.lib.gs_int4_quantize(w.data_ptr(), int(w.dtype is torch.float32), rows, k, group_size, packed.data_ptr(),
                                    scale.data_ptr(), torch.get_num_threads())
    return packed, scale
