"""ops.kernel_lib: one ABI table that matches the C header, a library per ISA tier that reports what its
tier promises, a clear error on a mismatch, and a build failure that falls back to torch once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import gemmaserve.ops.kernel_lib as kernel_lib
from gemmaserve.config import KernelConfig
from gemmaserve.ops import cpu_kernels
from gemmaserve.ops.dispatch import KernelPolicy

HEADER = Path(kernel_lib.__file__).parent / "csrc" / "gs_kernels.h"


def _prototypes() -> dict[str, int]:
    """name -> argument count of every function gs_kernels.h declares."""
    text = re.sub(r"//[^\n]*", "", HEADER.read_text())
    protos = {}
    for name, args in re.findall(r"\b(gs_\w+)\s*\(([^)]*)\)\s*;", text):
        args = args.strip()
        protos[name] = 0 if args in ("", "void") else args.count(",") + 1
    return protos


def test_abi_table_matches_the_header():
    protos = _prototypes()
    assert set(protos) == set(kernel_lib.ABI)
    assert {name: len(argtypes) for name, (_, argtypes) in kernel_lib.ABI.items()} == protos
    header = HEADER.read_text()
    assert f"#define GS_ABI_VERSION {kernel_lib.ABI_VERSION}" in header


def test_every_source_shares_the_header():
    for src in kernel_lib._SRCS:  # (gemv_int4.cpp is its own library, ops/cpu_int4.py; it shares bf16.h)
        text = src.read_text()
        assert '#include "gs_kernels.h"' in text, src.name
        assert 'extern "C" void' not in text and "typedef uint16_t bf16_t" not in text, src.name


def test_library_reports_its_tier(policy, lib):
    assert lib.tier == policy.tier
    assert lib.features == kernel_lib.TIER_FEATURES[policy.tier]
    assert (lib.w_count, lib.d_count, lib.abi) == (kernel_lib.DECODE_LAYER_WEIGHTS, kernel_lib.DECODE_LAYER_DIMS,
                                                   kernel_lib.ABI_VERSION)
    want_isa = {"portable": "portable", "avx2": "avx2", "avx512": "avx512", "avx512bf16": "avx512bf16",
                "amx": "amx+avx512bf16"}[policy.tier]
    assert lib.isa == want_isa
    assert lib.rows_per_pass == (kernel_lib.AMX_ROWS if policy.tier == "amx" else kernel_lib.MAX_ROWS)
    assert policy.gemv_rows == lib.rows_per_pass
    lib.check()  # no exception


def test_every_tier_computes_the_same_gemv(policy, lib):
    """The tiers' code paths differ (AMX tiles, AVX512-BF16 dot products, FMA, scalar) but agree to
    within fp32 summation order."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(300, 704, generator=g).bfloat16()
    x = torch.randn(5, 704, generator=g).bfloat16()
    got = cpu_kernels.gemv(lib, w, x, out_dtype=torch.float32)
    ref = x.float() @ w.float().T
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_a_mismatched_library_fails_with_a_clear_message(lib, monkeypatch):
    monkeypatch.setattr(kernel_lib, "DECODE_LAYER_WEIGHTS", kernel_lib.DECODE_LAYER_WEIGHTS + 1)
    with pytest.raises(kernel_lib.KernelLibError, match="decode layer slots 25 weights / 11 dims"):
        lib.check()
    monkeypatch.undo()
    monkeypatch.setattr(kernel_lib, "ABI_VERSION", 99)
    with pytest.raises(kernel_lib.KernelLibError, match="ABI version 2, Python expects 99"):
        lib.check()
    monkeypatch.undo()
    wrong = dict(kernel_lib.TIER_FEATURES, **{lib.tier: lib.features ^ kernel_lib.F_AMX})
    monkeypatch.setattr(kernel_lib, "TIER_FEATURES", wrong)
    with pytest.raises(kernel_lib.KernelLibError, match="compiled features"):
        lib.check()


def test_a_build_failure_is_logged_once_and_means_torch(monkeypatch, tmp_path, caplog):
    calls = []

    def broken(tier, config):
        calls.append(tier)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(kernel_lib, "build", broken)
    cfg = KernelConfig(build_dir=str(tmp_path))  # its own cache entry: other tests' libraries stay loaded
    with caplog.at_level("WARNING"):
        assert kernel_lib.load("portable", cfg) is None
        assert kernel_lib.load("portable", cfg) is None
    assert calls == ["portable"] and "no compiler" in caplog.text
    p = KernelPolicy.create(cfg, "cpu").for_tier("portable")
    assert p.lib is None and not p.takes("norm", torch.zeros(4, dtype=torch.bfloat16))
