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

#include "gs_kernels.h"

static inline float lf(bf16_t v) { return bf16_to_f32(v); }
static inline bf16_t rb(float f) { return f32_to_bf16(f); }  // round to nearest even, NaN stays NaN
static inline float r16(float f) { return lf(rb(f)); }


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

int gs_features(void) {
    int f = 0;
#if defined(__AVX2__) && defined(__FMA__)
    f |= GS_F_AVX2;
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    f |= GS_F_AVX512;
#endif
#if defined(__AVX512VNNI__)
    f |= GS_F_AVX512VNNI;
#endif
#if defined(__AVX512BF16__)
    f |= GS_F_AVX512BF16;
#endif
#if defined(__AMX_BF16__) && defined(__AMX_TILE__)
    f |= GS_F_AMX;
#endif
    return f;
}

void gs_abi_info(int64_t* out, int n) {
    const int64_t info[GS_INFO_COUNT] = {GS_ABI_VERSION, gs_features(), W_COUNT, D_COUNT};
    for (int i = 0; i < n && i < GS_INFO_COUNT; ++i) out[i] = info[i];
}

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
