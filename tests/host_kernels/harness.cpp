// Runs each kernel of omni_edge/kernels on the CPU behind cuLaunchKernel's calling convention: grid and
// block dimensions, and kernelParams as an array of pointers to the argument values. So the Python
// launchers in omni_edge/kernels/launch.py drive these exactly as they drive the GPU.
#include "tmrope.cu"
#include "audio_decode.cu"

template <typename Body>
static void each_thread(const unsigned* dims, Body body) {
    gridDim = {dims[0], dims[1], dims[2]};
    blockDim = {dims[3], dims[4], dims[5]};
    for (unsigned bz = 0; bz < dims[2]; ++bz)
        for (unsigned by = 0; by < dims[1]; ++by)
            for (unsigned bx = 0; bx < dims[0]; ++bx)
                for (unsigned tz = 0; tz < dims[5]; ++tz)
                    for (unsigned ty = 0; ty < dims[4]; ++ty)
                        for (unsigned tx = 0; tx < dims[3]; ++tx) {
                            blockIdx = {bx, by, bz};
                            threadIdx = {tx, ty, tz};
                            body();
                        }
}

template <typename T>
static T arg(void** args, int i) {
    return *static_cast<T*>(args[i]);
}

#define TMROPE_RUNNER(name, T)                                                                              \
    extern "C" void run_##name(const unsigned* dims, void** a) {                                            \
        each_thread(dims, [&] {                                                                             \
            name(arg<const T*>(a, 0), arg<const T*>(a, 1), arg<const int*>(a, 2), arg<T*>(a, 3),            \
                 arg<T*>(a, 4), arg<TmropeParams>(a, 5));                                                   \
        });                                                                                                 \
    }
TMROPE_RUNNER(tmrope_f32, float)
TMROPE_RUNNER(tmrope_f16, __half)
TMROPE_RUNNER(tmrope_bf16, __nv_bfloat16)

extern "C" void run_ode_step_f32(const unsigned* dims, void** a) {
    each_thread(dims, [&] {
        ode_step_f32(arg<const float*>(a, 0), arg<const float*>(a, 1), arg<const float*>(a, 2), arg<float*>(a, 3),
                     arg<float*>(a, 4), arg<long long>(a, 5), arg<float>(a, 6), arg<float>(a, 7), arg<int>(a, 8));
    });
}

extern "C" void run_ode_step_dev_f32(const unsigned* dims, void** a) {
    each_thread(dims, [&] {
        ode_step_dev_f32(arg<const float*>(a, 0), arg<const float*>(a, 1), arg<const float*>(a, 2),
                         arg<float*>(a, 3), arg<float*>(a, 4), arg<long long>(a, 5), arg<const float*>(a, 6),
                         arg<float>(a, 7), arg<const int*>(a, 8));
    });
}

extern "C" void run_ode_euler_f32(const unsigned* dims, void** a) {
    each_thread(dims, [&] {
        ode_euler_f32(arg<const float*>(a, 0), arg<const float*>(a, 1), arg<float*>(a, 2), arg<long long>(a, 3),
                      arg<float>(a, 4), arg<float>(a, 5));
    });
}

#define STITCH_RUNNER(name, T)                                                                              \
    extern "C" void run_##name(const unsigned* dims, void** a) {                                            \
        each_thread(dims, [&] {                                                                             \
            name(arg<const T*>(a, 0), arg<T*>(a, 1), arg<int>(a, 2), arg<long long>(a, 3),                  \
                 arg<long long>(a, 4), arg<long long>(a, 5), arg<long long>(a, 6), arg<long long>(a, 7));   \
        });                                                                                                 \
    }
STITCH_RUNNER(stitch_f32, float)
STITCH_RUNNER(stitch_b16, unsigned short)
