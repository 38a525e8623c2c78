"""The CPU kernel library as one unit: builds ops/csrc/*.cpp with gcc for one ISA tier, loads it through
one C ABI table, and checks at load that the library reports what Python expects."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from gemmaserve.config import KernelConfig
from gemmaserve.ops import cpu_isa

log = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"
_SRCS = [_CSRC / name for name in ("gemv_bf16.cpp", "gemv_int8.cpp", "decode_bf16.cpp", "decode_layer.cpp")]
_HEADERS = [_CSRC / name for name in ("gs_kernels.h", "bf16.h", "amx.h")]  # hashed into the build key
# Target flags come per ISA tier (ops/cpu_isa.py gcc_flags: explicit -march lists, not -march=native):
# the build for a capped tier holds no instruction above it, and the preprocessor picks that tier's code
# paths (csrc: __AMX_BF16__, __AVX512BF16__, __AVX512F__, __AVX2__, else portable), so a capped policy
# runs exactly the code a CPU of that tier runs.
_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
# gs_features() bits (csrc/gs_kernels.h) and the features each tier's build must report.
F_AVX2, F_AVX512, F_AVX512VNNI, F_AVX512BF16, F_AMX = 1, 2, 4, 8, 16
TIER_FEATURES = {"portable": 0, "avx2": F_AVX2, "avx512": F_AVX2 | F_AVX512 | F_AVX512VNNI,
                 "avx512bf16": F_AVX2 | F_AVX512 | F_AVX512VNNI | F_AVX512BF16,
                 "amx": F_AVX2 | F_AVX512 | F_AVX512VNNI | F_AVX512BF16 | F_AMX}
ABI_VERSION = 2  # GS_ABI_VERSION
# The one-call decode layer's slots (csrc/gs_kernels.h W_COUNT, D_COUNT): 19 weights + 6 int8 scales,
# 11 dims. model/fast_decode.py builds its arrays against these.
DECODE_LAYER_WEIGHTS = 25
DECODE_LAYER_DIMS = 11
# Rows one GEMV pass serves without AMX (AVX512 / portable) and with it.
MAX_ROWS = 8
AMX_ROWS = 32

_p, _i64, _int, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# The C ABI, one row per exported function: name -> (restype, argtypes). Matches csrc/gs_kernels.h.
ABI: dict[str, tuple[object, list[object]]] = {
    "gs_abi_info": (None, [_p, _int]),
    "gs_features": (_int, []),
    "gs_decode_layer_counts": (_int, []),
    "gs_gemv_isa": (_int, []),
    "gs_gemv_rows_per_pass": (_int, [_i64, _i64]),
    "gs_gemv_set_chunks": (None, [_int]),
    "gs_gemv_set_experts_merged": (None, [_int]),
    "gs_gemv_set_dense_merged": (None, [_int]),
    "gs_gemv_bf16": (None, [_p, _i64, _i64, _p, _i64, _i64, _p, _int, _int]),
    "gs_gemv_bf16_experts": (None, [_p, _i64, _i64, _i64, _p, _i64, _i64, _p, _i64, _p, _int, _int]),
    "gs_gemv_bf16_dense_experts": (None, [_p, _i64, _i64, _p, _i64, _i64, _p, _int, _p, _i64, _i64, _i64, _p, _i64, _i64,
                                          _p, _i64, _p, _int, _int]),
    "gs_gemv_int8_isa": (_int, []),
    "gs_gemv_int8": (None, [_p, _p, _int, _i64, _i64, _p, _i64, _i64, _p, _int, _int]),
    "gs_gemv_int8_experts": (None, [_p, _p, _int, _i64, _i64, _i64, _p, _i64, _i64, _p, _i64, _p, _int, _int]),
    "gs_int8_to_bf16": (None, [_p, _i64, _p, _int]),
    "gs_rms_norm_bf16": (None, [_p, _i64, _i64, _i64, _p, _f32, _p]),
    "gs_decode_attn_bf16": (None, [_p, _i64, _p, _p, _i64, _i64, _p, _i64, _p, _i64, _i64, _f32, _p, _int]),
    "gs_qkv_post_bf16": (None, [_p, _i64, _i64, _i64, _i64, _i64, _int, _p, _p, _f32, _p, _p, _p, _p, _p, _p]),
    "gs_geglu_bf16": (None, [_p, _i64, _i64, _i64, _p]),
    "gs_geglu_cols_bf16": (None, [_p, _i64, _i64, _i64, _p, _p]),
    "gs_decode_layer_bf16": (None, [_p, _p, _i64, _p, _p, _f32, _f32, _p, _p, _p, _p, _p, _p, _i64, _p, _int]),
}
_BF16_ISAS = ("portable", "avx512", "avx512bf16", "amx+avx512bf16", "avx2")  # gs_gemv_isa() codes
_INT8_ISAS = ("portable", "avx512", "amx+avx512")  # gs_gemv_int8_isa() codes


class KernelLibError(RuntimeError):
    """The built library does not report what Python expects (ABI version, slot counts, ISA): calling
    it could corrupt memory, so it is never used."""


class KernelLib:
    """One loaded build of the kernel library for one ISA tier; `fn` is the ctypes handle whose
    functions have the ABI table's types. Read-only after the load-time check."""

    def __init__(self, cdll: ctypes.CDLL, tier: str, path: Path) -> None:
        for name, (restype, argtypes) in ABI.items():
            f = getattr(cdll, name)  # AttributeError names a missing symbol: caught by check's caller
            f.restype, f.argtypes = restype, argtypes
        self.fn = cdll
        self.tier = tier
        self.path = path
        info = (ctypes.c_int64 * 4)()
        cdll.gs_abi_info(info, 4)
        self.abi, self.features, self.w_count, self.d_count = (int(v) for v in info)
        self.isa = _BF16_ISAS[cdll.gs_gemv_isa()]
        self.int8_isa = _INT8_ISAS[cdll.gs_gemv_int8_isa()]
        # Model projections have K % 32 == 0 and N >= 16, where the AMX path applies.
        self.rows_per_pass = int(cdll.gs_gemv_rows_per_pass(1024, 1024))

    def check(self) -> None:
        """Raises KernelLibError unless the library matches this Python side and its tier."""
        problems = []
        if self.abi != ABI_VERSION:
            problems.append(f"ABI version {self.abi}, Python expects {ABI_VERSION}")
        if (self.w_count, self.d_count) != (DECODE_LAYER_WEIGHTS, DECODE_LAYER_DIMS):
            problems.append(f"decode layer slots {self.w_count} weights / {self.d_count} dims, Python expects "
                            f"{DECODE_LAYER_WEIGHTS} / {DECODE_LAYER_DIMS}")
        if self.features != TIER_FEATURES[self.tier]:
            problems.append(f"compiled features {self.features:#x}, tier {self.tier!r} expects "
                            f"{TIER_FEATURES[self.tier]:#x}")
        if self.rows_per_pass not in (MAX_ROWS, AMX_ROWS) or (self.rows_per_pass == AMX_ROWS) != (self.tier == "amx"):
            problems.append(f"{self.rows_per_pass} GEMV rows per pass on tier {self.tier!r}")
        if problems:
            raise KernelLibError(f"CPU kernel library {self.path} does not match gemmaserve: " + "; ".join(problems))


def cpu_id() -> str:
    """The CPU's feature flags: a build cached for one CPU must not be loaded on another (SIGILL)."""
    return " ".join(sorted(cpu_isa.cpu_flags()))


def build_dir(config: KernelConfig) -> Path:
    """config.build_dir, else torch's extension cache dir (~/.cache/torch_extensions/...)."""
    if config.build_dir:
        path = Path(config.build_dir) / "gemmaserve_kernels"
        path.mkdir(parents=True, exist_ok=True)
        return path
    try:  # private helper: names the python/torch/cuda flavour of the cache dir
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory("gemmaserve_gemv", verbose=False))
    except Exception:  # noqa: BLE001 - its signature is not a public contract
        path = Path.home() / ".cache" / "torch_extensions" / "gemmaserve_gemv"
        path.mkdir(parents=True, exist_ok=True)
        return path


def build(tier: str, config: KernelConfig) -> Path:
    """The .so for `tier`, compiled once per (sources, flags, CPU, torch); raises on any failure."""
    flags = _FLAGS + cpu_isa.gcc_flags(cpu_isa.parse(tier))
    torch_lib = Path(torch.__file__).parent / "lib"
    key = hashlib.sha256(b"\0".join([*(src.read_bytes() for src in _SRCS + _HEADERS), " ".join(flags).encode(),
                                     cpu_id().encode(), torch.__version__.encode()])).hexdigest()[:16]
    so = build_dir(config) / f"gemmaserve_kernels_{tier}_{key}.so"
    if so.exists():
        return so
    cxx = config.cxx or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    # Link torch's own libgomp when it ships one so the kernels share torch's OpenMP thread pool
    # instead of starting a second set of spinning threads on the same cores.
    gomp = ["-L", str(torch_lib), "-Wl,-rpath," + str(torch_lib)] if (torch_lib / "libgomp.so.1").exists() else []
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
    os.close(fd)
    try:
        cmd = [cxx, *flags, *map(str, _SRCS), "-o", tmp, *gomp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, so)  # atomic: concurrent builders (other processes) never see half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return so


_lock = threading.Lock()


def load(tier: str, config: KernelConfig) -> KernelLib | None:
    """The library for `tier` (built on first use, thread-safe), or None when it cannot be built or
    loaded (logged once per tier; the ops then run torch). A library that loads but fails the check
    raises KernelLibError: that is a gemmaserve bug, not a machine without a compiler."""
    with _lock:
        return _load(tier, config.cxx, config.build_dir)


@functools.lru_cache(maxsize=None)
def _load(tier: str, cxx: str | None, build_dir: str | None) -> KernelLib | None:
    cpu_isa.parse(tier)  # ValueError on an unknown tier
    try:
        path = build(tier, KernelConfig(cxx=cxx, build_dir=build_dir))
        cdll = ctypes.CDLL(str(path))
        lib = KernelLib(cdll, tier, path)
    except Exception as exc:  # noqa: BLE001 - any build/load problem means "use torch"
        log.warning("CPU kernels (tier %s) unavailable, using torch ops: %s", tier, exc)
        return None
    lib.check()
    return lib
