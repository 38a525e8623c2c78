// bf16 decode-step kernels beside the GEMV (same build, same C ABI through ctypes): RMSNorm rows and
// one-query-per-sequence attention read straight from the paged KV cache. Both replace a chain of
// ~10 small torch ops (casts, reductions, gathers) whose dispatch cost dominates at decode sizes.
// All arithmetic is fp32; every output is rounded to bf16 once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "amx.h"
#include "gs_kernels.h"

#if defined(__AVX512F__)
static inline __m512 load16(const bf16_t* p) {  // 16 bf16 -> 16 fp32 (exact)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
#elif defined(__AVX2__)
static inline __m256 load8(const bf16_t* p) {  // 8 bf16 -> 8 fp32 (exact): the AVX2 tier's attention
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
#endif

// sum_i a[i] * bf16(b[i]) with a fp32, b bf16.
static inline float dot_f32_bf16(const float* a, const bf16_t* b, int64_t n) {
    int64_t i = 0;
    float s = 0.f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16(b + i), acc);
    s = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    s = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
#endif
    for (; i < n; ++i) s += a[i] * bf16_to_f32(b[i]);
    return s;
}

// acc[i] += p * bf16(v[i]).
static inline void axpy_bf16(float* acc, float p, const bf16_t* v, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 pv = _mm512_set1_ps(p);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(pv, load16(v + i), _mm512_loadu_ps(acc + i)));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 pv = _mm256_set1_ps(p);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(pv, load8(v + i), _mm256_loadu_ps(acc + i)));
#endif
    for (; i < n; ++i) acc[i] += p * bf16_to_f32(v[i]);
}

#if defined(__AVX512F__)
// exp for x <= 0 (scores minus their max): Cephes expf's range reduction and polynomial, ~1 ulp.
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));  // below this exp is 0 in fp32 anyway
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

// sc[g*n + j] = qf[g] . k_j for G query rows (fp32, pre-scaled) against cache rows j in [j0, j1) of n;
// D % 16 == 0.
template <int G>
static void scores_v(const float* qf, const bf16_t* kc, int64_t hkv, int64_t h, int64_t d, const int64_t* sl,
                     int64_t n, float* sc, int64_t j0 = 0, int64_t j1 = -1) {
    if (j1 < 0) j1 = n;
    for (int64_t j = j0; j < j1; ++j) {
        const bf16_t* kr = kc + (sl[j] * hkv + h) * d;
        if (j + 1 < j1) _mm_prefetch((const char*)(kc + (sl[j + 1] * hkv + h) * d), _MM_HINT_T0);
        __m512 acc[G];
        for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
        for (int64_t c = 0; c < d; c += 16) {
            __m512 kv = load16(kr + c);
            for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(_mm512_loadu_ps(qf + g * d + c), kv, acc[g]);
        }
        for (int g = 0; g < G; ++g) sc[g * n + j] = _mm512_reduce_add_ps(acc[g]);
    }
}

// acc[g, c0:c0+16*NC] = sum_j p[g, j] v_j[c0:...] for G rows, then times inv[g], rounded into out.
template <int G, int NC>
static void pv_v(const float* p, const float* inv, const bf16_t* vc, int64_t hkv, int64_t h, int64_t d,
                 const int64_t* sl, int64_t n, int64_t c0, bf16_t* out) {
    __m512 acc[G][NC];
    for (int g = 0; g < G; ++g)
        for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        const bf16_t* vr = vc + (sl[j] * hkv + h) * d + c0;
        __m512 v[NC];
        for (int c = 0; c < NC; ++c) v[c] = load16(vr + 16 * c);
        for (int g = 0; g < G; ++g) {
            __m512 pj = _mm512_set1_ps(p[g * n + j]);
            for (int c = 0; c < NC; ++c) acc[g][c] = _mm512_fmadd_ps(pj, v[c], acc[g][c]);
        }
    }
    for (int g = 0; g < G; ++g)
        for (int c = 0; c < NC; ++c) {
            float tmp[16];
            _mm512_storeu_ps(tmp, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv[g])));
            for (int i = 0; i < 16; ++i) out[g * d + c0 + 16 * c + i] = f32_to_bf16(tmp[i]);
        }
}

#if defined(__AMX_BF16__)
// Scores through AMX for every run of 16 keys that sit in 16 consecutive cache slots (a whole paged
// block): C [16 keys x G] = K [16 keys x 32 d] . Q^T [32 d x G] per 32-wide slice of d, K read in
// place (row stride hkv * d); other keys go through scores_v. Scores are scale * (bf16 q . bf16 k)
// with fp32 accumulation (scores_v scales q first: the same for Gemma's scale of 1). D % 32 == 0.
template <int G>
static void scores_amx(const bf16_t* q, const float* qf, float scale, const bf16_t* kc, int64_t hkv, int64_t h,
                       int64_t d, const int64_t* sl, int64_t n, float* sc) {
    alignas(64) bf16_t qb[512 * G];  // Q^T as VNNI B tiles: slice c at c * 16 * G * 2, [16 k-pairs][G][2]
    for (int64_t kp = 0; kp < d / 2; ++kp)
        for (int g = 0; g < G; ++g) {
            qb[(kp * G + g) * 2] = q[g * d + 2 * kp];
            qb[(kp * G + g) * 2 + 1] = q[g * d + 2 * kp + 1];
        }
    TileCfg cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 16, cfg.colsb[0] = (uint16_t)(G * 4);  // tmm0: C
    cfg.rows[1] = 16, cfg.colsb[1] = 64;                 // tmm1: A, 16 keys x 32 bf16
    cfg.rows[2] = 16, cfg.colsb[2] = (uint16_t)(G * 4);  // tmm2: B, 16 k-pairs x G x 2 bf16
    _tile_loadconfig(&cfg);
    alignas(64) float cbuf[16 * G];
    const int64_t ks = hkv * d * 2;  // bytes between consecutive slots' rows of head h
    int64_t j = 0;
    while (j < n) {
        bool run = j + 16 <= n;
        for (int i = 1; run && i < 16; ++i) run = sl[j + i] == sl[j] + i;
        if (!run) {
            int64_t e = j + 1;  // up to the next run start (or the end): the vector path
            while (e < n && !(e + 16 <= n && sl[e + 15] == sl[e] + 15)) ++e;
            scores_v<G>(qf, kc, hkv, h, d, sl, n, sc, j, e);
            j = e;
            continue;
        }
        const bf16_t* k0 = kc + (sl[j] * hkv + h) * d;
        _tile_zero(0);
        for (int64_t c = 0; c < d; c += 32) {
            _tile_loadd(1, k0 + c, ks);
            _tile_loadd(2, qb + c * G, G * 4);
            _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, cbuf, G * 4);
        for (int i = 0; i < 16; ++i)
            for (int g = 0; g < G; ++g) sc[g * n + j + i] = scale * cbuf[i * G + g];
        j += 16;
    }
    _tile_release();
}
#endif

template <int G>
static void attend_v(const bf16_t* q, float scale, const float* qf, const bf16_t* kc, const bf16_t* vc, int64_t hkv,
                     int64_t h, int64_t d, const int64_t* sl, int64_t n, float* sc, float* inv, bf16_t* out) {
#if defined(__AMX_BF16__)
    if (d % 32 == 0 && d <= 512 && n >= 16 && amx_ok())
        scores_amx<G>(q, qf, scale, kc, hkv, h, d, sl, n, sc);
    else
        scores_v<G>(qf, kc, hkv, h, d, sl, n, sc);
#else
    (void)q;
    (void)scale;
    scores_v<G>(qf, kc, hkv, h, d, sl, n, sc);
#endif
    for (int g = 0; g < G; ++g) {
        float* row = sc + g * n;
        __m512 mv = _mm512_set1_ps(-INFINITY);
        int64_t j = 0;
        for (; j + 16 <= n; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(row + j));
        float mx = _mm512_reduce_max_ps(mv);
        for (; j < n; ++j) mx = std::max(mx, row[j]);
        __m512 mxv = _mm512_set1_ps(mx), sv = _mm512_setzero_ps();
        for (j = 0; j + 16 <= n; j += 16) {
            __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j), mxv));
            _mm512_storeu_ps(row + j, e);
            sv = _mm512_add_ps(sv, e);
        }
        if (j < n) {
            __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
            __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), mxv));
            _mm512_mask_storeu_ps(row + j, m, e);
            sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(m, e));
        }
        inv[g] = 1.f / _mm512_reduce_add_ps(sv);
    }
    // G * NC accumulators + NC value registers stay within the 32 zmm registers.
    constexpr int NC = G <= 4 ? 4 : 2;
    int64_t c0 = 0;
    for (; c0 + 16 * NC <= d; c0 += 16 * NC) pv_v<G, NC>(sc, inv, vc, hkv, h, d, sl, n, c0, out);
    for (; c0 < d; c0 += 16) pv_v<G, 1>(sc, inv, vc, hkv, h, d, sl, n, c0, out);
}
#endif

// Portable form of the same computation (any G and D).
static void attend_scalar(const float* qf, const bf16_t* kc, const bf16_t* vc, int64_t hkv, int64_t h, int64_t d,
                          const int64_t* sl, int64_t n, int64_t G, float* sc, bf16_t* out) {
    for (int64_t j = 0; j < n; ++j) {
        const bf16_t* kr = kc + (sl[j] * hkv + h) * d;
        for (int64_t g = 0; g < G; ++g) sc[g * n + j] = dot_f32_bf16(qf + g * d, kr, d);
    }
    std::vector<float> acc(G * d, 0.f), inv(G);
    for (int64_t g = 0; g < G; ++g) {
        float* row = sc + g * n;
        float mx = -INFINITY, sum = 0.f;
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
        for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - mx));
        inv[g] = 1.f / sum;
    }
    for (int64_t j = 0; j < n; ++j) {
        const bf16_t* vr = vc + (sl[j] * hkv + h) * d;
        for (int64_t g = 0; g < G; ++g) axpy_bf16(acc.data() + g * d, sc[g * n + j], vr, d);
    }
    for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < d; ++i) out[g * d + i] = f32_to_bf16(acc[g * d + i] * inv[g]);
}

// One (sequence, KV head): q [G, D] bf16 (rows contiguous), out [G, D].
static void attend_one(const bf16_t* q, const bf16_t* kc, const bf16_t* vc, int64_t hkv, int64_t h, int64_t d,
                       const int64_t* sl, int64_t n, int64_t G, float scale, bf16_t* out) {
    std::vector<float> qf(G * d), sc(G * n), inv(G);
    for (int64_t i = 0; i < G * d; ++i) qf[i] = scale * bf16_to_f32(q[i]);  // scale folded into q
#if defined(__AVX512F__)
    if (d % 16 == 0) {
        switch (G) {
            case 1: return attend_v<1>(q, scale, qf.data(), kc, vc, hkv, h, d, sl, n, sc.data(), inv.data(), out);
            case 2: return attend_v<2>(q, scale, qf.data(), kc, vc, hkv, h, d, sl, n, sc.data(), inv.data(), out);
            case 4: return attend_v<4>(q, scale, qf.data(), kc, vc, hkv, h, d, sl, n, sc.data(), inv.data(), out);
            case 8: return attend_v<8>(q, scale, qf.data(), kc, vc, hkv, h, d, sl, n, sc.data(), inv.data(), out);
            default: break;
        }
    }
#endif
    attend_scalar(qf.data(), kc, vc, hkv, h, d, sl, n, G, sc.data(), out);
}

extern "C" {

// out[r] = x[r] * (mean(x[r]^2) + eps)^-1/2 * w, rows of d elements (x row stride xs, out contiguous);
// w may be null (weightless norm). One rounding, as torch's F.rms_norm on bf16 does.
void gs_rms_norm_bf16(const bf16_t* x, int64_t rows, int64_t xs, int64_t d, const bf16_t* w, float eps, bf16_t* out) {
    std::vector<float> wf(d, 1.f);
    if (w)
        for (int64_t i = 0; i < d; ++i) wf[i] = bf16_to_f32(w[i]);
    // Rows are independent, so prefill-sized inputs split them over torch's OpenMP threads; each row's
    // arithmetic (and so its result) is the same whatever the thread count. Decode rows stay on one
    // thread: a parallel region costs more than a few rows of work.
    const int nt = rows * d >= (1 << 16) ? omp_get_max_threads() : 1;
#pragma omp parallel num_threads(nt)
    {
        std::vector<float> xf(d);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const bf16_t* xr = x + r * xs;
            bf16_t* o = out + r * d;
            float ss = 0.f;
            int64_t i = 0;
#if defined(__AVX512F__)
            // 16 lanes of partial sums of squares (a different fp32 summation order from the scalar
            // loop's: the result may differ from it, and from F.rms_norm, by one bf16 ulp).
            __m512 acc = _mm512_setzero_ps();
            for (; i + 16 <= d; i += 16) {
                const __m512 v = bf16x16_to_f32(_mm256_loadu_si256((const __m256i*)(xr + i)));
                acc = _mm512_fmadd_ps(v, v, acc);
            }
            ss = _mm512_reduce_add_ps(acc);
#endif
            for (; i < d; ++i) {
                xf[i] = bf16_to_f32(xr[i]);
                ss += xf[i] * xf[i];
            }
            const float inv = 1.f / std::sqrt(ss / (float)d + eps);
            i = 0;
#if defined(__AVX512F__)
            const __m512 iv = _mm512_set1_ps(inv);
            for (; i + 16 <= d; i += 16) {
                const __m512 v = bf16x16_to_f32(_mm256_loadu_si256((const __m256i*)(xr + i)));
                const __m512 y = _mm512_mul_ps(_mm512_mul_ps(v, iv), _mm512_loadu_ps(wf.data() + i));
                _mm256_storeu_si256((__m256i*)(o + i), f32x16_to_bf16(y));
            }
#endif
            for (; i < d; ++i) o[i] = f32_to_bf16(bf16_to_f32(xr[i]) * inv * wf[i]);
        }
    }
}

// One query row per sequence s over its first nkeys[s] keys, read from the cache at slots[s, :]:
// q [S, Hq, D] (sequence stride qs elements), caches [num_slots, Hkv, D], out [S, Hq, D]; query head
// h*G+g reads KV head h (G = Hq/Hkv). Each (sequence, KV head) task reads its keys once for its G
// query heads; softmax in fp32 with the max subtracted, like SDPA.
void gs_decode_attn_bf16(const bf16_t* q, int64_t qs, const bf16_t* kc, const bf16_t* vc, int64_t hkv, int64_t d,
                         const int64_t* slots, int64_t ls, const int64_t* nkeys, int64_t S, int64_t hq, float scale,
                         bf16_t* out, int nthreads) {
    const int64_t G = hq / hkv, tasks = S * hkv;
    int nt = (int)std::max<int64_t>(1, std::min<int64_t>(nthreads, tasks));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
        const int64_t s = t / hkv, h = t % hkv;
        attend_one(q + s * qs + h * G * d, kc, vc, hkv, h, d, slots + s * ls, nkeys[s], G, scale,
                   out + (s * hq + h * G) * d);
    }
}


static inline float rnd(float f) { return bf16_to_f32(f32_to_bf16(f)); }  // one bf16 rounding

// x [d] fp32 (already rounded as its producer would) -> rope'd bf16, rounding like torch's bf16 ops:
// out = bf16(bf16(x * cos) + bf16(roll(x, d/2) * sin)), sin with rotate-half's sign folded in.
static inline void rope_round(const float* x, const bf16_t* cos, const bf16_t* sin, int64_t d, bf16_t* out) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < d; ++i) {
        const float rolled = x[i < half ? i + half : i - half];
        out[i] = f32_to_bf16(rnd(x[i] * bf16_to_f32(cos[i])) + rnd(rolled * bf16_to_f32(sin[i])));
    }
}

// After the fused q/k/v projection of T rows (row stride ld): q and k RMSNorm with weights, v RMSNorm
// without, RoPE on q and k; q goes to q_out [T, Hq, D], k and v into the caches [num_slots, Hkv, D]
// at slots[t]. has_v == 0 is the K=V layout: v is the weightless norm of the k projection and k that
// same fp32 norm times k's weight. Rounds exactly where the torch ops (ops.norm, ops.rope) do.
void gs_qkv_post_bf16(const bf16_t* qkv, int64_t T, int64_t ld, int64_t hq, int64_t hkv, int64_t d, int has_v,
                      const bf16_t* qw, const bf16_t* kw, float eps, const bf16_t* cos, const bf16_t* sin,
                      const int64_t* slots, bf16_t* kc, bf16_t* vc, bf16_t* q_out) {
    std::vector<float> x(d), nrm(d), qwf(d), kwf(d);
    for (int64_t i = 0; i < d; ++i) {
        qwf[i] = bf16_to_f32(qw[i]);
        kwf[i] = bf16_to_f32(kw[i]);
    }
    auto inv_rms = [&](const bf16_t* src) {
        float ss = 0.f;
        for (int64_t i = 0; i < d; ++i) {
            x[i] = bf16_to_f32(src[i]);
            ss += x[i] * x[i];
        }
        return 1.f / std::sqrt(ss / (float)d + eps);
    };
    for (int64_t t = 0; t < T; ++t) {
        const bf16_t* row = qkv + t * ld;
        const bf16_t* ct = cos + t * d;
        const bf16_t* st = sin + t * d;
        for (int64_t h = 0; h < hq; ++h) {
            const float inv = inv_rms(row + h * d);
            for (int64_t i = 0; i < d; ++i) nrm[i] = rnd(x[i] * inv * qwf[i]);
            rope_round(nrm.data(), ct, st, d, q_out + (t * hq + h) * d);
        }
        for (int64_t h = 0; h < hkv; ++h) {
            bf16_t* kdst = kc + (slots[t] * hkv + h) * d;
            bf16_t* vdst = vc + (slots[t] * hkv + h) * d;
            const float inv = inv_rms(row + (hq + h) * d);
            if (has_v) {
                for (int64_t i = 0; i < d; ++i) nrm[i] = rnd(x[i] * inv * kwf[i]);
                rope_round(nrm.data(), ct, st, d, kdst);
                const float vinv = inv_rms(row + (hq + hkv + h) * d);
                for (int64_t i = 0; i < d; ++i) vdst[i] = f32_to_bf16(x[i] * vinv);
            } else {
                for (int64_t i = 0; i < d; ++i) {
                    const float n = x[i] * inv;  // the shared fp32 norm
                    vdst[i] = f32_to_bf16(n);
                    nrm[i] = rnd(n * kwf[i]);
                }
                rope_round(nrm.data(), ct, st, d, kdst);
            }
        }
    }
}

static constexpr float kGeluB = 0.7978845608028654f, kGeluK = 0.044715f;

// bf16(bf16(gelu_tanh(g)) * u), one element.
static inline bf16_t geglu1(bf16_t gb, bf16_t ub) {
    const float x = bf16_to_f32(gb);
    const float gl = x / (1.f + std::exp(-2.f * kGeluB * (x + kGeluK * x * x * x)));
    return f32_to_bf16(bf16_to_f32(f32_to_bf16(gl)) * bf16_to_f32(ub));
}

#if defined(__AVX512F__)
// 16 lanes of bf16(gelu_tanh(g)) as fp32: 0.5 * x * (1 + tanh(y)) == x / (1 + exp(-2y)), with no
// cancellation in the negative tail (where 1 + tanh(y) is tiny) and exact at both saturations (exp
// overflows to inf -> -0, or -> 0 -> x).
static inline __m512 gelu16_rounded(const bf16_t* g) {
    const __m512 x = load16(g);
    const __m512 y = _mm512_mul_ps(_mm512_set1_ps(kGeluB), _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(kGeluK), x),
                                                                      _mm512_mul_ps(x, x), x));
    const __m512 den = _mm512_add_ps(_mm512_set1_ps(1.f), exp512(_mm512_mul_ps(_mm512_set1_ps(-2.f), y)));
    return bf16x16_to_f32(f32x16_to_bf16(_mm512_div_ps(x, den)));
}

// 16 lanes of bf16(bf16(gelu_tanh(g)) * u).
static inline __m256i geglu16(const bf16_t* g, const bf16_t* u) {
    return f32x16_to_bf16(_mm512_mul_ps(gelu16_rounded(g), load16(u)));
}
#endif

// out[r, i] = bf16(bf16(gelu_tanh(gate)) * up) for rows gu[r] = [gate (w) | up (w)] of stride ld: the
// dense MLP's and the experts' activation, rounded where torch's bf16 gelu and mul round.
void gs_geglu_bf16(const bf16_t* gu, int64_t rows, int64_t ld, int64_t w, bf16_t* out) {
    // Prefill-sized inputs split rows over torch's OpenMP threads (each element's result does not
    // depend on the split); decode rows stay on the calling thread.
    const int nt = rows * w >= (1 << 16) ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const bf16_t* g = gu + r * ld;
        const bf16_t* u = g + w;
        bf16_t* o = out + r * w;
        int64_t i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= w; i += 16) _mm256_storeu_si256((__m256i*)(o + i), geglu16(g + i, u + i));
#endif
        for (; i < w; ++i) o[i] = geglu1(g[i], u[i]);
    }
}

// The padded MoE path's activation (ops/moe.py moe_padded), weighted: gu [E, 2I, n] holds each expert's
// gate rows then up rows with its n token columns, w [E, n] the routing weights (bf16);
// out[e, i, t] = bf16(bf16(bf16(gelu_tanh(gu[e, i, t])) * gu[e, I + i, t]) * w[e, t]), the rounding of
// torch's bf16 gelu, mul and mul. Rows are split over torch's OpenMP threads for prefill sizes.
void gs_geglu_cols_bf16(const bf16_t* gu, int64_t E, int64_t I, int64_t n, const bf16_t* w, bf16_t* out) {
    const int nt = E * I * n >= (1 << 16) ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < E * I; ++r) {
        const int64_t e = r / I, i = r % I;
        const bf16_t* g = gu + (e * 2 * I + i) * n;
        const bf16_t* u = g + I * n;
        const bf16_t* we = w + e * n;
        bf16_t* o = out + r * n;
        int64_t t = 0;
#if defined(__AVX512F__)
        for (; t + 16 <= n; t += 16) {
            const __m512 a = bf16x16_to_f32(geglu16(g + t, u + t));
            _mm256_storeu_si256((__m256i*)(o + t), f32x16_to_bf16(_mm512_mul_ps(a, load16(we + t))));
        }
#endif
        for (; t < n; ++t) o[t] = f32_to_bf16(bf16_to_f32(geglu1(g[t], u[t])) * bf16_to_f32(we[t]));
    }
}

}  // extern "C"
