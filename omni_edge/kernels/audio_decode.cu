// Streaming token2wav: the per-window flow-matching ODE update and the window stitching.
//
// Reference: omni_edge/kernels/reference.py (ode_step, ode_euler_step, stitch_window), which mirrors
// transformers' RungeKutta4ODESolver._rk4_step (3/8-rule RK4) and the CFG combine of
// Qwen2_5OmniToken2WavDiTModel.sample. Everything is elementwise over the window's [T, 80] mel floats.
//
// Buffers (contiguous float32, n = T * 80):
//   y [n]            state at the start of the interval
//   dit_out [2, n]   DiT output for this stage: row 0 conditioned, row 1 unconditioned (CFG batch)
//   ks_in/ks_out [3, n]  k1..k3 of this interval (ks_out may equal ks_in: then only slot stage-1 is written)
//   out [n]          stage 1..3: the next DiT input; stage 4: y at the end of the interval
// stage 0 is an Euler step (out = y + dt * v, ks passed through), so one graph input selects the solver.
// Arithmetic order follows the reference so float32 results agree to rounding.

__device__ __forceinline__ void ode_step_element(long long i, long long n, const float* __restrict__ y,
                                                 const float* __restrict__ dit_out, const float* ks_in, float* ks_out,
                                                 float* out, float dt, float scale, int stage) {
    const float vc = dit_out[i];
    const float v = vc + __fmul_rn(vc - dit_out[n + i], scale);  // no FMA: match the reference rounding
    const float third = 1.0f / 3.0f;
    float k[3];
    for (int j = 0; j < 3; ++j) k[j] = (j == stage - 1) ? v : ks_in[j * n + i];  // stage 0 keeps all three
    // Copy the untouched slots only when writing to a separate buffer (a TensorRT plugin output).
    for (int j = 0; j < 3; ++j)
        if (j == stage - 1 || ks_out != ks_in) ks_out[j * n + i] = k[j];
    const float yi = y[i];
    if (stage == 0) {
        out[i] = yi + __fmul_rn(dt, v);
    } else if (stage == 1) {
        out[i] = yi + __fmul_rn(__fmul_rn(dt, k[0]), third);
    } else if (stage == 2) {
        out[i] = yi + __fmul_rn(dt, k[1] - __fmul_rn(k[0], third));
    } else if (stage == 3) {
        out[i] = yi + __fmul_rn(dt, k[0] - k[1] + k[2]);
    } else if (stage == 4) {
        const float acc = k[0] + __fmul_rn(3.0f, k[1] + k[2]) + v;
        out[i] = yi + __fmul_rn(acc, dt) / 8.0f;
    } else {
        out[i] = __int_as_float(0x7fc00000);  // NaN: a stage outside 0..4 (a bad graph input) must be loud
    }
}

// Host-scalar entry point: the runtime's own ODE loop launches this with dt and stage as arguments.
extern "C" __global__ void ode_step_f32(const float* y, const float* dit_out, const float* ks_in, float* ks_out,
                                        float* out, long long n, float dt, float scale, int stage) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        ode_step_element(i, n, y, dit_out, ks_in, ks_out, out, dt, scale, stage);
}

// Device-scalar entry point for the TensorRT plugin: dt and stage are graph inputs that live on the
// device, and reading them here avoids a device-to-host copy (and a stream sync) inside enqueue.
extern "C" __global__ void ode_step_dev_f32(const float* y, const float* dit_out, const float* ks_in,
                                            float* ks_out, float* out, long long n, const float* dt, float scale,
                                            const int* stage) {
    const float dt_v = *dt;
    const int stage_v = *stage;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        ode_step_element(i, n, y, dit_out, ks_in, ks_out, out, dt_v, scale, stage_v);
}

// Euler (Qwen's low-VRAM / "relaxed" mode): out = y + dt * v with the same CFG combine.
extern "C" __global__ void ode_euler_f32(const float* y, const float* dit_out, float* out, long long n, float dt,
                                         float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float vc = dit_out[i];
        const float v = vc + __fmul_rn(vc - dit_out[n + i], scale);  // no FMA: match the reference rounding
        out[i] = y[i] + __fmul_rn(dt, v);
    }
}

// Window stitching: out[c, dst + t] = window[c, src + t] for t < length, every channel c. Hard cut, as in
// Qwen's streaming code2wav. Bounds are checked on the host (reference.check_stitch) before launch.
template <typename T>
__device__ void stitch(const T* __restrict__ window, T* __restrict__ out, int channels, long long win_len,
                       long long out_len, long long src, long long dst, long long length) {
    const long long total = (long long)channels * length;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const long long c = i / length;
        const long long t = i - c * length;
        out[c * out_len + dst + t] = window[c * win_len + src + t];
    }
}

extern "C" __global__ void stitch_f32(const float* window, float* out, int channels, long long win_len,
                                      long long out_len, long long src, long long dst, long long length) {
    stitch<float>(window, out, channels, win_len, out_len, src, dst, length);
}

// Any 2-byte element (fp16 / bf16 mel or audio): a copy does not care about the float format.
extern "C" __global__ void stitch_b16(const unsigned short* window, unsigned short* out, int channels,
                                      long long win_len, long long out_len, long long src, long long dst,
                                      long long length) {
    stitch<unsigned short>(window, out, channels, win_len, out_len, src, dst, length);
}
