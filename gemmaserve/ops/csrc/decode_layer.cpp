// One whole Gemma 4 MoE decoder layer for a few bf16 decode rows in a single call: the composition of
// the GEMV, RMSNorm, q/k/v post-processing and paged decode attention kernels (same .so), with every
// elementwise step rounded to bf16 where the torch layer (model/decoder.py) rounds. The Python layer
// issues ~55 small ops per decode step whose dispatch cost (~0.5 ms per layer) rivals the weight reads.
// A weight-only int8 layer (model/quantize.py) runs the same composition with the int8 GEMV kernels for
// its six projections (dims[D_INT8], per-row scales in the W_*_S slots); the router stays bf16.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

typedef uint16_t bf16_t;

extern "C" {
void gs_gemv_bf16(const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t M, int64_t xs, void* out, int out_f32,
                  int nthreads);
void gs_gemv_bf16_experts(const bf16_t* w, int64_t E, int64_t N, int64_t K, const int64_t* ids, int64_t M, int64_t topk,
                          const bf16_t* x, int64_t xs, void* out, int out_f32, int nthreads);
void gs_rms_norm_bf16(const bf16_t* x, int64_t rows, int64_t xs, int64_t d, const bf16_t* w, float eps, bf16_t* out);
void gs_decode_attn_bf16(const bf16_t* q, int64_t qs, const bf16_t* kc, const bf16_t* vc, int64_t hkv, int64_t d,
                         const int64_t* slots, int64_t ls, const int64_t* nkeys, int64_t S, int64_t hq, float scale,
                         bf16_t* out, int nthreads);
void gs_qkv_post_bf16(const bf16_t* qkv, int64_t T, int64_t ld, int64_t hq, int64_t hkv, int64_t d, int has_v,
                      const bf16_t* qw, const bf16_t* kw, float eps, const bf16_t* cos, const bf16_t* sin,
                      const int64_t* slots, bf16_t* kc, bf16_t* vc, bf16_t* q_out);
void gs_geglu_bf16(const bf16_t* gu, int64_t rows, int64_t ld, int64_t w, bf16_t* out);
void gs_gemv_bf16_dense_experts(const bf16_t* dw, int64_t dN, int64_t dK, const bf16_t* dx, int64_t dM, int64_t dxs,
                                void* dout, int dout_f32, const bf16_t* ew, int64_t E, int64_t eN, int64_t eK,
                                const int64_t* ids, int64_t eM, int64_t topk, const bf16_t* ex, int64_t exs, void* eout,
                                int eout_f32, int nthreads);
void gs_gemv_int8(const int8_t* q, const void* scale, int scale_f32, int64_t N, int64_t K, const bf16_t* x, int64_t M,
                  int64_t xs, void* out, int out_f32, int nthreads);
void gs_gemv_int8_experts(const int8_t* q, const void* scale, int scale_f32, int64_t E, int64_t N, int64_t K,
                          const int64_t* ids, int64_t M, int64_t topk, const bf16_t* x, int64_t xs, void* out,
                          int out_f32, int nthreads);
}

static inline float lf(bf16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

static inline bf16_t rb(float f) {  // round to nearest even, NaN stays NaN
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

static inline float r16(float f) { return lf(rb(f)); }

// Weight pointers, in this order (model/fast_decode.py builds the array).
enum {
    W_IN_LN, W_QKV, W_Q_NORM, W_K_NORM, W_O, W_POST_ATTN, W_PRE_FF, W_GATE_UP, W_DOWN, W_POST_FF1, W_R_SCALE,
    W_R_PROJ, W_PES, W_PRE_FF2, W_E_GATE_UP, W_E_DOWN, W_POST_FF2, W_POST_FF, W_LAYER_SCALAR,
    // int8 layers only (null otherwise): the per-output-row scales of the six int8 projections.
    W_QKV_S, W_O_S, W_GATE_UP_S, W_DOWN_S, W_E_GATE_UP_S, W_E_DOWN_S, W_COUNT
};
// Dimensions, in this order. D_INT8: the six projections are int8 with scales (fp32 if D_SCALE_F32, else bf16).
enum { D_H, D_HQ, D_HKV, D_HEAD, D_HAS_V, D_WIDTH, D_E, D_I, D_K, D_INT8, D_SCALE_F32, D_COUNT };

namespace {

// The projections of one layer: bf16 weights, or int8 weights with their scales.
struct Proj {
    const void* const* w;
    int int8, sf32, nthreads;

    // out [T, N] = x [T, K] (row stride xs) @ W[wi]^T.
    void dense(int wi, int si, int64_t N, int64_t K, const bf16_t* x, int64_t T, int64_t xs, void* out) const {
        if (int8) gs_gemv_int8((const int8_t*)w[wi], w[si], sf32, N, K, x, T, xs, out, 0, nthreads);
        else gs_gemv_bf16((const bf16_t*)w[wi], N, K, x, T, xs, out, 0, nthreads);
    }

    // out [M, topk, N] = per (row, slot) expert W[wi][ids] @ x[row].
    void experts(int wi, int si, int64_t E, int64_t N, int64_t K, const int64_t* ids, int64_t M, int64_t topk,
                 const bf16_t* x, int64_t xs, void* out, int out_f32) const {
        if (int8) gs_gemv_int8_experts((const int8_t*)w[wi], w[si], sf32, E, N, K, ids, M, topk, x, xs, out, out_f32, nthreads);
        else gs_gemv_bf16_experts((const bf16_t*)w[wi], E, N, K, ids, M, topk, x, xs, out, out_f32, nthreads);
    }

    // dense(dwi) and experts(ewi) together: independent branches, one parallel region for bf16 weights.
    void dense_experts(int dwi, int dsi, int64_t dN, int64_t dK, const bf16_t* dx, int64_t T, void* dout, int ewi,
                       int esi, int64_t E, int64_t eN, int64_t eK, const int64_t* ids, int64_t M, int64_t topk,
                       const bf16_t* ex, void* eout, int eout_f32) const {
        if (int8) {
            dense(dwi, dsi, dN, dK, dx, T, dK, dout);
            experts(ewi, esi, E, eN, eK, ids, M, topk, ex, eK, eout, eout_f32);
            return;
        }
        gs_gemv_bf16_dense_experts((const bf16_t*)w[dwi], dN, dK, dx, T, dK, dout, 0, (const bf16_t*)w[ewi], E, eN, eK,
                                   ids, M, topk, ex, eK, eout, eout_f32, nthreads);
    }
};

}  // namespace

extern "C" {

int gs_decode_layer_counts(void) { return W_COUNT * 100 + D_COUNT; }

// h [T, H] bf16 -> out [T, H] (may alias h). Attention: row t reads its first nkeys[t] keys at att_slots[t, :]
// (one decode group in row order); K/V of the new rows are written at slot_mapping first.
void gs_decode_layer_bf16(const bf16_t* h, bf16_t* out, int64_t T, const void* const* wp, const int64_t* dims, float eps, float root,
                          const bf16_t* cos, const bf16_t* sin, const int64_t* slot_mapping, bf16_t* kc, bf16_t* vc,
                          const int64_t* att_slots, int64_t att_ls, const int64_t* nkeys, int nthreads) {
    const bf16_t* const* w = (const bf16_t* const*)wp;
    const int64_t H = dims[D_H], hq = dims[D_HQ], hkv = dims[D_HKV], d = dims[D_HEAD], W = dims[D_WIDTH];
    const int64_t E = dims[D_E], I = dims[D_I], K = dims[D_K];
    const int has_v = (int)dims[D_HAS_V];
    const Proj proj{wp, (int)dims[D_INT8], (int)dims[D_SCALE_F32], nthreads};
    const int64_t qkv_n = (hq + hkv * (has_v ? 2 : 1)) * d;
    const int64_t wide = std::max<int64_t>({qkv_n, 2 * W, hq * d, H});
    std::vector<bf16_t> xn(T * H), buf(T * wide), q(T * hq * d), o(T * hq * d), a(T * H), r(T * H), dd(T * H);
    std::vector<bf16_t> act(T * W), tmp(T * H);

    // Attention block: r = h + norm(o_proj(attn(norm(h))))
    gs_rms_norm_bf16(h, T, H, H, w[W_IN_LN], eps, xn.data());
    proj.dense(W_QKV, W_QKV_S, qkv_n, H, xn.data(), T, H, buf.data());
    gs_qkv_post_bf16(buf.data(), T, qkv_n, hq, hkv, d, has_v, w[W_Q_NORM], w[W_K_NORM], eps, cos, sin, slot_mapping,
                     kc, vc, q.data());
    gs_decode_attn_bf16(q.data(), hq * d, kc, vc, hkv, d, att_slots, att_ls, nkeys, T, hq, 1.0f, o.data(), nthreads);
    proj.dense(W_O, W_O_S, H, hq * d, o.data(), T, hq * d, a.data());
    gs_rms_norm_bf16(a.data(), T, H, H, w[W_POST_ATTN], eps, tmp.data());
    for (int64_t i = 0; i < T * H; ++i) r[i] = rb(lf(h[i]) + lf(tmp[i]));

    // Router on r: bf16(bf16(norm(r)) * scale) * root -> logits -> fp32 softmax -> top-k -> renormalise
    // -> per-expert scale. Ties pick the lower expert id (torch.topk's order on exact ties is unspecified).
    gs_rms_norm_bf16(r.data(), T, H, H, nullptr, eps, xn.data());
    const bf16_t* rs = w[W_R_SCALE];
    for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < H; ++i) xn[t * H + i] = rb(r16(lf(xn[t * H + i]) * lf(rs[i])) * root);
    std::vector<bf16_t> logits(T * E);
    gs_gemv_bf16(w[W_R_PROJ], E, H, xn.data(), T, H, logits.data(), 0, nthreads);
    std::vector<int64_t> ids(T * K);
    std::vector<float> wts(T * K), probs(E);
    for (int64_t t = 0; t < T; ++t) {
        float mx = -INFINITY, sum = 0.f;
        for (int64_t e = 0; e < E; ++e) mx = std::max(mx, lf(logits[t * E + e]));
        for (int64_t e = 0; e < E; ++e) sum += (probs[e] = std::exp(lf(logits[t * E + e]) - mx));
        for (int64_t e = 0; e < E; ++e) probs[e] /= sum;
        float wsum = 0.f;
        for (int64_t j = 0; j < K; ++j) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; ++e) {
                bool taken = false;
                for (int64_t jj = 0; jj < j; ++jj) taken |= ids[t * K + jj] == e;
                if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
            }
            ids[t * K + j] = best;
            wsum += (wts[t * K + j] = probs[best]);
        }
        for (int64_t j = 0; j < K; ++j) wts[t * K + j] = wts[t * K + j] / wsum * lf(w[W_PES][ids[t * K + j]]);
    }

    // The dense GeGLU MLP, dd = norm(down(geglu(gate_up(norm(r))))), beside the experts on another norm
    // of r, m = bf16(sum_j w_j * down_e(geglu(gate_up_e(x)))) with fp32 down outputs: the two branches
    // are independent, so each projection stage of both runs as one parallel region.
    std::vector<bf16_t> xe(T * H), bufe(T * K * 2 * I), acte(T * K * I);
    gs_rms_norm_bf16(r.data(), T, H, H, w[W_PRE_FF], eps, xn.data());
    gs_rms_norm_bf16(r.data(), T, H, H, w[W_PRE_FF2], eps, xe.data());
    proj.dense_experts(W_GATE_UP, W_GATE_UP_S, 2 * W, H, xn.data(), T, buf.data(), W_E_GATE_UP, W_E_GATE_UP_S, E,
                       2 * I, H, ids.data(), T, K, xe.data(), bufe.data(), 0);
    gs_geglu_bf16(buf.data(), T, 2 * W, W, act.data());
    gs_geglu_bf16(bufe.data(), T * K, 2 * I, I, acte.data());
    std::vector<float> y(T * K * H);
    proj.dense_experts(W_DOWN, W_DOWN_S, H, W, act.data(), T, tmp.data(), W_E_DOWN, W_E_DOWN_S, E, H, I, ids.data(),
                       T * K, 1, acte.data(), y.data(), 1);
    gs_rms_norm_bf16(tmp.data(), T, H, H, w[W_POST_FF1], eps, dd.data());
    for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < H; ++i) {
            float s = 0.f;
            for (int64_t j = 0; j < K; ++j) s += wts[t * K + j] * y[(t * K + j) * H + i];
            a[t * H + i] = rb(s);
        }
    gs_rms_norm_bf16(a.data(), T, H, H, w[W_POST_FF2], eps, tmp.data());
    for (int64_t i = 0; i < T * H; ++i) dd[i] = rb(lf(dd[i]) + lf(tmp[i]));

    // h = bf16(bf16(r + norm(dd)) * layer_scalar)
    gs_rms_norm_bf16(dd.data(), T, H, H, w[W_POST_FF], eps, tmp.data());
    const float ls = lf(w[W_LAYER_SCALAR][0]);
    for (int64_t i = 0; i < T * H; ++i) out[i] = rb(r16(lf(r[i]) + lf(tmp[i])) * ls);
}

}  // extern "C"
