// Few-row bf16 GEMV (out[m, n] = sum_k x[m, k] * w[n, k]) that streams each weight row once for all rows.
// Plain C ABI (called through ctypes with raw pointers) so it builds with gcc alone: no torch headers,
// no ninja, about a second to compile. Paths: AVX512-BF16 (dpbf16), AVX512F (shift to fp32 + FMA),
// AVX2+FMA (shift to fp32 + FMA, 8 lanes), portable scalar; the preprocessor picks one from the tier's
// -march flags (ops/cpu_isa.py).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include "amx.h"
#include "gs_kernels.h"

// Work split of the threaded AMX GEMV: 0 = one static share per thread, k > 0 = about k row chunks per
// thread handed out dynamically (gs_gemv_set_chunks). Bench model decode, 2 threads, lightly loaded
// machine, ms/step static vs 8 chunks: 1 row 27.0-30.9 vs 24.4-26.8; far less stall under contention.
static int g_chunks_per_thread = 8;
// Expert gather in one parallel region over all chosen experts (1) or one region per expert (0).
static int g_experts_merged = 1;
// The MoE layer's dense MLP projections in the same parallel region as the experts (1) or separate (0).
static int g_dense_merged = 1;

#ifndef GS_AMX_MIN_ROWS
#define GS_AMX_MIN_ROWS 1  // AMX also for one row: ~5% more read bandwidth than dpbf16 (measured)
#endif
#ifndef GS_PF
#define GS_PF 512  // prefetch distance in bytes (0 = none)
#endif

#if defined(__AVX512F__)
// One step of 32 k-values: acc[r][m] += w[r, k:k+32] . x[m, k:k+32] (fp32 accumulate, 16 lanes).
template <int R, int M>
__attribute__((always_inline)) static inline void step32(__m512 (&acc)[R][M], const bf16_t* const (&wr)[R], const bf16_t* x,
                          int64_t xs, int64_t k, __mmask32 mask) {
#if defined(__AVX512BF16__)
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, wr[r] + k);
    for (int m = 0; m < M; ++m) {
        __m512i xv = _mm512_maskz_loadu_epi16(mask, x + m * xs + k);
        for (int r = 0; r < R; ++r)
            acc[r][m] = _mm512_dpbf16_ps(acc[r][m], (__m512bh)wv[r], (__m512bh)xv);
    }
#else
    // Split 32 bf16 into even/odd halves widened to fp32 by shifting into the high 16 bits.
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000);
    __m512 wlo[R], whi[R];
    for (int r = 0; r < R; ++r) {
        __m512i v = _mm512_maskz_loadu_epi16(mask, wr[r] + k);
        wlo[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        whi[r] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
    }
    for (int m = 0; m < M; ++m) {
        __m512i v = _mm512_maskz_loadu_epi16(mask, x + m * xs + k);
        __m512 xlo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        __m512 xhi = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
        for (int r = 0; r < R; ++r) {
            acc[r][m] = _mm512_fmadd_ps(wlo[r], xlo, acc[r][m]);
            acc[r][m] = _mm512_fmadd_ps(whi[r], xhi, acc[r][m]);
        }
    }
#endif
}

// R weight rows x M input rows -> res[r * M + m]. R independent rows keep enough FMA chains in flight.
template <int R, int M>
__attribute__((always_inline)) static inline void block(const bf16_t* w, int64_t K, const bf16_t* x, int64_t xs, float* res) {
    __m512 acc[R][M];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
    const bf16_t* wr[R];
    for (int r = 0; r < R; ++r) wr[r] = w + r * K;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        // A fixed distance ahead per row stream: the hardware prefetcher alone stalls at row starts.
        if (GS_PF > 0)
            for (int r = 0; r < R; ++r) _mm_prefetch((const char*)(wr[r] + k) + GS_PF, _MM_HINT_T0);
        step32<R, M>(acc, wr, x, xs, k, (__mmask32)0xffffffffu);
    }
    if (k < K) step32<R, M>(acc, wr, x, xs, k, (__mmask32)((1ull << (K - k)) - 1));
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) res[r * M + m] = _mm512_reduce_add_ps(acc[r][m]);
}
#elif defined(__AVX2__) && defined(__FMA__)
// 16 bf16 as two fp32 vectors: the even lanes shifted into the high half, the odd lanes masked in place
// (the same even/odd split as the AVX512F path; the dot product does not care about lane order).
static inline void split16(const bf16_t* p, __m256& lo, __m256& hi) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)p);
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000)));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// R weight rows x M input rows -> res[r * M + m], 16 k-values per step; the k tail (K % 16) is summed
// in scalar after the vector sum. Every (r, m) sum runs in the same order whatever R and M are.
template <int R, int M>
__attribute__((always_inline)) static inline void block(const bf16_t* w, int64_t K, const bf16_t* x, int64_t xs, float* res) {
    __m256 acc[R][M];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256 wl[R], wh[R];
        for (int r = 0; r < R; ++r) {
            if (GS_PF > 0) _mm_prefetch((const char*)(w + r * K + k) + GS_PF, _MM_HINT_T0);
            split16(w + r * K + k, wl[r], wh[r]);
        }
        for (int m = 0; m < M; ++m) {
            __m256 xl, xh;
            split16(x + m * xs + k, xl, xh);
            for (int r = 0; r < R; ++r) {
                acc[r][m] = _mm256_fmadd_ps(wl[r], xl, acc[r][m]);
                acc[r][m] = _mm256_fmadd_ps(wh[r], xh, acc[r][m]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) {
            float s = hsum8(acc[r][m]);
            for (int64_t kk = k; kk < K; ++kk) s += bf16_to_f32(w[r * K + kk]) * bf16_to_f32(x[m * xs + kk]);
            res[r * M + m] = s;
        }
}
#else
template <int R, int M>
__attribute__((always_inline)) static inline void block(const bf16_t* w, int64_t K, const bf16_t* x, int64_t xs, float* res) {
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < M; ++m) {
            float s = 0.f;
            for (int64_t k = 0; k < K; ++k) s += bf16_to_f32(w[r * K + k]) * bf16_to_f32(x[m * xs + k]);
            res[r * M + m] = s;
        }
}
#endif

static inline void store(void* out, int out_f32, int64_t idx, float v) {
    if (out_f32) ((float*)out)[idx] = v;
    else ((bf16_t*)out)[idx] = f32_to_bf16(v);
}

// Rows [n0, n1) of w for M input rows; out is [M, ldo] with row stride ldo.
template <int M>
static void rows_range(const bf16_t* w, int64_t K, const bf16_t* x, int64_t xs, void* out, int64_t ldo,
                       int out_f32, int64_t n0, int64_t n1) {
#if defined(__AVX512F__) || !defined(__AVX2__)
    constexpr int R = M <= 4 ? 4 : 2;  // R * M accumulators stay within the 32 zmm registers
#else
    constexpr int R = M <= 1 ? 4 : M <= 2 ? 2 : 1;  // R * M accumulators + 2R weight vectors in 16 ymm
#endif
    float res[R * M];
    int64_t n = n0;
    for (; n + R <= n1; n += R) {
        block<R, M>(w + n * K, K, x, xs, res);
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < M; ++m) store(out, out_f32, m * ldo + n + r, res[r * M + m]);
    }
    for (; n < n1; ++n) {
        block<1, M>(w + n * K, K, x, xs, res);
        for (int m = 0; m < M; ++m) store(out, out_f32, m * ldo + n, res[m]);
    }
}

typedef void (*rows_fn)(const bf16_t*, int64_t, const bf16_t*, int64_t, void*, int64_t, int, int64_t, int64_t);
static const rows_fn kRows[9] = {nullptr, rows_range<1>, rows_range<2>, rows_range<3>, rows_range<4>,
                                 rows_range<5>, rows_range<6>, rows_range<7>, rows_range<8>};

// Split [0, N) into per-thread ranges aligned to 4 rows; small problems stay on the calling thread
// because a fork/join costs more than reading a few KiB.
static void run_rows(rows_fn fn, const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t xs,
                     void* out, int64_t ldo, int out_f32, int nthreads) {
    int nt = nthreads < 1 ? 1 : nthreads;
    if (N * K < 65536 || N < 8) nt = 1;
    if (nt == 1) {
        fn(w, K, x, xs, out, ldo, out_f32, 0, N);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t per = ((N + T - 1) / T + 3) / 4 * 4;
        int64_t n0 = t * per, n1 = n0 + per < N ? n0 + per : N;
        if (n0 < n1) fn(w, K, x, xs, out, ldo, out_f32, n0, n1);
    }
}


#if defined(__AMX_BF16__)
// AMX path: C^T[n, m] = W[n, :] . X[m, :] with W as the A tile (16 rows x 32 k, read in place with
// row stride K) and X^T packed once per call as the VNNI B tile, so weights need no repacking.

// Up to this many input rows share one pass over the weights on the AMX path: two B tiles of 16
// columns each (the C tile's 64-byte rows hold 16 fp32 sums).
static constexpr int kAmxMaxRows = 32;

// X^T [M, K] (row stride xs) packed as the VNNI B tiles of amx_rows: m-block 0 (rows 0..15) as
// [K/2][M0][2] followed by m-block 1 (rows 16..M-1) as [K/2][M-M0][2], M0 = min(M, 16).
static void amx_pack(const bf16_t* x, int64_t xs, const int64_t* row_of, int M, int64_t K, bf16_t* pk) {
    const int m0 = M < 16 ? M : 16;
    for (int b = 0; b < 2; ++b) {
        const int lo = b ? m0 : 0, cnt = b ? M - m0 : m0;
        bf16_t* dst = pk + (b ? K * m0 : 0);
        for (int m = 0; m < cnt; ++m) {
            const int64_t row = row_of ? row_of[lo + m] : lo + m;
            const bf16_t* xr = x + row * xs;
            for (int64_t kp = 0; kp < K / 2; ++kp) {
                dst[(kp * cnt + m) * 2] = xr[2 * kp];
                dst[(kp * cnt + m) * 2 + 1] = xr[2 * kp + 1];
            }
        }
    }
}

// A stored C tile [16 n x cnt m] (fp32, row stride cnt) into out[mlo + m, nb + i] (row stride ldo), fp32
// or rounded to bf16 as store() rounds: per m one 16-wide gather and one contiguous store.
static inline void flush_tile(const float* cb, int cnt, int mlo, int64_t nb, void* out, int64_t ldo, int out_f32) {
#if defined(__AVX512F__)
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(cnt));
    for (int m = 0; m < cnt; ++m) {
        const __m512 v = _mm512_i32gather_ps(idx, cb + m, 4);
        const int64_t at = (mlo + m) * ldo + nb;
        if (out_f32) _mm512_storeu_ps((float*)out + at, v);
        else _mm256_storeu_si256((__m256i*)((bf16_t*)out + at), f32x16_to_bf16(v));
    }
#else
    for (int m = 0; m < cnt; ++m)
        for (int i = 0; i < 16; ++i) store(out, out_f32, (mlo + m) * ldo + nb + i, cb[i * cnt + m]);
#endif
}

// Rows [n0, n1) of w, (n1 - n0) a multiple of 16; K a multiple of 32; xb = amx_pack of M <= 32 rows.
// Tiles: tmm0-3 C [16 n x 16 m] fp32 (n-block a/b x m-block 0/1), tmm4/5 B of m-blocks 0/1, tmm6/7 A
// [16 n x 32 k] bf16 read in place. Each weight tile is loaded once for all M rows; every (n, m) sum
// accumulates in the same k order whatever M is, so results do not depend on the grouping.
static void amx_rows(const bf16_t* w, int64_t K, const bf16_t* xb, int M, void* out, int64_t ldo, int out_f32,
                     int64_t n0, int64_t n1) {
    const int m0 = M < 16 ? M : 16, m1 = M - m0;
    TileCfg cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const uint16_t cb[2] = {(uint16_t)(m0 * 4), (uint16_t)(m1 * 4)};
    for (int t = 0; t < 4; ++t) {
        if (cb[t & 1] == 0) continue;
        cfg.rows[t] = 16;
        cfg.colsb[t] = cb[t & 1];
    }
    for (int b = 0; b < 2; ++b)
        if (cb[b]) cfg.rows[4 + b] = 16, cfg.colsb[4 + b] = cb[b];
    cfg.rows[6] = cfg.rows[7] = 16;
    cfg.colsb[6] = cfg.colsb[7] = 64;
    _tile_loadconfig(&cfg);
    alignas(64) float cbuf[4][16 * 16];
    const int64_t ws = K * 2;
    const bf16_t* xb1 = xb + K * m0;
    auto flush = [&](int tile, int64_t nb, int mlo, int cnt) { flush_tile(cbuf[tile], cnt, mlo, nb, out, ldo, out_f32); };
    int64_t n = n0;
    for (; n + 32 <= n1; n += 32) {
        const bf16_t* a0 = w + n * K;
        const bf16_t* a1 = a0 + 16 * K;
        _tile_zero(0);
        _tile_zero(2);
        if (m1) {
            _tile_zero(1);
            _tile_zero(3);
            for (int64_t k = 0; k < K; k += 32) {
                _tile_loadd(4, xb + k * m0, m0 * 4);
                _tile_loadd(5, xb1 + k * m1, m1 * 4);
                _tile_loadd(6, a0 + k, ws);
                _tile_loadd(7, a1 + k, ws);
                _tile_dpbf16ps(0, 6, 4);
                _tile_dpbf16ps(1, 6, 5);
                _tile_dpbf16ps(2, 7, 4);
                _tile_dpbf16ps(3, 7, 5);
            }
        } else {
            for (int64_t k = 0; k < K; k += 32) {
                _tile_loadd(4, xb + k * m0, m0 * 4);
                _tile_loadd(6, a0 + k, ws);
                _tile_loadd(7, a1 + k, ws);
                _tile_dpbf16ps(0, 6, 4);
                _tile_dpbf16ps(2, 7, 4);
            }
        }
        _tile_stored(0, cbuf[0], m0 * 4);
        _tile_stored(2, cbuf[2], m0 * 4);
        flush(0, n, 0, m0);
        flush(2, n + 16, 0, m0);
        if (m1) {
            _tile_stored(1, cbuf[1], m1 * 4);
            _tile_stored(3, cbuf[3], m1 * 4);
            flush(1, n, m0, m1);
            flush(3, n + 16, m0, m1);
        }
    }
    if (n < n1) {  // one last block of 16 rows
        _tile_zero(0);
        if (m1) _tile_zero(1);
        for (int64_t k = 0; k < K; k += 32) {
            _tile_loadd(4, xb + k * m0, m0 * 4);
            _tile_loadd(6, w + n * K + k, ws);
            _tile_dpbf16ps(0, 6, 4);
            if (m1) {
                _tile_loadd(5, xb1 + k * m1, m1 * 4);
                _tile_dpbf16ps(1, 6, 5);
            }
        }
        _tile_stored(0, cbuf[0], m0 * 4);
        flush(0, n, 0, m0);
        if (m1) {
            _tile_stored(1, cbuf[1], m1 * 4);
            flush(1, n, m0, m1);
        }
    }
    _tile_release();
}

// Rows [n0, n1) for any M through the AVX512/portable row kernels, 8 input rows per weight pass.
static void rows_any(const bf16_t* w, int64_t K, const bf16_t* x, int64_t xs, int M, void* out, int64_t ldo,
                     int out_f32, int64_t n0, int64_t n1) {
    const int esz = out_f32 ? 4 : 2;
    for (int m = 0; m < M; m += 8) {
        const int mm = M - m < 8 ? M - m : 8;
        kRows[mm](w, K, x + m * xs, xs, (char*)out + m * ldo * esz, ldo, out_f32, n0, n1);
    }
}

// All of w for M <= kAmxMaxRows rows through AMX (rows past the last multiple of 16 go through rows_any).
static void amx_gemv(const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t xs, int M,
                     void* out, int64_t ldo, int out_f32, int nthreads) {
    std::vector<bf16_t> pack(K * M);
    amx_pack(x, xs, nullptr, M, K, pack.data());
    const bf16_t* xb = pack.data();
    const int64_t N16 = N / 16 * 16;
    int nt = nthreads < 1 ? 1 : nthreads;
    if (N * K < 65536 || N16 < 64) nt = 1;
    if (g_chunks_per_thread > 0 && nt > 1) {
        // Chunks handed out as threads ask for them: a thread the OS preempted (a busy machine, or the
        // server's own threads on the same cores) holds up the join by one chunk, not by its half.
        const int64_t chunk = std::max<int64_t>(64, (N16 / (nt * g_chunks_per_thread) + 15) / 16 * 16);
        const int64_t nchunks = (N16 + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t c = 0; c < nchunks; ++c)
            amx_rows(w, K, xb, M, out, ldo, out_f32, c * chunk, std::min(N16, (c + 1) * chunk));
        if (N16 < N) rows_any(w, K, x, xs, M, out, ldo, out_f32, N16, N);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t per = ((N16 + T - 1) / T + 31) / 32 * 32;
        int64_t n0 = t * per, n1 = n0 + per < N16 ? n0 + per : N16;
        if (n0 < n1) amx_rows(w, K, xb, M, out, ldo, out_f32, n0, n1);
        if (t == T - 1 && N16 < N) rows_any(w, K, x, xs, M, out, ldo, out_f32, N16, N);
    }
}
#endif

#if defined(__AMX_BF16__)
// One weight pass of the AMX jobs below: rows [0, N) of w [N, K] for the M <= kAmxMaxRows packed rows
// xb (amx_pack), written to out [M, ldo] as fp32 or bf16.
struct AmxJob {
    const bf16_t* w;
    int64_t N, K;
    const bf16_t* xb;
    int M;
    void* out;
    int64_t ldo;
    int out_f32;
};

// Every job's rows in one parallel region, in chunks of up to 256 rows handed out as threads ask: one
// fork/join for all of them, and the threads stream one long run of weights instead of a short one per
// job (a short stream ends before the prefetchers ramp up). Needs N % 16 == 0 and K % 32 == 0.
static void run_amx_jobs(const std::vector<AmxJob>& jobs, int nthreads) {
    const int64_t chunk = 256;
    std::vector<int64_t> start(jobs.size() + 1, 0);  // first item of each job
    for (size_t j = 0; j < jobs.size(); ++j) start[j + 1] = start[j] + (jobs[j].N + chunk - 1) / chunk;
    const int64_t items = start.back();
    int nt = nthreads < 1 ? 1 : nthreads;
    if (items < 2) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
        const size_t j = std::upper_bound(start.begin(), start.end(), it) - start.begin() - 1;
        const AmxJob& jb = jobs[j];
        const int64_t n0 = (it - start[j]) * chunk, n1 = std::min(jb.N, n0 + chunk);
        amx_rows(jb.w, jb.K, jb.xb, jb.M, jb.out, jb.ldo, jb.out_f32, n0, n1);
    }
}

// The expert gather's AMX jobs: groups of up to kAmxMaxRows (token, slot) pairs that chose the same
// expert share its read; each (pair, n) is the same fp32 sum whatever its group. `order` gets the pair
// ids grouped by expert, `packs` their packed x rows and `res` room for their fp32 results [pairs][N]
// (scatter_experts stores them). False when AMX does not apply.
struct ExpertPlan {
    std::vector<int64_t> order;
    std::vector<bf16_t> packs;
    std::vector<float> res;
};

static bool plan_experts(const bf16_t* w, int64_t E, int64_t N, int64_t K, const int64_t* ids, int64_t M,
                         int64_t topk, const bf16_t* x, int64_t xs, ExpertPlan& plan, std::vector<AmxJob>& jobs) {
    if (K % 32 != 0 || N % 16 != 0 || N < 16 || !amx_ok()) return false;
    struct Group { int64_t e; int cnt; int64_t first; };  // pairs [first, first + cnt) of order
    const int64_t P = M * topk;
    std::vector<int64_t>& order = plan.order;
    order.clear();
    order.reserve(P);
    std::vector<Group> groups;
    for (int64_t p = 0; p < P; ++p) {
        const int64_t e = ids[p];
        bool seen = false;
        for (int64_t q = 0; q < p; ++q) seen |= ids[q] == e;
        if (seen || e < 0 || e >= E) continue;
        Group g{e, 0, (int64_t)order.size()};
        for (int64_t q = p; q < P; ++q) {
            if (ids[q] != e) continue;
            order.push_back(q);
            if (++g.cnt == kAmxMaxRows) {
                groups.push_back(g);
                g = Group{e, 0, (int64_t)order.size()};
            }
        }
        if (g.cnt) groups.push_back(g);
    }
    const int64_t R = (int64_t)order.size();
    std::vector<int64_t> rows(R);
    for (int64_t i = 0; i < R; ++i) rows[i] = order[i] / topk;
    plan.packs.resize(R * K);
    plan.res.resize(R * N);
    for (const Group& g : groups) {
        amx_pack(x, xs, rows.data() + g.first, g.cnt, K, plan.packs.data() + g.first * K);
        jobs.push_back(AmxJob{w + g.e * N * K, N, K, plan.packs.data() + g.first * K, g.cnt,
                              plan.res.data() + g.first * N, N, 1});
    }
    return true;
}

static void scatter_experts(const ExpertPlan& plan, int64_t N, void* out, int out_f32) {
    for (size_t i = 0; i < plan.order.size(); ++i) {
        const float* src = plan.res.data() + i * N;
        const int64_t at = plan.order[i] * N;
        if (out_f32) {
            std::memcpy((float*)out + at, src, N * sizeof(float));
            continue;
        }
        int64_t n = 0;
#if defined(__AVX512F__)
        for (; n + 16 <= N; n += 16)
            _mm256_storeu_si256((__m256i*)((bf16_t*)out + at + n), f32x16_to_bf16(_mm512_loadu_ps(src + n)));
#endif
        for (; n < N; ++n) ((bf16_t*)out)[at + n] = f32_to_bf16(src[n]);
    }
}

static bool experts_amx(const bf16_t* w, int64_t E, int64_t N, int64_t K, const int64_t* ids, int64_t M,
                        int64_t topk, const bf16_t* x, int64_t xs, void* out, int out_f32, int nthreads) {
    ExpertPlan plan;
    std::vector<AmxJob> jobs;
    if (!plan_experts(w, E, N, K, ids, M, topk, x, xs, plan, jobs)) return false;
    run_amx_jobs(jobs, nthreads);
    scatter_experts(plan, N, out, out_f32);
    return true;
}
#endif

// One group of rows: up to kAmxMaxRows in one weight pass through AMX where it applies, else through
// the AVX512/portable row kernel 8 rows per pass.
static void gemv_group(const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t xs, int mm, void* out,
                       int64_t ldo, int out_f32, int nthreads) {
#if defined(__AMX_BF16__)
    if (mm >= GS_AMX_MIN_ROWS && K % 32 == 0 && N >= 16 && amx_ok()) {
        amx_gemv(w, N, K, x, xs, mm, out, ldo, out_f32, nthreads);
        return;
    }
#endif
    const int esz = out_f32 ? 4 : 2;
    for (int m = 0; m < mm; m += 8)  // the row kernels take 8 rows per pass
        run_rows(kRows[std::min(8, mm - m)], w, N, K, x + m * xs, xs, (char*)out + m * ldo * esz, ldo, out_f32,
                 nthreads);
}

// Input rows one gemv_group reads the weights once for: kAmxMaxRows on the AMX path, else 8.
static int group_rows(int64_t N, int64_t K) {
#if defined(__AMX_BF16__)
    if (K % 32 == 0 && N >= 16 && amx_ok()) return kAmxMaxRows;
#endif
    (void)N;
    (void)K;
    return 8;
}


extern "C" {

void gs_gemv_set_experts_merged(int on) { g_experts_merged = on != 0; }

void gs_gemv_set_dense_merged(int on) { g_dense_merged = on != 0; }

void gs_gemv_set_chunks(int chunks_per_thread) { g_chunks_per_thread = chunks_per_thread < 0 ? 0 : chunks_per_thread; }

// Input rows of x that one pass over a [N, K] weight serves (32 on the AMX path, 8 otherwise).
int gs_gemv_rows_per_pass(int64_t N, int64_t K) { return group_rows(N, K); }

// Which code path this build took: 3 = AMX-BF16 (+ AVX512-BF16), 2 = AVX512-BF16, 1 = AVX512F, 4 = AVX2
// + FMA, 0 = portable.
int gs_gemv_isa() {
#if defined(__AMX_BF16__) && defined(__AVX512BF16__)
    return amx_ok() ? 3 : 2;
#elif defined(__AVX512BF16__)
    return 2;
#elif defined(__AVX512F__)
    return 1;
#elif defined(__AVX2__) && defined(__FMA__)
    return 4;
#else
    return 0;
#endif
}

// w [N, K] contiguous bf16, x [M, K] bf16 with row stride xs, out [M, N] (bf16 or fp32) contiguous.
// Rows go in groups of gs_gemv_rows_per_pass(N, K) (32 on AMX, else 8); each group re-reads w.
void gs_gemv_bf16(const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t M, int64_t xs, void* out,
                  int out_f32, int nthreads) {
    const int esz = out_f32 ? 4 : 2;
    const int64_t per = group_rows(N, K);
    for (int64_t m0 = 0; m0 < M; m0 += per) {
        int64_t mm = M - m0 < per ? M - m0 : per;
        gemv_group(w, N, K, x + m0 * xs, xs, (int)mm, (char*)out + m0 * N * esz, N, out_f32, nthreads);
    }
}

// MoE gather: w [E, N, K] contiguous bf16, ids [M, topk] int64, x [M, K] (row stride xs),
// out [M, topk, N]. Tokens that share an expert are computed together so each expert is read once.
void gs_gemv_bf16_experts(const bf16_t* w, int64_t E, int64_t N, int64_t K, const int64_t* ids, int64_t M,
                          int64_t topk, const bf16_t* x, int64_t xs, void* out, int out_f32, int nthreads) {
#if defined(__AMX_BF16__)
    if (g_experts_merged && experts_amx(w, E, N, K, ids, M, topk, x, xs, out, out_f32, nthreads)) return;
#endif
    const int esz = out_f32 ? 4 : 2;
    const int64_t P = M * topk;
    // Each unique expert: the (token, slot) pairs that chose it, handled in groups of up to 8 tokens.
    for (int64_t p = 0; p < P; ++p) {
        int64_t e = ids[p];
        bool seen = false;
        for (int64_t q = 0; q < p; ++q) seen |= ids[q] == e;
        if (seen || e < 0 || e >= E) continue;
        int64_t pairs[8];
        int cnt = 0;
        for (int64_t q = p; q <= P; ++q) {
            if (q < P && ids[q] != e) continue;
            if (q < P) pairs[cnt++] = q;
            if (cnt == 8 || (q == P && cnt > 0)) {
                // Gather the tokens' x rows into a small contiguous buffer; results scatter per pair.
                std::vector<bf16_t> xbuf(cnt * K);
                bf16_t* xg = xbuf.data();
                for (int i = 0; i < cnt; ++i) std::memcpy(xg + i * K, x + (pairs[i] / topk) * xs, K * 2);
                if (cnt == 1) {
                    gemv_group(w + e * N * K, N, K, xg, K, 1, (char*)out + pairs[0] * N * esz, N, out_f32,
                               nthreads);
                } else {
                    // out rows are not evenly strided across pairs: compute into fp32 scratch, then copy.
                    std::vector<float> tmp(cnt * N);
                    gemv_group(w + e * N * K, N, K, xg, K, cnt, tmp.data(), N, 1, nthreads);
                    for (int i = 0; i < cnt; ++i)
                        for (int64_t n = 0; n < N; ++n) store(out, out_f32, pairs[i] * N + n, tmp[i * N + n]);
                }
                cnt = 0;
            }
        }
    }
}

// A dense GEMV and an expert gather that do not depend on each other (the MoE layer's dense MLP and
// experts branches), in one parallel region where AMX applies to both: the dense part as
// gs_gemv_bf16(dw, dN, dK, dx, dM, dxs, dout, dout_f32), the experts as gs_gemv_bf16_experts(ew, E, eN,
// eK, ids, eM, topk, ex, exs, eout, eout_f32); the same results as the two calls.
void gs_gemv_bf16_dense_experts(const bf16_t* dw, int64_t dN, int64_t dK, const bf16_t* dx, int64_t dM, int64_t dxs,
                                void* dout, int dout_f32, const bf16_t* ew, int64_t E, int64_t eN, int64_t eK,
                                const int64_t* ids, int64_t eM, int64_t topk, const bf16_t* ex, int64_t exs, void* eout,
                                int eout_f32, int nthreads) {
#if defined(__AMX_BF16__)
    if (g_experts_merged && g_dense_merged && dM >= 1 && dM <= kAmxMaxRows && dN % 16 == 0 && dK % 32 == 0) {
        ExpertPlan plan;
        std::vector<AmxJob> jobs;
        if (plan_experts(ew, E, eN, eK, ids, eM, topk, ex, exs, plan, jobs)) {
            std::vector<bf16_t> dpack(dK * dM);
            amx_pack(dx, dxs, nullptr, (int)dM, dK, dpack.data());
            jobs.insert(jobs.begin(), AmxJob{dw, dN, dK, dpack.data(), (int)dM, dout, dN, dout_f32});
            run_amx_jobs(jobs, nthreads);
            scatter_experts(plan, eN, eout, eout_f32);
            return;
        }
    }
#endif
    gs_gemv_bf16(dw, dN, dK, dx, dM, dxs, dout, dout_f32, nthreads);
    gs_gemv_bf16_experts(ew, E, eN, eK, ids, eM, topk, ex, exs, eout, eout_f32, nthreads);
}

}  // extern "C"
