// The C ABI of the CPU kernel library (one .so built from every .cpp here): each exported function's
// prototype, once. ops/kernel_lib.py holds the same table for ctypes (ABI); at load it compares what
// gs_abi_info reports (ABI version, compiled ISA, decode-layer slot counts) with what Python expects.
#pragma once

#include <cstdint>

#include "bf16.h"

// Bump with any change of an exported signature or of the decode-layer slot layout below.
#define GS_ABI_VERSION 2

// gs_features() bits: the ISA extensions this build was compiled for (-march=native minus the tier cap).
enum { GS_F_AVX2 = 1, GS_F_AVX512 = 2, GS_F_AVX512VNNI = 4, GS_F_AVX512BF16 = 8, GS_F_AMX = 16 };

// gs_abi_info(out, n) fills out[0..n) with these, in this order.
enum { GS_INFO_ABI, GS_INFO_FEATURES, GS_INFO_W_COUNT, GS_INFO_D_COUNT, GS_INFO_COUNT };

// The one-call decode layer's weight pointer slots (model/fast_decode.py builds the array in this order).
enum {
    W_IN_LN, W_QKV, W_Q_NORM, W_K_NORM, W_O, W_POST_ATTN, W_PRE_FF, W_GATE_UP, W_DOWN, W_POST_FF1, W_R_SCALE,
    W_R_PROJ, W_PES, W_PRE_FF2, W_E_GATE_UP, W_E_DOWN, W_POST_FF2, W_POST_FF, W_LAYER_SCALAR,
    // int8 layers only (null otherwise): the per-output-row scales of the six int8 projections.
    W_QKV_S, W_O_S, W_GATE_UP_S, W_DOWN_S, W_E_GATE_UP_S, W_E_DOWN_S, W_COUNT
};
// ... and its dims array.
enum { D_H, D_HQ, D_HKV, D_HEAD, D_HAS_V, D_WIDTH, D_E, D_I, D_K, D_INT8, D_SCALE_F32, D_COUNT };

extern "C" {
// library facts (decode_layer.cpp)
void gs_abi_info(int64_t* out, int n);
int gs_features(void);
int gs_decode_layer_counts(void);
// bf16 GEMV (gemv_bf16.cpp)
int gs_gemv_isa(void);
int gs_gemv_rows_per_pass(int64_t N, int64_t K);
void gs_gemv_set_chunks(int chunks_per_thread);
void gs_gemv_set_experts_merged(int on);
void gs_gemv_set_dense_merged(int on);
void gs_gemv_bf16(const bf16_t* w, int64_t N, int64_t K, const bf16_t* x, int64_t M, int64_t xs, void* out, int out_f32,
                  int nthreads);
void gs_gemv_bf16_experts(const bf16_t* w, int64_t E, int64_t N, int64_t K, const int64_t* ids, int64_t M, int64_t topk,
                          const bf16_t* x, int64_t xs, void* out, int out_f32, int nthreads);
void gs_gemv_bf16_dense_experts(const bf16_t* dw, int64_t dN, int64_t dK, const bf16_t* dx, int64_t dM, int64_t dxs,
                                void* dout, int dout_f32, const bf16_t* ew, int64_t E, int64_t eN, int64_t eK,
                                const int64_t* ids, int64_t eM, int64_t topk, const bf16_t* ex, int64_t exs, void* eout,
                                int eout_f32, int nthreads);
// int8-weight GEMV (gemv_int8.cpp)
int gs_gemv_int8_isa(void);
void gs_gemv_int8(const int8_t* q, const void* scale, int scale_f32, int64_t N, int64_t K, const bf16_t* x, int64_t M,
                  int64_t xs, void* out, int out_f32, int nthreads);
void gs_gemv_int8_experts(const int8_t* q, const void* scale, int scale_f32, int64_t E, int64_t N, int64_t K,
                          const int64_t* ids, int64_t M, int64_t topk, const bf16_t* x, int64_t xs, void* out,
                          int out_f32, int nthreads);
void gs_int8_to_bf16(const int8_t* q, int64_t n, bf16_t* out, int nthreads);
// decode-step ops (decode_bf16.cpp)
void gs_rms_norm_bf16(const bf16_t* x, int64_t rows, int64_t xs, int64_t d, const bf16_t* w, float eps, bf16_t* out);
void gs_decode_attn_bf16(const bf16_t* q, int64_t qs, const bf16_t* kc, const bf16_t* vc, int64_t hkv, int64_t d,
                         const int64_t* slots, int64_t ls, const int64_t* nkeys, int64_t S, int64_t hq, float scale,
                         bf16_t* out, int nthreads);
void gs_qkv_post_bf16(const bf16_t* qkv, int64_t T, int64_t ld, int64_t hq, int64_t hkv, int64_t d, int has_v,
                      const bf16_t* qw, const bf16_t* kw, float eps, const bf16_t* cos, const bf16_t* sin,
                      const int64_t* slots, bf16_t* kc, bf16_t* vc, bf16_t* q_out);
void gs_geglu_bf16(const bf16_t* gu, int64_t rows, int64_t ld, int64_t w, bf16_t* out);
void gs_geglu_cols_bf16(const bf16_t* gu, int64_t E, int64_t I, int64_t n, const bf16_t* w, bf16_t* out);
// the one-call decoder layer (decode_layer.cpp)
void gs_decode_layer_bf16(const bf16_t* h, bf16_t* out, int64_t T, const void* const* wp, const int64_t* dims, float eps,
                          float root, const bf16_t* cos, const bf16_t* sin, const int64_t* slot_mapping, bf16_t* kc,
                          bf16_t* vc, const int64_t* att_slots, int64_t att_ls, const int64_t* nkeys, int nthreads);
}
