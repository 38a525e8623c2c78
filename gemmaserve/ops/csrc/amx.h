// AMX plumbing shared by the kernels that use tiles (gemv_bf16.cpp, gemv_int8.cpp, decode_bf16.cpp).
#pragma once

#if defined(__AMX_BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

// Linux hands out AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM), process-wide; the
// answer is asked once per translation unit and kept.
static inline bool amx_ok() {
    static const bool ok = syscall(SYS_arch_prctl, 0x1023 /*ARCH_REQ_XCOMP_PERM*/, 18 /*XTILEDATA*/) == 0;
    return ok;
}

// The 64-byte tile configuration that _tile_loadconfig reads (palette 1: 8 tiles of up to 16 rows x
// 64 bytes).
struct alignas(64) TileCfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
#endif
