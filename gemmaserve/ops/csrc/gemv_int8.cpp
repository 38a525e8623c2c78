// Few-row GEMV over per-output-channel int8 weights: out[m, n] = scale[n] * sum_k x[m, k] * q[n, k] with x
// bf16, fp32 accumulation, each weight row read once for up to 8 rows of x and widened in registers (the AMX
// form: through an 8 KiB L1 slab; never a dequantised copy: the point of int8 is reading half the bytes of
// bf16). Same build and C ABI as gemv_bf16.cpp. Paths: AVX512 (F + BW + VL) FMA for 1-2 rows, AMX-BF16 tiles
// on widened blocks from 3 rows, portable scalar.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define GS_I8_AMX 1
#else
#define GS_I8_AMX 0
#endif

#include "amx.h"
#include "gs_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GS_I8_VEC 1
#else
#define GS_I8_VEC 0
#endif
#ifndef GS_I8_AMX_MIN_ROWS
// From this many rows the AMX form (below) replaces the FMA form: FMA work grows with the rows while the
// AMX form's cost is the widening alone. Measured (one core, G weights/s at 8 rows): 256 MB of weights
// FMA 3.3, AMX 6-7.5 (bf16 kernel 4-6); L2-resident AMX 17 at 3-8 rows, FMA 27 at 1 row.
#define GS_I8_AMX_MIN_ROWS 3
#endif
// Software prefetch of the next row block (same column) into L2, one line at a time: the hardware
// prefetchers alone keep too few misses in flight for 8-16 interleaved row streams. Measured (one core,
// 256 MB of [1024, 1024] weights, busy machine), G weights/s at 1 row: no prefetch 6.7-7.3, 512 bytes
// ahead into L1 6.0-9.5, next block into L2 8.0-11.0 (the bf16 kernel: 4.0-6.0).
#ifndef GS_I8_PF
#define GS_I8_PF 1  // 0 = no software prefetch
#endif

namespace {

constexpr int kMaxRows = 8;
constexpr int kChunksPerThread = 8;  // dynamic row chunks per thread, as gemv_bf16's AMX path (contention)

inline float scale_at(const void* s, int f32, int64_t n) {
    return f32 ? ((const float*)s)[n] : bf16_to_f32(((const bf16_t*)s)[n]);
}

inline void put(void* out, int out_f32, int64_t idx, float v) {
    if (out_f32) ((float*)out)[idx] = v;
    else ((bf16_t*)out)[idx] = f32_to_bf16(v);
}

#if GS_I8_VEC
// R weight rows x M rows of fp32 x -> res[r * M + m] (unscaled fp32 sums). 16 weights at a time are
// sign-extended to int32 and converted to fp32 (exact), then one FMA per x row: x * q is exact in fp32
// (8 x 8 significant bits), so only the summation rounds. Measured on this CPU with L2-resident weights,
// one core: this form 30 G weights/s, a vpermi2b table widening to bf16 + dpbf16 20, int8 -> fp32 ->
// bf16 + dpbf16 16 (the bf16 kernel reads 45 G bf16 weights/s).
template <int R, int M>
__attribute__((always_inline)) inline void block(const int8_t* q, int64_t K, const float* xp, int64_t Kp,
                                                 float* res) {
    __m512 acc[R][M];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 mask = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
        __m512 w[R];
        for (int r = 0; r < R; ++r) {
            const int8_t* row = q + r * K + k;
            if (GS_I8_PF && (k & 63) == 0) _mm_prefetch((const char*)(row + R * K), _MM_HINT_T1);
            w[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, row)));
        }
        for (int m = 0; m < M; ++m) {
            const __m512 xv = _mm512_loadu_ps(xp + m * Kp + k);  // zero-padded past K
            for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(w[r], xv, acc[r][m]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) res[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}

inline int64_t padded(int64_t K) { return (K + 15) / 16 * 16; }
#else
template <int R, int M>
inline void block(const int8_t* q, int64_t K, const float* xp, int64_t Kp, float* res) {
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) {
            float s = 0.f;
            for (int64_t k = 0; k < K; ++k) s += (float)q[r * K + k] * xp[m * Kp + k];
            res[r * M + m] = s;
        }
}

inline int64_t padded(int64_t K) { return K; }
#endif

// Rows of x (row pointers) -> xp [M, Kp] fp32 (exact), zero-padded to Kp.
void prep_x(const bf16_t* const* rows, int M, int64_t K, float* xp) {
    const int64_t Kp = padded(K);
    for (int m = 0; m < M; ++m) {
        for (int64_t k = 0; k < K; ++k) xp[m * Kp + k] = bf16_to_f32(rows[m][k]);
        for (int64_t k = K; k < Kp; ++k) xp[m * Kp + k] = 0.f;
    }
}

// One weight pass: rows [n0, n1) of q for M prepared x rows; row m of the result goes to out + off[m] + n.
struct Job {
    const int8_t* q;
    const void* scale;
    int scale_f32;
    int64_t K;
    const float* xp;
    void* out;
    int out_f32;
    int64_t off[kMaxRows];
    int M;
    const bf16_t* xb;  // x packed as the AMX B tile [K/2][M][2], or null: the FMA form
};

template <int M>
void rows_range(const Job& j, int64_t n0, int64_t n1) {
    constexpr int R = M <= 2 ? 8 : M <= 4 ? 4 : 2;  // R * M accumulators + R widened rows fit the 32 zmm registers
    const int64_t Kp = padded(j.K);
    float res[R * M];
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        block<R, M>(j.q + n * j.K, j.K, j.xp, Kp, res);
        for (int r = 0; r < R; ++r) {
            const float s = scale_at(j.scale, j.scale_f32, n + r);
            for (int m = 0; m < M; ++m) put(j.out, j.out_f32, j.off[m] + n + r, res[r * M + m] * s);
        }
    }
    for (; n < n1; ++n) {
        block<1, M>(j.q + n * j.K, j.K, j.xp, Kp, res);
        const float s = scale_at(j.scale, j.scale_f32, n);
        for (int m = 0; m < M; ++m) put(j.out, j.out_f32, j.off[m] + n, res[m] * s);
    }
}

typedef void (*rows_fn)(const Job&, int64_t, int64_t);
const rows_fn kRows[kMaxRows + 1] = {nullptr, rows_range<1>, rows_range<2>, rows_range<3>, rows_range<4>,
                                     rows_range<5>, rows_range<6>, rows_range<7>, rows_range<8>};

#if GS_I8_AMX
// AMX form for several rows: each 16-row x 32-k block of q is widened (int8 -> fp32 -> bf16, exact) into a
// 1 KiB L1 buffer that an A tile loads; x^T is the VNNI B tile packed once per call, as in gemv_bf16.cpp.
// The widening is the whole cost, independent of the row count.

// x rows -> [K/2][M][2] bf16 pairs (K even).
void pack_x(const bf16_t* const* rows, int M, int64_t K, bf16_t* xb) {
    for (int64_t kp = 0; kp < K / 2; ++kp)
        for (int m = 0; m < M; ++m) {
            xb[(kp * M + m) * 2] = rows[m][2 * kp];
            xb[(kp * M + m) * 2 + 1] = rows[m][2 * kp + 1];
        }
}

// Rows [n0, n1) of q, (n1 - n0) a multiple of 16, K a multiple of 32.
void amx_rows(const Job& j, int64_t n0, int64_t n1) {
    const int M = j.M;
    const int64_t K = j.K;
    TileCfg cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 16; cfg.colsb[0] = (uint16_t)(M * 4);  // tmm0: C [16 n x M] fp32
    cfg.rows[1] = 16; cfg.colsb[1] = 64;                 // tmm1: A [16 n x 32 k] bf16
    cfg.rows[2] = 16; cfg.colsb[2] = (uint16_t)(M * 4);  // tmm2: B [16 k-pairs x M x 2] bf16
    _tile_loadconfig(&cfg);
    // Widen a slab of 16 rows x kSlab k at a time, then run its tile ops: a tile load right after the
    // stores that fill its buffer stalls (no store forwarding into tiles); a slab apart, it does not.
    constexpr int64_t kSlab = 256;
    alignas(64) bf16_t abuf[16 * kSlab];
    alignas(64) float cbuf[16 * kMaxRows];
    for (int64_t n = n0; n < n1; n += 16) {
        _tile_zero(0);
        for (int64_t k0 = 0; k0 < K; k0 += kSlab) {
            const int64_t kn = std::min(kSlab, K - k0);
            for (int r = 0; r < 16; ++r) {
                const int8_t* row = j.q + (n + r) * K + k0;
                for (int64_t k = 0; k < kn; k += 32) {
                    if (GS_I8_PF && (k & 63) == 0) _mm_prefetch((const char*)(row + k + 16 * K), _MM_HINT_T1);
                    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(row + k))));
                    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(row + k + 16))));
                    // Tile layout: block k/32 holds 16 rows of 32 bf16 (exact: |q| <= 128).
                    _mm512_store_si512(abuf + (k / 32) * 512 + r * 32, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            for (int64_t k = 0; k < kn; k += 32) {
                _tile_loadd(1, abuf + (k / 32) * 512, 64);
                _tile_loadd(2, j.xb + (k0 + k) * M, M * 4);
                _tile_dpbf16ps(0, 1, 2);
            }
        }
        _tile_stored(0, cbuf, M * 4);
        for (int i = 0; i < 16; ++i) {
            const float s = scale_at(j.scale, j.scale_f32, n + i);
            for (int m = 0; m < M; ++m) put(j.out, j.out_f32, j.off[m] + n + i, cbuf[i * M + m] * s);
        }
    }
    _tile_release();
}

bool amx_applies(int M, int64_t N, int64_t K) { return M >= GS_I8_AMX_MIN_ROWS && K % 32 == 0 && N >= 16 && amx_ok(); }
#else
inline void pack_x(const bf16_t* const*, int, int64_t, bf16_t*) {}
inline void amx_rows(const Job&, int64_t, int64_t) {}
inline bool amx_applies(int, int64_t, int64_t) { return false; }
#endif

// Rows [n0, n1) of one job in its form (AMX for whole 16-row blocks when packed, FMA for the rest).
void rows(const Job& j, int64_t n0, int64_t n1) {
    if (j.xb) {
        const int64_t n16 = n0 + (n1 - n0) / 16 * 16;
        if (n16 > n0) amx_rows(j, n0, n16);
        n0 = n16;
    }
    if (n0 < n1) kRows[j.M](j, n0, n1);
}

// All N rows of one job: chunks of rows handed out to threads as they ask (a preempted thread holds the
// join up by one chunk); small problems stay on the calling thread (a fork/join costs more).
void run(const Job& j, int64_t N, int nthreads) {
    int nt = nthreads < 1 ? 1 : nthreads;
    if (N * j.K < 65536 || N < 16) nt = 1;
    if (nt == 1) {
        rows(j, 0, N);
        return;
    }
    // Multiples of 16 rows: whole AMX blocks, and whole 8- and 4-row FMA blocks.
    const int64_t chunk = std::max<int64_t>(32, (N / (nt * kChunksPerThread) + 15) / 16 * 16);
    const int64_t nch = (N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < nch; ++c) rows(j, c * chunk, std::min(N, (c + 1) * chunk));
}

}  // namespace

extern "C" {

// 2 = AMX tiles from 3 rows and AVX512 FMA below, 1 = AVX512 FMA, 0 = the portable loop.
int gs_gemv_int8_isa() { return GS_I8_VEC ? (amx_applies(GS_I8_AMX_MIN_ROWS, 16, 32) ? 2 : 1) : 0; }

// q [N, K] int8 contiguous, scale [N] (bf16, or fp32 when scale_f32), x [M, K] bf16 with row stride xs,
// out [M, N] contiguous (bf16 or fp32). Rows beyond 8 go in groups of 8 (each group re-reads q).
void gs_gemv_int8(const int8_t* q, const void* scale, int scale_f32, int64_t N, int64_t K, const bf16_t* x,
                  int64_t M, int64_t xs, void* out, int out_f32, int nthreads) {
    const int64_t Kp = padded(K);
    std::vector<float> xp(kMaxRows * Kp);
    std::vector<bf16_t> xb;
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int mm = (int)std::min<int64_t>(kMaxRows, M - m0);
        const bf16_t* xr[kMaxRows];
        Job j{q, scale, scale_f32, K, xp.data(), out, out_f32, {}, mm, nullptr};
        for (int m = 0; m < mm; ++m) {
            xr[m] = x + (m0 + m) * xs;
            j.off[m] = (m0 + m) * N;
        }
        if (amx_applies(mm, N, K)) {
            xb.resize(K * mm);
            pack_x(xr, mm, K, xb.data());
            j.xb = xb.data();
        }
        prep_x(xr, mm, K, xp.data());  // the FMA form's x: rows past the last 16-row block
        run(j, N, nthreads);
    }
}

// MoE gather: q [E, N, K] int8, scale [E, N], ids [M, topk] int64, x [M, K] (row stride xs),
// out [M, topk, N]. The (token, slot) pairs that chose an expert share its read, up to 8 at a time; all
// chosen experts' row chunks run in one parallel region (one fork/join per call).
void gs_gemv_int8_experts(const int8_t* q, const void* scale, int scale_f32, int64_t E, int64_t N, int64_t K,
                          const int64_t* ids, int64_t M, int64_t topk, const bf16_t* x, int64_t xs, void* out,
                          int out_f32, int nthreads) {
    struct Group { int64_t e; int cnt; int64_t pairs[kMaxRows]; };
    const int64_t P = M * topk;
    std::vector<Group> groups;
    for (int64_t p = 0; p < P; ++p) {
        const int64_t e = ids[p];
        bool seen = false;
        for (int64_t o = 0; o < p; ++o) seen |= ids[o] == e;
        if (seen || e < 0 || e >= E) continue;
        Group g{e, 0, {}};
        for (int64_t o = p; o < P; ++o) {
            if (ids[o] != e) continue;
            g.pairs[g.cnt++] = o;
            if (g.cnt == kMaxRows) {
                groups.push_back(g);
                g.cnt = 0;
            }
        }
        if (g.cnt) groups.push_back(g);
    }
    const int64_t G = (int64_t)groups.size(), Kp = padded(K);
    std::vector<float> xp(G * kMaxRows * Kp);
    std::vector<bf16_t> xb;
    std::vector<Job> jobs(G);
    for (int64_t g = 0; g < G; ++g) {
        const Group& gr = groups[g];
        const bf16_t* xr[kMaxRows];
        const int64_t so = gr.e * N;  // this expert's scales
        Job& j = jobs[g];
        j = Job{q + gr.e * N * K, scale_f32 ? (const void*)((const float*)scale + so) : (const void*)((const bf16_t*)scale + so),
                scale_f32, K, xp.data() + g * kMaxRows * Kp, out, out_f32, {}, gr.cnt, nullptr};
        for (int m = 0; m < gr.cnt; ++m) {
            xr[m] = x + (gr.pairs[m] / topk) * xs;
            j.off[m] = gr.pairs[m] * N;
        }
        prep_x(xr, gr.cnt, K, xp.data() + g * kMaxRows * Kp);
    }
    // AMX-packed x for the groups with enough rows (after the loop: xb must not move once pointed into).
    int64_t xb_len = 0;
    for (int64_t g = 0; g < G; ++g) xb_len += amx_applies(jobs[g].M, N, K) ? K * jobs[g].M : 0;
    xb.resize(xb_len);
    for (int64_t g = 0, at = 0; g < G; ++g) {
        if (!amx_applies(jobs[g].M, N, K)) continue;
        const bf16_t* xr[kMaxRows];
        for (int m = 0; m < groups[g].cnt; ++m) xr[m] = x + (groups[g].pairs[m] / topk) * xs;
        pack_x(xr, jobs[g].M, K, xb.data() + at);
        jobs[g].xb = xb.data() + at;
        at += K * jobs[g].M;
    }
    const int64_t chunk = 256, nch = (N + chunk - 1) / chunk, items = G * nch;
    int nt = nthreads < 1 ? 1 : nthreads;
    if (items < 2 || N * K < 65536) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t g = it / nch, n0 = (it % nch) * chunk;
        rows(jobs[g], n0, std::min(N, n0 + chunk));
    }
}

// out[i] = bf16(q[i]), exact, split over the OpenMP threads for large arrays: the weight copy of the
// dequantising path that prefill-sized int8 matmuls take (torch's int8 -> bf16 cast measured 0.6 ms for
// [1024, 1024] at one thread, two thirds of the 512-row GEMM that follows).
void gs_int8_to_bf16(const int8_t* q, int64_t n, bf16_t* out, int nthreads) {
    const int nt = n >= (1 << 18) && nthreads > 1 ? nthreads : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < n; c += 8192) {
        const int64_t e = std::min(n, c + 8192);
        int64_t i = c;
#if GS_I8_VEC && defined(__AVX512BF16__)
        for (; i + 32 <= e; i += 32) {
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + i))));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + i + 16))));
            _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
#endif
        for (; i < e; ++i) out[i] = f32_to_bf16((float)q[i]);
    }
}

}  // extern "C"
