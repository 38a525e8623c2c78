// Few-row GEMV over per-output-channel int8 weights: out[m, n] = scale[n] * sum_k x[m, k] * q[n, k] with x
// bf16, fp32 accumulation, each weight row read once for up to 8 rows of x and widened to fp32 in registers
// (never a dequantised copy: the point of int8 is reading half the bytes of bf16). Same build and C ABI as
// gemv_bf16.cpp. Paths: AVX512 (F + BW + VL), portable scalar.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "bf16.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GS_I8_VEC 1
#else
#define GS_I8_VEC 0
#endif
#ifndef GS_I8_PF
#define GS_I8_PF 512  // prefetch distance in bytes along each weight row (0 = none)
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
            if (GS_I8_PF > 0 && (k & 63) == 0) _mm_prefetch((const char*)row + GS_I8_PF, _MM_HINT_T0);
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

// All N rows of one job: chunks of rows handed out to threads as they ask (a preempted thread holds the
// join up by one chunk); small problems stay on the calling thread (a fork/join costs more).
void run(const Job& j, int M, int64_t N, int nthreads) {
    int nt = nthreads < 1 ? 1 : nthreads;
    if (N * j.K < 65536 || N < 16) nt = 1;
    if (nt == 1) {
        kRows[M](j, 0, N);
        return;
    }
    const int64_t chunk = std::max<int64_t>(32, (N / (nt * kChunksPerThread) + 7) / 8 * 8);
    const int64_t nch = (N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t c = 0; c < nch; ++c) kRows[M](j, c * chunk, std::min(N, (c + 1) * chunk));
}

}  // namespace

extern "C" {

// 1 when this build widens int8 with AVX512, 0 for the portable loop.
int gs_gemv_int8_isa() { return GS_I8_VEC; }

// q [N, K] int8 contiguous, scale [N] (bf16, or fp32 when scale_f32), x [M, K] bf16 with row stride xs,
// out [M, N] contiguous (bf16 or fp32). Rows beyond 8 go in groups of 8 (each group re-reads q).
void gs_gemv_int8(const int8_t* q, const void* scale, int scale_f32, int64_t N, int64_t K, const bf16_t* x,
                  int64_t M, int64_t xs, void* out, int out_f32, int nthreads) {
    const int64_t Kp = padded(K);
    std::vector<float> xp(kMaxRows * Kp);
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int mm = (int)std::min<int64_t>(kMaxRows, M - m0);
        const bf16_t* rows[kMaxRows];
        Job j{q, scale, scale_f32, K, xp.data(), out, out_f32, {}};
        for (int m = 0; m < mm; ++m) {
            rows[m] = x + (m0 + m) * xs;
            j.off[m] = (m0 + m) * N;
        }
        prep_x(rows, mm, K, xp.data());
        run(j, mm, N, nthreads);
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
    std::vector<Job> jobs(G);
    for (int64_t g = 0; g < G; ++g) {
        const Group& gr = groups[g];
        const bf16_t* rows[kMaxRows];
        const int64_t so = gr.e * N;  // this expert's scales
        Job& j = jobs[g];
        j = Job{q + gr.e * N * K, scale_f32 ? (const void*)((const float*)scale + so) : (const void*)((const bf16_t*)scale + so),
                scale_f32, K, xp.data() + g * kMaxRows * Kp, out, out_f32, {}};
        for (int m = 0; m < gr.cnt; ++m) {
            rows[m] = x + (gr.pairs[m] / topk) * xs;
            j.off[m] = gr.pairs[m] * N;
        }
        prep_x(rows, gr.cnt, K, xp.data() + g * kMaxRows * Kp);
    }
    const int64_t chunk = 256, nch = (N + chunk - 1) / chunk, items = G * nch;
    int nt = nthreads < 1 ? 1 : nthreads;
    if (items < 2 || N * K < 65536) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t g = it / nch, n0 = (it % nch) * chunk;
        kRows[groups[g].cnt](jobs[g], n0, std::min(N, n0 + chunk));
    }
}

}  // extern "C"
