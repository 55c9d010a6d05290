// Lets the kernels' .cu sources compile as plain C++, so tests can run their arithmetic, indexing and
// launch ABI on a CPU (tests/test_kernels_host.py). Sound only for kernels whose threads never talk to
// each other (no shared memory, barriers, warp intrinsics or atomics; ours have none): then running the
// threads one after another computes what the GPU computes, up to the libm behind sincosf.
#pragma once
#include <cmath>
#include <cstring>

#include <cuda_bf16.h>  // host-side conversions of __half / __nv_bfloat16 (round-to-nearest-even)
#include <cuda_fp16.h>

#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif

struct HostDim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local HostDim3 threadIdx, blockIdx, blockDim, gridDim;

// Built with -ffp-contract=off, so a product is rounded on its own, as __fmul_rn guarantees on the GPU.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __int_as_float(int bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}
