#!/usr/bin/env bash
# The GPU checks of issues 5 and 7, as one short run on a lent GPU machine (the `device` tool):
#   run(command="bash scripts/gpu_check.sh", timeout_s=420)
# It installs nothing (those machines reach no registry): it uses their python3, which has PyTorch, numpy,
# cuda-bindings, onnx, onnxruntime, pytest and nvcc, with this checkout on PYTHONPATH. What it records lands
# in $OUT (or ./gpu-check): the machine, the kernel numerics tests, the kernel micro-benchmark (kernel vs
# the plain-op graph in PyTorch eager, and in onnxruntime-gpu where present), and the TensorRT tests, which
# skip with their reason where no TensorRT is installed (the lent machines have none).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/gpu-check}"
mkdir -p "$out"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export OMNI_EDGE_KERNEL_CACHE="${OMNI_EDGE_KERNEL_CACHE:-/tmp/omni-edge-kernels}"
py="${PYTHON:-python3}"

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
  nvcc --version 2>&1 | tail -1
  "$py" -c "import sys, numpy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__)"
  "$py" -c "import cuda.bindings as b; print('cuda-bindings', b.__version__)" 2>&1
  "$py" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1
  "$py" -c "import tensorrt as t; print('tensorrt', t.__version__)" 2>&1 | tail -1
} > "$out/machine.txt"

# Kernel numerics vs the numpy references (fp32/fp16/bf16 TMRoPE, ODE stages, stitching) and the plugin tests.
timeout 300 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_gpu.py tests/test_kernels.py \
  > "$out/kernel-tests.txt" 2>&1
echo "kernel tests exit $?" >> "$out/machine.txt"

# Micro-benchmark: each kernel against its plain-op graph on the same GPU.
timeout 120 "$py" -m omni_edge.kernels.bench --iterations 200 > "$out/kernel-bench.json" 2> "$out/kernel-bench.err"
echo "kernel bench exit $?" >> "$out/machine.txt"

# TensorRT runtime (engines, device KV cache, CUDA graphs). Their fixture exports the tiny cpu bundle first,
# so they only run where a TensorRT flavour imports.
if "$py" -c "import tensorrt" 2>/dev/null || "$py" -c "import tensorrt_rtx" 2>/dev/null; then
  timeout 240 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_targets_engines.py \
    -k "trt_engine or gpu or device_kv or cuda_graph" > "$out/trt-tests.txt" 2>&1
  echo "trt tests exit $?" >> "$out/machine.txt"
else
  echo "no TensorRT on this machine: the TensorRT runtime tests were not run" | tee "$out/trt-tests.txt" >> "$out/machine.txt"
fi
cat "$out/machine.txt"
tail -n 3 "$out/kernel-tests.txt" "$out/trt-tests.txt"
