"""TensorRT IPluginV3 plugins, written with TensorRT's Python plugin API, that launch our CUDA kernels.

    from omni_edge.kernels.plugins import register_plugins
    register_plugins()          # before parsing an ONNX graph with plugin nodes or deserializing an engine

Plugins:
- OmniEdgeTMRoPE (v1): inputs q [B, Hq, S, D], k [B, Hk, S, D] (fp32/fp16/bf16), positions [3, B, S] int32;
  outputs rotated q, k. Fields: head_dim (int32), mrope_section (3 x int32), theta (float32).
- OmniEdgeAudioDecodeStep (v1): inputs y [...], dit_out [2, ...] (cond, uncond), ks [3, ...] (float32),
  dt [1] float32, stage [1] int32 (0 = Euler, 1..3 = RK4 stage, 4 = RK4 update); outputs y_next [...],
  ks_next [3, ...]. Field: guidance_scale (float32). dt and stage are tensors, not fields, so one engine
  serves every interval and stage; the kernel reads them on the device (no sync in enqueue).

TensorRT compatibility: only interfaces present in TensorRT 10.3 (JetPack 6) and kept in 11.x are used:
IPluginV3 + IPluginV3OneCore/OneBuild/OneRuntime and IPluginCreatorV3One (create_plugin(name, fc,
phase)). Not used: IPluginV3OneBuildV2 (aliased I/O, newer than 10.3), the `tensorrt.plugin` decorator
API (IPluginV3Quick*, 10.6+), plugin serialization into the engine (Python plugins cannot be embedded,
so the process that deserializes an engine must call register_plugins() first). TensorRT-RTX's Python
module (`tensorrt_rtx`) exposes the same classes and is used when `tensorrt` is absent.
"""

from __future__ import annotations

import functools

import numpy as np

from omni_edge.kernels import launch
from omni_edge.kernels.errors import KernelError

TMROPE_PLUGIN = "OmniEdgeTMRoPE"
AUDIO_DECODE_PLUGIN = "OmniEdgeAudioDecodeStep"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""  # the ONNX parser looks plugins up with namespace "" unless the node says otherwise


def tensorrt():
    """The TensorRT Python module (`tensorrt`, else `tensorrt_rtx`), imported on first use."""
    try:
        import tensorrt as trt
    except ImportError:
        try:
            import tensorrt_rtx as trt
        except ImportError:
            raise KernelError(
                "TensorRT's Python package is not installed: use JetPack's python3-libnvinfer "
                "on Jetson, or `pip install tensorrt` / `pip install tensorrt-rtx`"
            ) from None
    return trt


def _field(fc, name: str, dtype, default=None) -> np.ndarray:
    for f in fc:
        if f.name == name:
            return np.asarray(f.data).astype(dtype).reshape(-1)
    if default is None:
        raise KernelError(f"plugin field {name!r} is missing; the ONNX node must carry it as an attribute")
    return np.asarray(default, dtype).reshape(-1)


def _collection(trt, owner, *fields):
    """A PluginFieldCollection whose numpy buffers live as long as `owner`.

    PluginField only points at the array's memory, and the collection copies the fields, so a
    temporary array would be freed while TensorRT still reads it (seen as garbage field values).
    """
    arrays = [np.ascontiguousarray(value) for _, value, _ in fields]
    plugin_fields = [trt.PluginField(name, array, kind) for (name, _, kind), array in zip(fields, arrays)]
    owner._field_buffers = (arrays, plugin_fields)
    return trt.PluginFieldCollection(plugin_fields)


def _volume(dims) -> int:
    return int(np.prod([int(d) for d in dims], dtype=np.int64)) if len(dims) else 1


@functools.cache
def plugin_classes(trt) -> dict:
    """Define the plugin and creator classes against one TensorRT module (they subclass its types)."""
    linear = trt.TensorFormat.LINEAR
    rope_types = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}
    if hasattr(trt.DataType, "BF16"):
        rope_types[trt.DataType.BF16] = "bfloat16"

    class _Base(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        """Attribute wiring shared by both plugins; every attribute is set explicitly, as the API requires."""

        name = ""

        def __init__(self, num_outputs: int):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.plugin_name = self.name
            self.plugin_version = PLUGIN_VERSION
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.num_outputs = num_outputs
            self.timing_cache_id = ""  # timing depends only on shapes/formats, which TensorRT keys itself

        def get_capability_interface(self, type):
            return self

        def configure_plugin(self, inp, out):
            pass

        def on_shape_change(self, inp, out):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def get_workspace_size(self, inputs, outputs):
            return 0

        def destroy(self):
            pass

    class TMRoPEPlugin(_Base):
        name = TMROPE_PLUGIN

        def __init__(self, head_dim: int, mrope_section, theta: float):
            super().__init__(num_outputs=2)
            self.head_dim = int(head_dim)
            self.mrope_section = [int(s) for s in mrope_section]
            self.theta = float(theta)
            # Fail at graph parse time, not at the first enqueue, on a bad head_dim or section split.
            launch.tmrope_params(launch.TmropeShape(1, 1, 1, 1, self.head_dim), self.mrope_section, self.theta)

        def clone(self):
            return TMRoPEPlugin(self.head_dim, self.mrope_section, self.theta)

        def get_fields_to_serialize(self):
            return _collection(
                trt,
                self,
                ("head_dim", np.array([self.head_dim], np.int32), trt.PluginFieldType.INT32),
                ("mrope_section", np.array(self.mrope_section, np.int32), trt.PluginFieldType.INT32),
                ("theta", np.array([self.theta], np.float32), trt.PluginFieldType.FLOAT32),
            )

        def get_output_data_types(self, input_types):
            return [input_types[0], input_types[1]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0]), trt.DimsExprs(inputs[1])]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != linear:
                return False
            if pos == 2:  # positions [3, B, S]
                return desc.type == trt.DataType.INT32
            if pos == 0:
                return desc.type in rope_types
            return desc.type == in_out[0].desc.type  # k and both outputs follow q's dtype

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            q_dims, k_dims = list(input_desc[0].dims), list(input_desc[1].dims)
            shape = launch.TmropeShape(
                batch=int(q_dims[0]),
                q_heads=int(q_dims[1]),
                k_heads=int(k_dims[1]),
                seq=int(q_dims[2]),
                head_dim=int(q_dims[3]),
            )
            if shape.head_dim != self.head_dim:
                raise KernelError(f"{TMROPE_PLUGIN}: q has head_dim {shape.head_dim}, plugin built for {self.head_dim}")
            launch.launch_tmrope(
                inputs[0],
                inputs[1],
                inputs[2],
                outputs[0],
                outputs[1],
                shape,
                self.mrope_section,
                self.theta,
                rope_types[input_desc[0].type],
                stream,
            )

    class AudioDecodeStepPlugin(_Base):
        name = AUDIO_DECODE_PLUGIN

        def __init__(self, guidance_scale: float):
            super().__init__(num_outputs=2)
            self.guidance_scale = float(guidance_scale)

        def clone(self):
            return AudioDecodeStepPlugin(self.guidance_scale)

        def get_fields_to_serialize(self):
            return _collection(
                trt, self, ("guidance_scale", np.array([self.guidance_scale], np.float32), trt.PluginFieldType.FLOAT32)
            )

        def get_output_data_types(self, input_types):
            return [input_types[0], input_types[2]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0]), trt.DimsExprs(inputs[2])]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            if desc.format != linear:
                return False
            return desc.type == (trt.DataType.INT32 if pos == 4 else trt.DataType.FLOAT)

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            y, dit_out, ks, dt, stage = inputs
            launch.launch_ode_step_dev(
                y,
                dit_out,
                ks,
                outputs[1],
                outputs[0],
                _volume(input_desc[0].dims),
                dt,
                self.guidance_scale,
                stage,
                stream,
            )

    class TMRoPECreator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = TMROPE_PLUGIN
            self.plugin_version = PLUGIN_VERSION
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.field_names = _collection(
                trt,
                self,
                ("head_dim", np.array([], np.int32), trt.PluginFieldType.INT32),
                ("mrope_section", np.array([], np.int32), trt.PluginFieldType.INT32),
                ("theta", np.array([], np.float32), trt.PluginFieldType.FLOAT32),
            )

        def create_plugin(self, name, fc, phase):
            return TMRoPEPlugin(
                int(_field(fc, "head_dim", np.int64)[0]),
                _field(fc, "mrope_section", np.int64),
                float(_field(fc, "theta", np.float64)[0]),
            )

    class AudioDecodeStepCreator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = AUDIO_DECODE_PLUGIN
            self.plugin_version = PLUGIN_VERSION
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.field_names = _collection(
                trt, self, ("guidance_scale", np.array([], np.float32), trt.PluginFieldType.FLOAT32)
            )

        def create_plugin(self, name, fc, phase):
            return AudioDecodeStepPlugin(float(_field(fc, "guidance_scale", np.float64, 0.5)[0]))

    return {
        "TMRoPEPlugin": TMRoPEPlugin,
        "AudioDecodeStepPlugin": AudioDecodeStepPlugin,
        "TMRoPECreator": TMRoPECreator,
        "AudioDecodeStepCreator": AudioDecodeStepCreator,
    }


_registered: dict[str, list] = {}  # TensorRT module name -> creators kept alive for the registry


def register_plugins(trt=None) -> list[str]:
    """Register both plugin creators with TensorRT's global registry (idempotent); returns their names."""
    trt = trt or tensorrt()
    if trt.__name__ not in _registered:
        classes = plugin_classes(trt)
        creators = [classes["TMRoPECreator"](), classes["AudioDecodeStepCreator"]()]
        registry = trt.get_plugin_registry()
        for creator in creators:
            # False means a creator with this name/version/namespace exists already (a second import of
            # this module under another name, say); the engine resolves by name, so that is fine.
            registry.register_creator(creator, PLUGIN_NAMESPACE)
        _registered[trt.__name__] = creators
    return [TMROPE_PLUGIN, AUDIO_DECODE_PLUGIN]


def deserialize_engine(data: bytes, logger=None, trt=None):
    """Register the plugins, then deserialize a TensorRT engine that may contain them.

    Python plugins are not embedded in the engine, so this order is required in every process that
    loads a plugin engine; the runtime's TensorRT backend should load engines through here. `trt` picks the
    module (the one that built the engine) when both `tensorrt` and `tensorrt_rtx` are installed.
    """
    trt = trt or tensorrt()
    register_plugins(trt)
    runtime = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise KernelError(
            "TensorRT could not deserialize the engine: it was built by another TensorRT "
            "version or for another GPU; rebuild it on this device"
        )
    return engine
