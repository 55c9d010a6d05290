"""The TensorRT backend of the Engine interface: one `<component>.engine`, device buffers and a stream.

    engine = TrtEngine("thinker_decoder", bundle_dir / "thinker_decoder.engine", manifest.tensorrt)
    outputs = engine.run({"inputs_embeds": ..., ...})      # numpy in, numpy out, like OrtEngine

`run_mixed` also takes `DeviceTensor` feeds and keeps chosen outputs on the device: the KV cache
(trt_kv_cache.py) feeds the past by address and copies the new keys/values device to device, so a decode
step moves only embeddings, positions, mask, logits and hidden states across the bus. Engines of fixed
shape (DiT and BigVGAN windows) replay a CUDA graph of the engine's launches once a binding repeats.

A bundle is checked before any engine is deserialized: the TensorRT flavour and version that built it must
be the one installed (engines are not portable across versions), and this GPU's compute capability must be
the one it was built for. Plugins are registered first (omni_edge.kernels.plugins), since Python plugins
are not embedded in engines.

TensorRT and cuda-python are imported on first use; this module imports on machines without either.
Only APIs present in TensorRT 10.3 and kept in 11.x: deserialize_cuda_engine, num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype / get_tensor_profile_shape, set_input_shape,
get_tensor_shape, set_tensor_address and execute_async_v3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omni_edge import trt_compat
from omni_edge.bundle import TensorRTInfo
from omni_edge.errors import BundleError, InputError
from omni_edge.runtime.cuda import (
    CudaError,
    DeviceBuffer,
    DeviceResource,
    DeviceTensor,
    check,
    compute_capability,
    cuda_device_status,
    current_context,
    destroy_stream,
    driver,
    new_stream,
)


def _targets_for(capability: str) -> str:
    from omni_edge.targets import TARGETS

    names = [t.name for t in TARGETS.values() if t.compute_capability == capability]
    return " or ".join(f"--target {n}" for n in names) if names else "a --target for this GPU"


def check_tensorrt(info: TensorRTInfo | None, bundle_dir: Path, target: str = ""):
    """The installed TensorRT module, once the bundle's flavour and version are the ones installed here."""
    if info is None:
        raise BundleError(f"bundle {bundle_dir} is for TensorRT but records no TensorRT build; re-export it")
    built = trt_compat.describe(info.flavour, info.version)
    package = "tensorrt-rtx" if info.flavour == "tensorrt-rtx" else "tensorrt"
    try:
        trt = trt_compat.import_flavour(info.flavour)
    except (ImportError, KeyError):
        raise BundleError(
            f"bundle {bundle_dir} has engines built by {built}, which is not installed here: "
            f"pip install {package}=={info.version} (JetPack's TensorRT on Jetson), or re-export the bundle on "
            "this machine"
        ) from None
    if trt.__version__ != info.version:
        raise BundleError(
            f"bundle {bundle_dir} has engines built by {built}, but {trt_compat.describe(info.flavour, trt.__version__)} "
            f"is installed, and engines only load in the TensorRT version that built them: pip install "
            f"{package}=={info.version}, or rebuild its engines from the bundle's graphs with the TensorRT "
            f"installed here: omni-build-engines {bundle_dir} (or re-export: omni-export --target {target or '...'})"
        )
    return trt


def check_gpu(info: TensorRTInfo, bundle_dir: Path) -> str:
    """This machine's GPU name, once its compute capability is the one the engines were built for."""
    ok, device = cuda_device_status()
    if not ok:
        raise BundleError(
            f"bundle {bundle_dir} runs on an NVIDIA GPU of compute capability {info.compute_capability}, and "
            f"this machine has none usable ({device}); run it on such a GPU, or export a --target cpu bundle "
            "for ONNX Runtime"
        )
    try:
        here = ".".join(map(str, compute_capability()))
    except CudaError as exc:
        raise BundleError(f"cannot query the GPU ({exc})") from None
    if here != info.compute_capability:
        raise BundleError(
            f"bundle {bundle_dir} has engines for compute capability {info.compute_capability}, but this GPU "
            f"({device}) is {here}; re-export the bundle for this GPU ({_targets_for(here)})"
        )
    return device


MAX_GRAPHS_PER_ENGINE = 4  # bindings (shapes + addresses) an engine keeps a captured CUDA graph for


class _GraphCache:
    """CUDA graphs of one engine's execute_async_v3, per binding. A binding is captured on its second run:
    the first plain run lets TensorRT finish its deferred, shape-dependent setup, which must not be captured."""

    def __init__(self):
        self._drv, self._check = driver(), check
        self._graphs: dict[tuple, object] = {}
        self._seen: set[tuple] = set()
        self.disabled_because = ""

    def launch(self, binding: tuple, context, stream) -> bool:
        """Run the engine through a graph for this binding if there is (or now can be) one; False = run plain."""
        if self.disabled_because:
            return False
        graph = self._graphs.get(binding)
        if graph is None and binding in self._seen:
            graph = self._capture(binding, context, stream)
        if len(self._seen) > 16 * MAX_GRAPHS_PER_ENGINE:  # bindings that never settle: forget, do not hoard
            self._seen.clear()
        self._seen.add(binding)
        if graph is None:
            return False
        self._check(self._drv.cuGraphLaunch(graph, stream))
        return True

    def _capture(self, binding: tuple, context, stream):
        drv, check = self._drv, self._check
        if len(self._graphs) >= MAX_GRAPHS_PER_ENGINE:
            self.clear()
        check(drv.cuStreamSynchronize(stream))  # the inputs' copies land before, not inside, the capture
        check(drv.cuStreamBeginCapture(stream, drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))
        captured = False
        try:
            captured = context.execute_async_v3(int(stream))
        finally:
            try:  # capture must be ended whatever happened, or the stream stays unusable
                graph = check(drv.cuStreamEndCapture(stream))
            except CudaError as exc:
                graph, self.disabled_because = None, f"stream capture failed ({exc})"
        if graph is None:
            return None
        try:
            if not captured:
                self.disabled_because = "TensorRT could not enqueue under stream capture"
                return None
            executable = check(drv.cuGraphInstantiate(graph, 0))
        except CudaError as exc:
            self.disabled_because = f"graph instantiation failed ({exc})"
            return None
        finally:
            check(drv.cuGraphDestroy(graph))
        self._graphs[binding] = executable
        return executable

    def clear(self) -> None:
        for executable in self._graphs.values():
            self._check(self._drv.cuGraphExecDestroy(executable))
        self._graphs.clear()


class TrtEngine(DeviceResource):
    """One deserialized engine with its execution context, a CUDA stream and reusable device buffers."""

    def __init__(
        self,
        name: str,
        path: Path,
        info: TensorRTInfo | None,
        bundle_dir: Path | None = None,
        target: str = "",
        cuda_graph: bool = False,
        data: bytes | None = None,
    ):
        """`data`: the engine's bytes, already read and hashed by the caller (runtime.engine.open_engine),
        so the plan that was verified is the one deserialized; None reads `path`."""
        from omni_edge.kernels import plugins

        bundle_dir = bundle_dir or path.parent
        trt = check_tensorrt(info, bundle_dir, target)
        assert info is not None  # check_tensorrt refused a bundle that records no TensorRT build
        check_gpu(info, bundle_dir)
        self._trt, self._drv = trt, driver()
        self._stream, self.graphs, self._buffers = None, None, {}
        current_context()
        try:
            self._engine = plugins.deserialize_engine(
                path.read_bytes() if data is None else data, trt.Logger(trt.Logger.WARNING), trt=trt
            )
        except Exception as exc:  # KernelError, CudaError, or TensorRT's own errors on a corrupt plan
            raise BundleError(f"cannot load {path.name} ({exc}); re-export the bundle on this machine") from None
        self._context, self.graphs = self._new_context(info.flavour, cuda_graph)
        self._stream = new_stream()
        self.name = name
        io = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode
        self.input_names = [n for n in io if self._engine.get_tensor_mode(n) == mode.INPUT]
        self.output_names = [n for n in io if self._engine.get_tensor_mode(n) == mode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in io}
        self._buffers = {n: DeviceBuffer() for n in io}

    def _new_context(self, flavour: str, cuda_graph: bool):
        """The execution context, and the graph cache when this runtime must capture graphs itself.

        TensorRT-RTX JIT-specializes kernels per shape after the first runs, so a graph captured by hand
        could hold the fallback kernels (and needs engines built for user allocation); its runtime config
        captures whole graphs itself once the specialized kernels exist. Full TensorRT gets stream capture."""
        engine, trt = self._engine, self._trt
        if cuda_graph and flavour == "tensorrt-rtx":
            if not (hasattr(engine, "create_runtime_config") and hasattr(trt, "CudaGraphStrategy")):
                self.graph_mode = ""  # before TensorRT-RTX 1.2: no built-in capture, and hand capture is unsafe
                return engine.create_execution_context(), None
            config = engine.create_runtime_config()
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.graph_mode = "tensorrt-rtx whole-graph capture"
            return engine.create_execution_context(config), None
        self.graph_mode = "stream capture" if cuda_graph else ""
        return engine.create_execution_context(), (_GraphCache() if cuda_graph else None)

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, shape):
            low, _, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(name, 0))
            raise InputError(
                f"{self.name}: input {name} has shape {shape}, outside the engine's profile "
                f"{low}..{high}; re-export with a larger --max-seq-len or send less at once"
            )

    def _bind_input(self, name: str, value, hosts: dict) -> int:
        """The device address of one input, copied from the host unless it is on the device already."""
        drv = self._drv
        if isinstance(value, DeviceTensor):
            if np.dtype(value.dtype) != self._dtypes[name]:
                raise BundleError(
                    f"{self.name}: input {name} is {np.dtype(value.dtype)} on the device, the engine "
                    f"takes {self._dtypes[name]}; re-export the bundle"
                )
            self._set_shape(name, tuple(value.shape))
            return value.ptr
        array = np.ascontiguousarray(value, dtype=self._dtypes[name])
        self._set_shape(name, array.shape)
        ptr = self._buffers[name].reserve(array.nbytes)
        if array.nbytes:
            check(drv.cuMemcpyHtoDAsync(ptr, array.ctypes.data, array.nbytes, self._stream))
        hosts[name] = array  # the host array must live until the stream is synchronized
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_mixed(feeds)

    def run_mixed(self, feeds: dict, keep_on_device=()) -> dict:
        """Feeds may be numpy arrays or DeviceTensors; outputs named in `keep_on_device` come back as
        DeviceTensors in this engine's buffers, valid until its next run."""
        drv, stream = self._drv, self._stream
        assert stream is not None, f"{self.name} was closed"
        keep_on_device = set(keep_on_device)
        hosts: dict[str, np.ndarray] = {}
        binding: list[tuple] = []
        for name in self.input_names:
            ptr = self._bind_input(name, feeds[name], hosts)
            self._context.set_tensor_address(name, ptr)
            binding.append((name, tuple(self._context.get_tensor_shape(name)), ptr))
        outputs = {}
        for name in self.output_names:
            shape, dtype = tuple(self._context.get_tensor_shape(name)), self._dtypes[name]
            ptr = self._buffers[name].reserve(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
            self._context.set_tensor_address(name, ptr)
            binding.append((name, shape, ptr))
            outputs[name] = DeviceTensor(ptr, shape, dtype) if name in keep_on_device else np.empty(shape, dtype)
        launched = self.graphs is not None and self.graphs.launch(tuple(binding), self._context, stream)
        if not launched and not self._context.execute_async_v3(int(stream)):
            raise BundleError(f"TensorRT failed to run {self.name}; see the TensorRT log above")
        for name, out in outputs.items():
            if isinstance(out, np.ndarray) and out.nbytes:
                check(drv.cuMemcpyDtoHAsync(out.ctypes.data, self._buffers[name].ptr, out.nbytes, stream))
        check(drv.cuStreamSynchronize(stream))
        return outputs

    def close(self) -> None:
        if self.graphs is not None:
            self.graphs.clear()
        for buffer in self._buffers.values():
            buffer.free()
        destroy_stream(self._stream)
        self._stream = None
