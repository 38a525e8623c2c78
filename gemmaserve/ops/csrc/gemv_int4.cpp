// Few-row GEMV over group-wise 4-bit weights in the compressed-tensors "pack-quantized" layout:
// out[m, n] = sum_g scale[n, g] * sum_{k in group g} (nibble(n, k) - 8) * x[m, k], x bf16, fp32 accumulation.
// Weight row n is ceil(K/8) int32 words; word w holds element 8w+i at bits 4i..4i+3 (stored as q + 8), so byte j
// of the row holds element 2j in its low and 2j+1 in its high nibble. Each weight row is read from memory
// once per call for all rows of x (the 8-row register blocks of one output row run back to back while the
// row sits in L1), widened in registers, never dequantised into a copy.
//
// Tiers (`tier` argument; the caller picks the best the CPU has, tests force each one):
//   3 avx512bf16: nibbles -> bf16 by a 16-entry vpermw table, VDPBF16PS against x in bf16 (products exact)
//   2 avx512:     nibbles -> int32 -> fp32, FMA against x in fp32
//   1 avx2:       the avx512 form on 8-lane registers
//   0 portable:   scalar
// VNNI (VPDPBUSD) is not a tier: it multiplies integers, so it would need x quantised to int8 per step
// (W4A8), a different numerical contract from this weight-only kernel.
// The vector tiers need K % 32 == 0 and a group size that is a multiple of 32; the caller routes other
// shapes to the portable tier. The last group may be partial (K % group != 0), as in compressed-tensors.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <immintrin.h>
#include <omp.h>

#include "bf16.h"

namespace {

constexpr int kRowBlock = 8;     // rows of x per register block (avx2: 4)
constexpr int64_t kNBlock = 16;  // output rows per parallel work item

// x row prepared once per call, permuted per 32-element chunk to [even 16 | odd 16] so that the low
// nibbles of a chunk's 16 bytes line up with the first half and the high nibbles with the second.
template <typename T>
void permute_rows(const bf16_t* x, int64_t m, int64_t xs, int64_t k, T* out) {
    for (int64_t r = 0; r < m; ++r) {
        const bf16_t* src = x + r * xs;
        T* dst = out + r * k;
        for (int64_t c = 0; c + 32 <= k; c += 32)
            for (int i = 0; i < 16; ++i) {
                if constexpr (sizeof(T) == 4) {
                    dst[c + i] = bf16_to_f32(src[c + 2 * i]);
                    dst[c + 16 + i] = bf16_to_f32(src[c + 2 * i + 1]);
                } else {
                    dst[c + i] = src[c + 2 * i];
                    dst[c + 16 + i] = src[c + 2 * i + 1];
                }
            }
    }
}

// Portable: unpermuted fp32 x rows.
void row_portable(const uint8_t* w, const bf16_t* s, int64_t k, int64_t g, const float* const* xr, int m,
                  float* res) {
    const int64_t ng = (k + g - 1) / g;
    for (int r = 0; r < m; ++r) {
        float total = 0.f;
        for (int64_t gi = 0; gi < ng; ++gi) {
            float acc = 0.f;
            const int64_t end = std::min(k, (gi + 1) * g);
            for (int64_t i = gi * g; i < end; ++i) {
                const int nib = (w[i >> 1] >> ((i & 1) * 4)) & 0xF;
                acc += (float)(nib - 8) * xr[r][i];
            }
            total += acc * bf16_to_f32(s[gi]);
        }
        res[r] = total;
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

// avx512: M <= kRowBlock rows of permuted fp32 x.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void row_avx512(const uint8_t* w, const bf16_t* s, int64_t k,
                                                                        int64_t g, const float* const* xr,
                                                                        float* res) {
    __m512 total[M];
    for (int r = 0; r < M; ++r) total[r] = _mm512_setzero_ps();
    const __m128i lo_mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t g0 = 0; g0 < k; g0 += g) {
        const int64_t end = std::min(k, g0 + g);
        __m512 acc[M];
        for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t c = g0; c < end; c += 32) {
            const __m128i b = _mm_loadu_si128((const __m128i*)(w + c / 2));
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, lo_mask), eight);
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), lo_mask), eight);
            const __m512 wl = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
            const __m512 wh = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
            for (int r = 0; r < M; ++r) {
                acc[r] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xr[r] + c), acc[r]);
                acc[r] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xr[r] + c + 16), acc[r]);
            }
        }
        const __m512 sc = _mm512_set1_ps(bf16_to_f32(s[g0 / g]));
        for (int r = 0; r < M; ++r) total[r] = _mm512_fmadd_ps(acc[r], sc, total[r]);
    }
    for (int r = 0; r < M; ++r) res[r] = hsum512(total[r]);
}

// avx512bf16: M <= kRowBlock rows of permuted bf16 x.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void row_avx512bf16(
    const uint8_t* w, const bf16_t* s, int64_t k, int64_t g, const bf16_t* const* xr, float* res) {
    // bf16 bit patterns of -8..7 indexed by the stored nibble (q + 8); entries 16..31 unused.
    const __m512i table = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0x0000,
                                           (short)0xBF80, (short)0xC000, (short)0xC040, (short)0xC080,
                                           (short)0xC0A0, (short)0xC0C0, (short)0xC0E0, (short)0xC100);
    const __m256i lo_mask = _mm256_set1_epi16(0x0F);
    __m512 total[M];
    for (int r = 0; r < M; ++r) total[r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < k; g0 += g) {
        const int64_t end = std::min(k, g0 + g);
        __m512 acc[M];
        for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t c = g0; c < end; c += 32) {
            const __m256i b16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(w + c / 2)));
            const __m256i lo = _mm256_and_si256(b16, lo_mask);
            const __m256i hi = _mm256_srli_epi16(b16, 4);
            const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            const __m512bh wv = (__m512bh)_mm512_permutexvar_epi16(idx, table);
            for (int r = 0; r < M; ++r)
                acc[r] = _mm512_dpbf16_ps(acc[r], wv, (__m512bh)_mm512_loadu_si512(xr[r] + c));
        }
        const __m512 sc = _mm512_set1_ps(bf16_to_f32(s[g0 / g]));
        for (int r = 0; r < M; ++r) total[r] = _mm512_fmadd_ps(acc[r], sc, total[r]);
    }
    for (int r = 0; r < M; ++r) res[r] = _mm512_reduce_add_ps(total[r]);
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

// avx2: M <= 4 rows of permuted fp32 x (16 ymm registers).
template <int M>
__attribute__((target("avx2,fma"))) void row_avx2(const uint8_t* w, const bf16_t* s, int64_t k, int64_t g,
                                                   const float* const* xr, float* res) {
    __m256 total[M];
    for (int r = 0; r < M; ++r) total[r] = _mm256_setzero_ps();
    const __m128i lo_mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t g0 = 0; g0 < k; g0 += g) {
        const int64_t end = std::min(k, g0 + g);
        __m256 acc[M];
        for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
        for (int64_t c = g0; c < end; c += 32) {
            const __m128i b = _mm_loadu_si128((const __m128i*)(w + c / 2));
            const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, lo_mask), eight);
            const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), lo_mask), eight);
            __m256 wv[4];
            wv[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            wv[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
            wv[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            wv[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
            for (int r = 0; r < M; ++r)
                for (int q = 0; q < 4; ++q) acc[r] = _mm256_fmadd_ps(wv[q], _mm256_loadu_ps(xr[r] + c + 8 * q), acc[r]);
        }
        const __m256 sc = _mm256_set1_ps(bf16_to_f32(s[g0 / g]));
        for (int r = 0; r < M; ++r) total[r] = _mm256_fmadd_ps(acc[r], sc, total[r]);
    }
    for (int r = 0; r < M; ++r) res[r] = hsum256(total[r]);
}

// One weight row against m rows of x (pointers into the prepared copy), in register blocks.
template <typename T, typename F>
inline void row_blocks(int m, int block, const T* const* xr, float* res, F&& run) {
    for (int r0 = 0; r0 < m; r0 += block) run(std::min(block, m - r0), xr + r0, res + r0);
}

#define GS_DISPATCH_M(FN, M_, ...)              \
    switch (M_) {                               \
        case 1: FN<1>(__VA_ARGS__); break;      \
        case 2: FN<2>(__VA_ARGS__); break;      \
        case 3: FN<3>(__VA_ARGS__); break;      \
        case 4: FN<4>(__VA_ARGS__); break;      \
        case 5: FN<5>(__VA_ARGS__); break;      \
        case 6: FN<6>(__VA_ARGS__); break;      \
        case 7: FN<7>(__VA_ARGS__); break;      \
        default: FN<8>(__VA_ARGS__); break;     \
    }

void one_row(int tier, const uint8_t* w, const bf16_t* s, int64_t k, int64_t g, const void* const* xr, int m,
             float* res) {
    if (tier == 3) {
        row_blocks(m, kRowBlock, (const bf16_t* const*)xr, res, [&](int mm, const bf16_t* const* x, float* o) {
            GS_DISPATCH_M(row_avx512bf16, mm, w, s, k, g, x, o)
        });
    } else if (tier == 2) {
        row_blocks(m, kRowBlock, (const float* const*)xr, res, [&](int mm, const float* const* x, float* o) {
            GS_DISPATCH_M(row_avx512, mm, w, s, k, g, x, o)
        });
    } else if (tier == 1) {
        row_blocks(m, 4, (const float* const*)xr, res, [&](int mm, const float* const* x, float* o) {
            switch (mm) {
                case 1: row_avx2<1>(w, s, k, g, x, o); break;
                case 2: row_avx2<2>(w, s, k, g, x, o); break;
                case 3: row_avx2<3>(w, s, k, g, x, o); break;
                default: row_avx2<4>(w, s, k, g, x, o); break;
            }
        });
    } else {
        row_portable(w, s, k, g, (const float* const*)xr, m, res);
    }
}

// One row to bf16 in natural element order: the low/high nibbles of 16 bytes interleaved back to elements
// 0..31, widened, scaled in fp32, rounded like torch (nearest even).
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dequant_row_avx512(const uint8_t* w, const bf16_t* s,
                                                                                int64_t k, int64_t g, bf16_t* o) {
    const __m128i lo_mask = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t c = 0; c < k; c += 32) {
        const __m512 sc = _mm512_set1_ps(bf16_to_f32(s[c / g]));
        const __m128i b = _mm_loadu_si128((const __m128i*)(w + c / 2));
        const __m128i lo = _mm_and_si128(b, lo_mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo_mask);
        const __m128i first = _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), eight);   // elements c .. c+15
        const __m128i second = _mm_sub_epi8(_mm_unpackhi_epi8(lo, hi), eight);  // elements c+16 .. c+31
        const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(first)), sc);
        const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(second)), sc);
        _mm256_storeu_si256((__m256i*)(o + c), f32x16_to_bf16(f0));
        _mm256_storeu_si256((__m256i*)(o + c + 16), f32x16_to_bf16(f1));
    }
}

}  // namespace

extern "C" {

// Which tiers this CPU runs: bit t set = tier t usable.
int gs_int4_tiers() {
    __builtin_cpu_init();
    int t = 1;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) t |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        t |= 4;
    if ((t & 4) && __builtin_cpu_supports("avx512bf16")) t |= 8;
    return t;
}

// MoE gather (and, with E = 1 and ids all 0, the dense GEMV): out[m, j, :] = x[m] @ W[ids[m, j]]^T.
// packed [E, N, ceil(K/8)] int32, scale [E, N, ceil(K/G)] bf16, ids [M, topk] int64, x [M, K] bf16 (row stride xs),
// out [M, topk, N] fp32 or bf16. Pairs that chose the same expert share its weight pass.
void gs_gemv_int4_experts(const int32_t* packed, const bf16_t* scale, int64_t e, int64_t n, int64_t k, int64_t g,
                          const int64_t* ids, int64_t m, int64_t topk, const bf16_t* x, int64_t xs, void* out,
                          int out_f32, int tier, int nthreads) {
    const int64_t ng = (k + g - 1) / g;
    const bool vec = tier > 0;
    // Prepared x: permuted bf16 (tier 3), permuted fp32 (1, 2) or plain fp32 (portable).
    std::vector<float> xf;
    std::vector<bf16_t> xb;
    std::vector<const void*> xrow(m);
    if (tier == 3) {
        xb.resize(m * k);
        permute_rows(x, m, xs, k, xb.data());
        for (int64_t r = 0; r < m; ++r) xrow[r] = xb.data() + r * k;
    } else {
        xf.resize(m * k);
        if (vec) {
            permute_rows(x, m, xs, k, xf.data());
        } else {
            for (int64_t r = 0; r < m; ++r)
                for (int64_t i = 0; i < k; ++i) xf[r * k + i] = bf16_to_f32(x[r * xs + i]);
        }
        for (int64_t r = 0; r < m; ++r) xrow[r] = xf.data() + r * k;
    }
    // Pairs grouped by expert: pair p = m * topk + j.
    std::vector<int64_t> count(e + 1, 0), pairs(m * topk);
    for (int64_t p = 0; p < m * topk; ++p) ++count[ids[p] + 1];
    for (int64_t i = 0; i < e; ++i) count[i + 1] += count[i];
    {
        std::vector<int64_t> fill(count.begin(), count.end() - 1);
        for (int64_t p = 0; p < m * topk; ++p) pairs[fill[ids[p]]++] = p;
    }
    std::vector<int64_t> active;
    for (int64_t i = 0; i < e; ++i)
        if (count[i + 1] > count[i]) active.push_back(i);
    const int64_t nblocks = (n + kNBlock - 1) / kNBlock;
    const int64_t items = (int64_t)active.size() * nblocks;
    const int64_t kw = (k + 7) / 8;  // int32 words per weight row (compressed-tensors pads each row)
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<const void*> xr(m * topk);
        std::vector<float> res(m * topk);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) {
            const int64_t ex = active[it / nblocks];
            const int64_t n0 = (it % nblocks) * kNBlock, n1 = std::min(n, n0 + kNBlock);
            const int64_t p0 = count[ex], np = count[ex + 1] - p0;
            for (int64_t q = 0; q < np; ++q) xr[q] = xrow[pairs[p0 + q] / topk];
            for (int64_t row = n0; row < n1; ++row) {
                const uint8_t* w = (const uint8_t*)(packed + (ex * n + row) * kw);
                one_row(tier, w, scale + (ex * n + row) * ng, k, g, xr.data(), (int)np, res.data());
                for (int64_t q = 0; q < np; ++q) {
                    const int64_t idx = pairs[p0 + q] * n + row;
                    if (out_f32) ((float*)out)[idx] = res[q];
                    else ((bf16_t*)out)[idx] = f32_to_bf16(res[q]);
                }
            }
        }
    }
}

// Dequantise rows of a 4-bit matrix to bf16 (the prefill path: many rows of x make a bf16 GEMM on the
// dequantised weights cheaper than the GEMV): out[r, k] = bf16((nibble - 8) * scale[r, k / G]), q * scale
// exact in fp32 and rounded once, as torch's (q.float() * scale).to(bf16). packed [R, ceil(K/8)], scale
// [R, ceil(K/G)] bf16, out [R, K] bf16.
void gs_int4_dequant_bf16(const int32_t* packed, const bf16_t* scale, int64_t rows, int64_t k, int64_t g,
                          bf16_t* out, int nthreads) {
    const int64_t kw = (k + 7) / 8, ng = (k + g - 1) / g;
    const bool vec = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) && k % 32 == 0 && g % 32 == 0;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* w = (const uint8_t*)(packed + r * kw);
        const bf16_t* s = scale + r * ng;
        bf16_t* o = out + r * k;
        if (vec) {
            dequant_row_avx512(w, s, k, g, o);
        } else {
            for (int64_t i = 0; i < k; ++i) {
                const int nib = (w[i >> 1] >> ((i & 1) * 4)) & 0xF;
                o[i] = f32_to_bf16((float)(nib - 8) * bf16_to_f32(s[i / g]));
            }
        }
    }
}

// Symmetric group-wise quantization, the same numbers as ops.int4.quantize_int4: per group scale =
// bf16(max|w| / 7.5) (1 for an all-zero group), q = round-half-even(w / scale) clamped to [-8, 7], packed
// as compressed-tensors does. w [R, K] bf16 (w_f32 = 0) or fp32, packed [R, ceil(K/8)] int32, scale
// [R, ceil(K/G)] bf16.
void gs_int4_quantize(const void* w, int w_f32, int64_t rows, int64_t k, int64_t g, int32_t* packed, bf16_t* scale,
                      int nthreads) {
    const int64_t kw = (k + 7) / 8, ng = (k + g - 1) / g;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> row(k);
        for (int64_t i = 0; i < k; ++i)
            row[i] = w_f32 ? ((const float*)w)[r * k + i] : bf16_to_f32(((const bf16_t*)w)[r * k + i]);
        std::vector<uint8_t> nib(kw * 8, 0);  // padding past K packs as nibble 0, as compressed-tensors pads
        for (int64_t gi = 0; gi < ng; ++gi) {
            const int64_t a = gi * g, b = std::min(k, a + g);
            float amax = 0.f;
            for (int64_t i = a; i < b; ++i) amax = std::max(amax, std::fabs(row[i]));
            const float s = amax > 0.f ? bf16_to_f32(f32_to_bf16(amax / 7.5f)) : 1.f;
            scale[r * ng + gi] = f32_to_bf16(s);
            for (int64_t i = a; i < b; ++i) {
                const float q = std::nearbyint(row[i] / s);  // the default rounding mode: half to even
                nib[i] = (uint8_t)(std::min(7.f, std::max(-8.f, q)) + 8.f);
            }
        }
        for (int64_t j = 0; j < kw; ++j) {
            uint32_t word = 0;
            for (int i = 0; i < 8; ++i) word |= (uint32_t)nib[j * 8 + i] << (4 * i);
            packed[r * kw + j] = (int32_t)word;
        }
    }
}

}  // extern "C"
