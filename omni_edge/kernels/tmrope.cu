// Fused TMRoPE: 3-axis position ids + mrope sections -> rotate q and k (rotate-half, non-interleaved).
//
// Reference: omni_edge/kernels/reference.py::tmrope, which mirrors transformers'
// Qwen2_5OmniRotaryEmbedding + apply_rotary_pos_emb. Layouts (contiguous):
//   q [B, Hq, S, D], k [B, Hk, S, D], positions [3, B, S] int32 (t, h, w rows).
// One block per token (b, s). threadIdx.x walks the D/2 frequencies, threadIdx.y walks the heads of q
// then k, so each (token, frequency) angle is computed blockDim.y times at most instead of per element.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define TMROPE_MAX_HALF 128  // head_dim <= 256; Qwen2.5-Omni uses 128 (Thinker, Talker)

// Passed by value (about 540 bytes, well under the 4 KB kernel-parameter limit): the host computes
// inv_freq in float32 exactly as the reference, so pos * inv_freq[j] rounds identically on both sides.
struct TmropeParams {
    float inv_freq[TMROPE_MAX_HALF];
    int section_end0;  // frequencies [0, section_end0) read the time row
    int section_end1;  // [section_end0, section_end1) the height row, the rest the width row
    int half;          // head_dim / 2
    int batch;
    int seq;
    int q_heads;
    int k_heads;
};

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ void tmrope_token(const T* __restrict__ q, const T* __restrict__ k, const int* __restrict__ positions,
                             T* q_out, T* k_out, const TmropeParams& p) {
    const long long token = blockIdx.x;  // b * seq + s
    const long long tokens = (long long)p.batch * p.seq;
    if (token >= tokens) return;
    const int b = (int)(token / p.seq);
    const int s = (int)(token % p.seq);
    const int head_dim = 2 * p.half;
    const int heads = p.q_heads + p.k_heads;

    for (int j = threadIdx.x; j < p.half; j += blockDim.x) {
        const int axis = j < p.section_end0 ? 0 : (j < p.section_end1 ? 1 : 2);
        const int pos = positions[axis * tokens + token];
        // A lone multiply: no FMA contraction possible, so the angle equals the float32 reference.
        const float angle = (float)pos * p.inv_freq[j];
        float sn, cs;
        sincosf(angle, &sn, &cs);  // accurate path (no --use_fast_math): angles reach ~3e4 rad
        for (int h = threadIdx.y; h < heads; h += blockDim.y) {
            const bool is_q = h < p.q_heads;
            const int head = is_q ? h : h - p.q_heads;
            const int nheads = is_q ? p.q_heads : p.k_heads;
            const long long row = (((long long)b * nheads + head) * p.seq + s) * head_dim;
            const T* src = (is_q ? q : k) + row;
            T* dst = (is_q ? q_out : k_out) + row;
            const float x1 = to_f32(src[j]);
            const float x2 = to_f32(src[j + p.half]);
            // out = x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1).
            // __fmul_rn keeps each product rounded on its own (no FMA), as the reference computes it.
            dst[j] = from_f32<T>(__fmul_rn(x1, cs) - __fmul_rn(x2, sn));
            dst[j + p.half] = from_f32<T>(__fmul_rn(x2, cs) + __fmul_rn(x1, sn));
        }
    }
}

extern "C" __global__ void tmrope_f32(const float* q, const float* k, const int* positions, float* q_out,
                                      float* k_out, TmropeParams p) {
    tmrope_token<float>(q, k, positions, q_out, k_out, p);
}

extern "C" __global__ void tmrope_f16(const __half* q, const __half* k, const int* positions, __half* q_out,
                                      __half* k_out, TmropeParams p) {
    tmrope_token<__half>(q, k, positions, q_out, k_out, p);
}

extern "C" __global__ void tmrope_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const int* positions,
                                       __nv_bfloat16* q_out, __nv_bfloat16* k_out, TmropeParams p) {
    tmrope_token<__nv_bfloat16>(q, k, positions, q_out, k_out, p);
}
