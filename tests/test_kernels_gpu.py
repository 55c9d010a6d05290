"""Kernels on a GPU (vs the numpy references) and the TensorRT plugins.

GPU tests skip with "no CUDA device" unless cuda-python finds one; plugin tests skip unless TensorRT's
Python package imports. The plain-op graphs stay the default: nothing here changes an export.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import from_bf16_bits, to_bf16_bits

from omni_edge.kernels import launch
from omni_edge.kernels import reference as R
from omni_edge.kernels.errors import KernelError
from omni_edge.runtime.cuda import cuda_device_status

ROPE = dict(head_dim=128, mrope_section=(16, 24, 24), theta=1e6)


@pytest.fixture(scope="module")
def gpu():
    ok, why = cuda_device_status()
    if not ok:
        pytest.skip(why if why.startswith("no CUDA device") else f"no CUDA device ({why})")
    return why


@pytest.mark.parametrize("dtype,atol", [("float32", 2e-5), ("float16", 1.5e-2), ("bfloat16", 8e-2)])
@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 37)])
def test_tmrope_kernel_matches_reference(gpu, dtype, atol, batch, seq):
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(seq)
    q = rng.standard_normal((batch, 4, seq, ROPE["head_dim"])).astype(np.float32)
    k = rng.standard_normal((batch, 2, seq, ROPE["head_dim"])).astype(np.float32)
    pos = rng.integers(0, 32768, (3, batch, seq)).astype(np.int32)
    if dtype == "bfloat16":
        q_dev, k_dev = to_bf16_bits(q), to_bf16_bits(k)
        q, k = from_bf16_bits(q_dev), from_bf16_bits(k_dev)
    else:
        q, k = q.astype(dtype), k.astype(dtype)
        q_dev, k_dev = q, k
    bufs = [DeviceBuffer(a) for a in (q_dev, k_dev, pos, np.zeros_like(q_dev), np.zeros_like(k_dev))]
    try:
        launch.launch_tmrope(
            *(b.ptr for b in bufs),
            launch.TmropeShape(batch, 4, 2, seq, ROPE["head_dim"]),
            ROPE["mrope_section"],
            ROPE["theta"],
            dtype,
        )
        q_out, k_out = bufs[3].numpy(), bufs[4].numpy()
    finally:
        for b in bufs:
            b.free()
    if dtype == "bfloat16":
        q_out, k_out = from_bf16_bits(q_out), from_bf16_bits(k_out)
    q_ref, k_ref = R.tmrope(q, k, pos, **ROPE)
    np.testing.assert_allclose(q_out.astype(np.float32), q_ref, atol=atol, rtol=0)
    np.testing.assert_allclose(k_out.astype(np.float32), k_ref, atol=atol, rtol=0)


@pytest.mark.parametrize("device_scalars", [False, True])
@pytest.mark.parametrize("stage", R.ODE_STAGES)
def test_ode_step_kernel_matches_reference(gpu, stage, device_scalars):
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(stage)
    y = rng.standard_normal((144, 80)).astype(np.float32)
    dit = rng.standard_normal((2, 144, 80)).astype(np.float32)
    ks = rng.standard_normal((3, 144, 80)).astype(np.float32)
    dt = np.float32(0.0731)
    bufs = [
        DeviceBuffer(a)
        for a in (
            y,
            dit,
            ks,
            np.zeros_like(ks),
            np.zeros_like(y),
            np.array([dt], np.float32),
            np.array([stage], np.int32),
        )
    ]
    try:
        args = [b.ptr for b in bufs[:5]] + [y.size]
        if device_scalars:
            launch.launch_ode_step_dev(*args, bufs[5].ptr, 0.5, bufs[6].ptr)
        else:
            launch.launch_ode_step(*args, float(dt), 0.5, stage)
        out, ks_out = bufs[4].numpy(), bufs[3].numpy()
    finally:
        for b in bufs:
            b.free()
    ref_out, ref_ks = R.ode_step(y, dit, ks, dt, 0.5, stage)
    np.testing.assert_allclose(out, ref_out, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(ks_out, ref_ks)


def test_ode_step_in_place_ks(gpu):
    """The runtime keeps one ks buffer per window: ks_out == ks_in writes only slot stage-1."""
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(7)
    y, dit = rng.standard_normal((10, 80)).astype(np.float32), rng.standard_normal((2, 10, 80)).astype(np.float32)
    ks = np.zeros((3, 10, 80), np.float32)
    bufs = [DeviceBuffer(a) for a in (y, dit, ks, np.zeros_like(y))]
    try:
        launch.launch_ode_step(bufs[0].ptr, bufs[1].ptr, bufs[2].ptr, bufs[2].ptr, bufs[3].ptr, y.size, 0.1, 0.5, 2)
        np.testing.assert_array_equal(bufs[2].numpy(), R.ode_step(y, dit, ks, 0.1, 0.5, 2)[1])
    finally:
        for b in bufs:
            b.free()


def test_euler_kernel_matches_reference(gpu):
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(5)
    y, dit = rng.standard_normal((144, 80)).astype(np.float32), rng.standard_normal((2, 144, 80)).astype(np.float32)
    bufs = [DeviceBuffer(a) for a in (y, dit, np.zeros_like(y))]
    try:
        launch.launch_ode_euler(bufs[0].ptr, bufs[1].ptr, bufs[2].ptr, y.size, 0.11, 0.5)
        np.testing.assert_allclose(bufs[2].numpy(), R.ode_euler_step(y, dit, 0.11, 0.5), atol=1e-6, rtol=1e-6)
    finally:
        for b in bufs:
            b.free()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_stitch_kernel_matches_reference(gpu, dtype):
    from omni_edge.kernels.device import DeviceBuffer

    rng = np.random.default_rng(0)
    window = rng.standard_normal((80, 144)).astype(dtype)
    out = rng.standard_normal((80, 1000)).astype(dtype)
    bufs = [DeviceBuffer(window), DeviceBuffer(out)]
    try:
        launch.launch_stitch(bufs[0].ptr, bufs[1].ptr, 80, 144, 1000, 48, 310, 72, itemsize=window.itemsize)
        np.testing.assert_array_equal(bufs[1].numpy(), R.stitch_window(out.copy(), window, 48, 310, 72))
    finally:
        for b in bufs:
            b.free()
    with pytest.raises(KernelError, match="does not fit"):
        launch.launch_stitch(0, 0, 80, 144, 1000, 100, 0, 72)


def test_bench_reports_each_kernel_or_skips():
    from omni_edge.kernels.bench import bench_kernels

    result = bench_kernels(iterations=5)
    if not cuda_device_status()[0]:
        assert "no CUDA device" in result["skipped"]
        return
    for key in ("tmrope_s1", "tmrope_s512", "ode_rk4_update", "stitch"):
        assert result[key]["kernel"]["p50_ms"] > 0
        for baseline in ("plain", "torch"):
            assert "p50_ms" in result[key][baseline] or "skipped" in result[key][baseline]


# ------------------------------------------------------------------------------------ TensorRT plugins


@pytest.fixture(scope="module")
def trt():
    from omni_edge.kernels import plugins

    try:
        return plugins.tensorrt()
    except KernelError as exc:
        pytest.skip(str(exc))


_KEEP_ALIVE = []  # PluginField only points at the numpy buffer: keep it alive while TensorRT reads it


def _fields(trt, **values):
    types = {np.int32: trt.PluginFieldType.INT32, np.float32: trt.PluginFieldType.FLOAT32}
    fields = [trt.PluginField(name, v, types[v.dtype.type]) for name, v in values.items()]
    _KEEP_ALIVE.append((values, fields))
    return trt.PluginFieldCollection(fields)


def test_plugins_register_and_round_trip_their_fields(trt):
    from omni_edge.kernels import plugins

    assert plugins.register_plugins(trt) == [plugins.TMROPE_PLUGIN, plugins.AUDIO_DECODE_PLUGIN]
    assert plugins.register_plugins(trt) == [plugins.TMROPE_PLUGIN, plugins.AUDIO_DECODE_PLUGIN]  # idempotent
    registry = trt.get_plugin_registry()
    rope_creator = registry.get_creator(plugins.TMROPE_PLUGIN, plugins.PLUGIN_VERSION, plugins.PLUGIN_NAMESPACE)
    ode_creator = registry.get_creator(plugins.AUDIO_DECODE_PLUGIN, plugins.PLUGIN_VERSION, plugins.PLUGIN_NAMESPACE)
    assert [f.name for f in rope_creator.field_names] == ["head_dim", "mrope_section", "theta"]
    assert [f.name for f in ode_creator.field_names] == ["guidance_scale"]

    fc = _fields(
        trt,
        head_dim=np.array([128], np.int32),
        mrope_section=np.array([16, 24, 24], np.int32),
        theta=np.array([1e6], np.float32),
    )
    rope = rope_creator.create_plugin("rope", fc, trt.TensorRTPhase.BUILD)
    assert (rope.head_dim, rope.mrope_section, rope.theta, rope.num_outputs) == (128, [16, 24, 24], 1e6, 2)
    # What an engine stores and hands back at deserialization must rebuild the same plugin.
    again = rope_creator.create_plugin("rope", rope.get_fields_to_serialize(), trt.TensorRTPhase.RUNTIME)
    assert (again.head_dim, again.mrope_section, again.theta) == (128, [16, 24, 24], 1e6)
    assert rope.clone().mrope_section == [16, 24, 24]
    ode = ode_creator.create_plugin(
        "ode", _fields(trt, guidance_scale=np.array([0.5], np.float32)), trt.TensorRTPhase.BUILD
    )
    assert ode.guidance_scale == 0.5
    with pytest.raises(KernelError, match="mrope_section"):
        rope_creator.create_plugin(
            "bad",
            _fields(
                trt,
                head_dim=np.array([128], np.int32),
                mrope_section=np.array([16, 24, 20], np.int32),
                theta=np.array([1e6], np.float32),
            ),
            trt.TensorRTPhase.BUILD,
        )


def _desc(trt, dtype, fmt=None):
    desc = trt.DynamicPluginTensorDesc()
    desc.desc.type = dtype
    desc.desc.format = fmt or trt.TensorFormat.LINEAR
    return desc


def test_plugin_format_combinations(trt):
    from omni_edge.kernels import plugins

    classes = plugins.plugin_classes(trt)
    rope = classes["TMRoPEPlugin"](128, (16, 24, 24), 1e6)
    f32, f16, i32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    io = [_desc(trt, t) for t in (f16, f16, i32, f16, f16)]
    assert all(rope.supports_format_combination(pos, io, 3) for pos in range(5))
    io[1] = _desc(trt, f32)  # k must follow q's dtype
    assert not rope.supports_format_combination(1, io, 3)
    assert not rope.supports_format_combination(2, [_desc(trt, t) for t in (f16, f16, f32, f16, f16)], 3)
    assert rope.get_output_data_types([f16, f16, i32]) == [f16, f16]
    ode = classes["AudioDecodeStepPlugin"](0.5)
    io = [_desc(trt, t) for t in (f32, f32, f32, f32, i32, f32, f32)]
    assert all(ode.supports_format_combination(pos, io, 5) for pos in range(7))
    assert not ode.supports_format_combination(0, [_desc(trt, f16)] + io[1:], 5)


def _single_node_model(op: str, inputs: list, outputs: list, **attrs):
    pytest.importorskip("onnx")
    from onnx import helper

    from omni_edge.kernels.graph_rewrite import PLUGIN_DOMAIN

    node = helper.make_node(op, [i[0] for i in inputs], [o[0] for o in outputs], domain=PLUGIN_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(PLUGIN_DOMAIN, 1)]
    ).SerializeToString()


def _run_engine(trt, model: bytes, feeds: dict) -> dict:
    """Parse, build, deserialize (through deserialize_engine) and run once; returns numpy outputs."""
    from omni_edge.kernels.device import DeviceBuffer
    from omni_edge.kernels.plugins import deserialize_engine, register_plugins

    register_plugins(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    assert serialized is not None
    engine = deserialize_engine(bytes(serialized), logger)
    context = engine.create_execution_context()
    buffers = {}
    try:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                buffers[name] = DeviceBuffer(feeds[name])
            else:
                shape = tuple(engine.get_tensor_shape(name))
                buffers[name] = DeviceBuffer.empty(shape, trt.nptype(engine.get_tensor_dtype(name)))
            context.set_tensor_address(name, buffers[name].ptr)
        assert context.execute_async_v3(0)
        return {name: b.numpy() for name, b in buffers.items() if name not in feeds}
    finally:
        for b in buffers.values():
            b.free()


@pytest.fixture(scope="module")
def full_trt(trt, gpu):
    if trt.__name__ != "tensorrt":
        pytest.skip("engine tests need full TensorRT (TensorRT-RTX 1.7 cannot build Python-plugin layers)")
    return trt


def test_tmrope_plugin_engine_matches_reference(full_trt):
    from onnx import TensorProto

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 8, 128)).astype(np.float32)
    k = rng.standard_normal((1, 2, 8, 128)).astype(np.float32)
    pos = rng.integers(0, 30000, (3, 1, 8)).astype(np.int32)
    model = _single_node_model(
        "OmniEdgeTMRoPE",
        [
            ("q", TensorProto.FLOAT, q.shape),
            ("k", TensorProto.FLOAT, k.shape),
            ("positions", TensorProto.INT32, pos.shape),
        ],
        [("q_out", TensorProto.FLOAT, q.shape), ("k_out", TensorProto.FLOAT, k.shape)],
        head_dim=128,
        mrope_section=[16, 24, 24],
        theta=1e6,
    )
    out = _run_engine(full_trt, model, {"q": q, "k": k, "positions": pos})
    q_ref, k_ref = R.tmrope(q, k, pos, **ROPE)
    np.testing.assert_allclose(out["q_out"], q_ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(out["k_out"], k_ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("stage", [0, 2, 4])
def test_audio_decode_plugin_engine_matches_reference(full_trt, stage):
    from onnx import TensorProto

    rng = np.random.default_rng(stage)
    feeds = {
        "y": rng.standard_normal((144, 80)).astype(np.float32),
        "dit_out": rng.standard_normal((2, 144, 80)).astype(np.float32),
        "ks": rng.standard_normal((3, 144, 80)).astype(np.float32),
        "dt": np.array([0.05], np.float32),
        "stage": np.array([stage], np.int32),
    }
    types = {"stage": TensorProto.INT32}
    model = _single_node_model(
        "OmniEdgeAudioDecodeStep",
        [(n, types.get(n, TensorProto.FLOAT), v.shape) for n, v in feeds.items()],
        [("y_next", TensorProto.FLOAT, (144, 80)), ("ks_next", TensorProto.FLOAT, (3, 144, 80))],
        guidance_scale=0.5,
    )
    out = _run_engine(full_trt, model, feeds)
    ref_y, ref_ks = R.ode_step(feeds["y"], feeds["dit_out"], feeds["ks"], feeds["dt"][0], 0.5, stage)
    np.testing.assert_allclose(out["y_next"], ref_y, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(out["ks_next"], ref_ks)
