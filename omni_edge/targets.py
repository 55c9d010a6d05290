"""Deployment target presets: what hardware a bundle is for and what it may run there."""

from __future__ import annotations

from dataclasses import dataclass

from omni_edge.components import COMPONENTS
from omni_edge.errors import TargetError

PRECISIONS = ("fp32", "fp16", "int8", "fp8", "int4-awq")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    compute_capability: str | None  # "8.7" for Orin; None for CPU
    memory_gib: float  # what the bundle may use: unified memory on Jetson, VRAM on dGPU
    precisions: tuple[str, ...]
    tensorrt: str | None  # None (ONNX Runtime), "tensorrt" (JetPack / full TRT), "tensorrt-rtx"
    default_precision: dict[str, str]

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.tensorrt is None else "tensorrt"

    def engine_target(self) -> tuple[str, str]:
        """(TensorRT flavour, compute capability) of a GPU target; TargetError for an ONNX Runtime one."""
        if self.tensorrt is None or self.compute_capability is None:
            raise TargetError(f"target {self.name} runs ONNX Runtime; it has no TensorRT engines to build")
        return self.tensorrt, self.compute_capability

    @property
    def kv_dtype(self) -> str:
        """The decoders' KV cache: fp16 under TensorRT (half the memory and bandwidth; attention still runs in
        the graph's precision), fp32 under ONNX Runtime on a CPU (its fp16 kernels are few and slow)."""
        return "float32" if self.tensorrt is None else "float16"

    @property
    def group_query_attention(self) -> bool:
        """Decoder attention as ONNX Runtime's GroupQueryAttention over a KV buffer that the runtime binds as both
        past and present, so a step appends in place instead of concatenating the whole past, expanding it to all
        heads and transposing it (export/gqa.py), under ONNX Runtime on a CPU: a medium Thinker decode step's
        attention took 2.0 / 5.1 / 18.3 ms at context 128 / 512 / 2048 in standard ops, 0.25 / 0.71 / 3.1 ms so
        (2 layers, one thread; bench/cpu-medium-attention.json). TensorRT parses the op only into a plugin it does
        not ship (TensorRT-RTX 1.7: "failed to load GroupQueryAttention plugin"), so the GPU targets keep the
        standard-op attention, which it maps to its own layers."""
        return self.tensorrt is None

    @property
    def weight_only(self) -> bool:
        """int8 and int4-awq as weight-only MatMulNBits under ONNX Runtime on a CPU (its kernels read the packed
        weights; a W8A8 Q/DQ MatMul runs DequantizeLinear + fp32 MatMul every step, slower than fp32: measured),
        ModelOpt's explicit Q/DQ under TensorRT (which fuses it into its int8/int4 kernels)."""
        return self.tensorrt is None

    @property
    def quantized_heads(self) -> bool:
        """Whether a quantized component's output heads (lm_head, codec head) are quantized with it. On a CPU they
        are: at 3B widths the fp32 lm_head was 119 of the 142 ms of an int4 decode step, and 4-bit moved the
        logits' cosine to fp32 only from 0.962 to 0.958 (measured). Under TensorRT they stay in fp16, as
        ModelOpt's LLM recipes keep lm_head (not measured on a GPU here)."""
        return self.tensorrt is None

    @property
    def high_precision(self) -> str:
        """What ops left unquantized (output heads, attention matmuls) run in: fp16 under TensorRT, fp32 under
        ONNX Runtime on a CPU (its fp16 kernels are few and slow)."""
        return "fp32" if self.tensorrt is None else "fp16"


def _defaults(thinker: str, talker: str, encoder: str, token2wav: str) -> dict[str, str]:
    """Per component, from the precision of its role (components.ROLES)."""
    by_role = {"thinker": thinker, "talker": talker, "encoder": encoder, "token2wav": token2wav}
    return {c.name: by_role[c.role] for c in COMPONENTS}


# cpu `auto`: weight-only int8 (MatMulNBits, round to nearest: no calibration data) wherever it measured faster
# than fp32 at per-graph cosine >= 0.9995 to it, BigVGAN in fp32. Medium preset (3B widths), one thread, medians
# of 3 interleaved repeats on this 2-core machine under load 3-4 (bench/cpu-medium-auto-graphs.json), accuracy
# on the synthetic set's held-out feeds (calibration/reports/medium-cpu-auto.json):
#   Thinker  decode at context 128 / 512 191 -> 62 / 215 -> 68 ms (3.1x), prefill 128 / 512 1.73x / 1.36x; cos 0.99949
#   Talker   decode 21.2 -> 5.5 / 25.1 -> 11.7 ms, prefill 128 / 512 1.33x / 1.18x;                      cos 0.99971
#   audio encoder 2 s block 102 -> 75 ms; vision encoder 448x448 image 1414 -> 1140 ms;       cos 0.99988 / 0.99974
#   DiT window evaluation 263 -> 221 ms;                                                                cos 0.99983
#   BigVGAN: convolutions only, so its int8 is ModelOpt's calibrated Q/DQ, at cosine 0.902 (waveform rel.err 0.43
#   end to end, against 0.027 with BigVGAN in fp32): it stays fp32.
# End to end against the fp32 bundle (random weights, nearly flat logits: one changed logit flips a greedy token):
# text tokens agree 64.6%, codec tokens 38.0%, waveform SNR 31.5 dB.
CPU_AUTO = {**_defaults("int8", "int8", "int8", "fp32"), "dit": "int8"}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        # ONNX Runtime's CPU kernels run 8- and 4-bit MatMulNBits weights; its fp16/fp8 paths are emulated.
        Target(
            "cpu",
            "any machine, ONNX Runtime CPU",
            None,
            16.0,
            ("fp32", "int8", "int4-awq"),
            None,
            CPU_AUTO,
        ),
        # Orin (sm_87) has no FP8 tensor cores; JetPack 6 ships TensorRT 10.3.
        Target(
            "jetson-orin",
            "Jetson AGX Orin 64GB / 32GB, JetPack 6",
            "8.7",
            28.0,
            ("fp32", "fp16", "int8", "int4-awq"),
            "tensorrt",
            _defaults("int4-awq", "int8", "int8", "fp16"),
        ),
        Target(
            "jetson-orin-nano",
            "Jetson Orin Nano 8GB, JetPack 6",
            "8.7",
            6.0,
            ("fp32", "fp16", "int8", "int4-awq"),
            "tensorrt",
            _defaults("int4-awq", "int4-awq", "int8", "fp16"),
        ),
        Target(
            "jetson-thor",
            "Jetson AGX Thor, JetPack 7",
            "11.0",
            100.0,
            PRECISIONS,
            "tensorrt",
            _defaults("fp8", "fp8", "fp8", "fp16"),
        ),
        Target(
            "rtx-ada",
            "GeForce / RTX 40xx (Ada)",
            "8.9",
            12.0,
            PRECISIONS,
            "tensorrt-rtx",
            _defaults("int4-awq", "fp8", "fp8", "fp16"),
        ),
        Target(
            "rtx-blackwell",
            "GeForce / RTX 50xx (Blackwell)",
            "12.0",
            12.0,
            PRECISIONS,
            "tensorrt-rtx",
            _defaults("int4-awq", "fp8", "fp8", "fp16"),
        ),
        Target("hopper", "H100 / H200", "9.0", 70.0, PRECISIONS, "tensorrt", _defaults("fp8", "fp8", "fp8", "fp16")),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}") from None
