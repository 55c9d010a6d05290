"""Graphs exported straight in fp16 (precision_plan.source_precision): a GPU target's Thinker headed for fp16 or
int4-awq, whose fp32 weights (28 GB at 7B) would not fit beside what the export, the calibration replay and the
int4 clip statistics hold.

The weights are read from the checkpoint as fp16 (lazy_model), the module is traced and answers its check inputs
in fp16, and the graph keeps the fp32 inputs and outputs of every other graph (the KV cache is already in the
target's fp16), as ModelOpt's fp16 cast keeps them: a Cast after each fp32 input and before each output, so the
runtime feeds the same arrays whatever the source precision. transformers computes the rotary angles in fp32 and
its norms' variance in fp32 inside an fp16 module, so the traced graph does too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omni_edge import naming
from omni_edge.export.spec import ComponentSpec

# fp16 graph against fp16 eager: both round every op to fp16 (11 significant bits), in different orders, and the
# differences grow with depth. Measured at most 4.2e-3 on logits and hidden states of unit RMS (tiny and medium
# Thinkers, 2 layers), 1.8e-2 over the `deep` preset's 36 layers.
HALF_ATOL = 5e-2
HALF_RTOL = 2e-2
HALF_SUFFIX = "_fp16"


def spec_for_source(spec: ComponentSpec, source: str) -> ComponentSpec:
    """`spec` as exported from a `source` ("fp32" or "fp16") module: in fp16, traced and checked with its fp32
    inputs in fp16, at fp16 tolerances."""
    if source == "fp32":
        return spec
    example, checks = spec.example_inputs, spec.check_inputs
    return replace(
        spec,
        example_inputs=lambda model: half_inputs(example(model)),
        check_inputs=lambda model: [half_inputs(inputs) for inputs in checks(model)],
        atol=HALF_ATOL,
        rtol=HALF_RTOL,
    )


def float_inputs(spec: ComponentSpec, model) -> set[str]:
    """The inputs `spec` feeds in fp32, which an fp16 graph keeps."""
    import torch

    return {name for name, x in zip(spec.input_names, spec.example_inputs(model)) if x.dtype == torch.float32}


def half_inputs(inputs: tuple) -> tuple:
    import torch

    return tuple(x.to(torch.float16) if x.dtype == torch.float32 else x for x in inputs)


def keep_float_io(path: Path, float_inputs: set[str]) -> None:
    """Rewrite the graph file (not its weights) so that `float_inputs` are fp32 inputs cast to fp16 inside, and
    every fp16 output but the KV cache's is cast to fp32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # the weights stay in their data file, untouched
    graph = model.graph
    if any(a.type == onnx.AttributeProto.GRAPH for n in graph.node for a in n.attribute):
        raise ValueError(f"{path.name}: a graph with subgraphs is not exported in fp16")
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    renames: dict[str, str] = {}
    head, tail = [], []
    for value in graph.input:
        if value.name in float_inputs and value.type.tensor_type.elem_type == half:
            inner = renames[value.name] = value.name + HALF_SUFFIX
            value.type.tensor_type.elem_type = single
            head.append(onnx.helper.make_node("Cast", [value.name], [inner], name=f"{inner}_cast", to=half))
    for value in graph.output:
        if value.type.tensor_type.elem_type == half and not naming.is_present(value.name):
            inner = renames[value.name] = value.name + HALF_SUFFIX
            value.type.tensor_type.elem_type = single
            tail.append(onnx.helper.make_node("Cast", [inner], [value.name], name=f"{value.name}_cast", to=single))
    for node in graph.node:
        for slots in (node.input, node.output):
            for i, name in enumerate(slots):
                if name in renames:
                    slots[i] = renames[name]
    for info in graph.value_info:
        if info.name in renames:
            info.name = renames[info.name]
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
