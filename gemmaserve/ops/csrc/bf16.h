// bf16 <-> fp32 scalar conversions shared by the CPU kernels, rounding exactly as torch does.
#pragma once

#include <cstdint>
#include <cstring>

typedef uint16_t bf16_t;

static inline float bf16_to_f32(bf16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round-to-nearest-even like torch's float -> bfloat16 cast; NaN stays a quiet NaN.
static inline bf16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

#if defined(__x86_64__)
#include <immintrin.h>

// The AVX512 helpers carry target attributes so that a kernel built for any x86 -march can call them
// from its own AVX512-targeted functions (gemv_int4.cpp's tiers); kernels built with -march=native on
// an AVX512 machine call them as before.
// 16 bf16 -> 16 fp32 (exact).
__attribute__((target("avx512f"))) static inline __m512 bf16x16_to_f32(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// 16 fp32 -> 16 bf16 rounded exactly as f32_to_bf16 (nearest even, denormals kept, NaN quieted); not
// VCVTNEPS2BF16, which flushes denormals.
__attribute__((target("avx512f"))) static inline __m256i f32x16_to_bf16(__m512 f) {
    const __m512i u = _mm512_castps_si512(f);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1))));
    r = _mm512_srli_epi32(r, 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}
#endif
