"""ONNX Runtime session options for a graph whose weights are fp16, run on the CPU: each weight held once.

ONNX Runtime's CPU kernels have no fp16 MatMul, so it runs an fp16 graph's MatMuls in fp32 behind Casts it
inserts. At ORT_ENABLE_ALL it then folds every weight's Cast into an fp32 initializer: a second copy of each
weight at twice its bytes, next to the fp16 bytes while the session opens (measured on the medium fp16
Thinker: 0.87 GiB of weights held as 1.79 GiB, 2.95 at the session's opening; a 7B Thinker's 14 GB would be 28).
Up to ORT_ENABLE_EXTENDED the Casts stay in the graph and run at run time. In the default order ONNX Runtime
ran them all first, so every fp32 copy was alive at once (2.37 GiB for a chain of 0.75 GiB of fp16 weights);
the priority-based order runs each Cast just before its MatMul and frees its output after it (0.87 GiB).

The price is the casts, paid on every run: on the medium Thinker, one thread, a 128-token prefill took 1.7 s
against 0.65 folded and a decode step 0.24 s against 0.10, outputs within 6.4e-6 of the folded graph's. fp16
graphs are for GPU targets; on the CPU they are the export's own checks (verification, calibration replay,
statistics, end-to-end answers), which must fit beside everything else the export holds.
"""

from __future__ import annotations

from pathlib import Path

from omni_edge.onnx_external import FLOAT16, QUANTIZED, tensor_data_types


def half_weights(model: bytes) -> bool:
    """Whether the serialized graph holds fp16 weights that are not quantized ones' scales.

    A quantized graph (int4/int8/fp8 weights behind DequantizeLinear) keeps ORT_ENABLE_ALL: at
    ORT_ENABLE_EXTENDED ONNX Runtime 1.32 mis-computed the int4-awq Thinker with fp16 scales (logits 2.59 off
    the ORT_ENABLE_ALL answer, whose |max| is 5.0; 0.038 unoptimized), and ALL folds only what it does not pack
    into MatMulNBits: the fp16 head kept beside the int4 blocks."""
    types = tensor_data_types(model)
    return FLOAT16 in types and not types & QUANTIZED


def cast_at_run_time(options, model: bytes) -> None:
    """Set `options` (an onnxruntime.SessionOptions) so that a graph of fp16 weights keeps them once, cast one
    at a time as they are used; other graphs keep the options they have."""
    import onnxruntime as ort

    if not half_weights(model):
        return
    extended = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if int(options.graph_optimization_level) > int(extended):  # the layout levels and ALL fold the Casts
        options.graph_optimization_level = extended
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    # ONNX Runtime 1.32's buffer reuse plan is wrong in that order for some graphs: the fp16 DiT's Cast of a
    # Tile output was handed a buffer planned for a value of another shape ("Shape mismatch attempting to re-use
    # buffer {1,96,16} != {2,96,16}"). Without planned reuse the arena still recycles what each op frees.
    options.enable_mem_reuse = False


def cpu_session(path: Path, options=None):
    """An onnxruntime CPU session of the graph file at `path` (its weights beside it), with `options` (default:
    ONNX Runtime's) and its fp16 weights cast as they are used (cast_at_run_time)."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    cast_at_run_time(options, path.read_bytes())
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
