"""How much memory a bundle needs on its target, worked out before the model is loaded.

Everything comes from the checkpoint's config.json and the headers of its *.safetensors files (an 8-byte
little-endian length, then a JSON table of names, dtypes and shapes); no tensor data is read, so a 7B
checkpoint is planned in milliseconds and refused before minutes of loading.

    weights      parameters per component x bytes per parameter at its precision x graphs holding a copy
                 (one per component: a decoder's one graph answers prefill and decode)
    tables       token-embedding tables the runtime looks up itself (they are not in any graph). They are
                 stored at the checkpoint's precision (bf16 for the released model) and read row by row from
                 the open file, never loaded (runtime/embedding_table.py): what is resident is the rows one
                 context looked up, as the fp32 embeddings they become (max_seq_len rows at most)
    kv           2 (K, V) x layers x kv_heads x head_dim x max_seq_len x itemsize, Thinker and Talker caches
    activations  the larger decoder's prefill at max_seq_len: its largest single intermediate, either
                 attention scores [heads, S, S] fp32 or the MLP's gate and up [2, S, intermediate] fp32,
                 plus the residual stream in and out (2 x [S, hidden] fp32). The graphs compute logits for
                 the last position only, so the [S, vocab] head output never exists.
                 Engines reuse activation memory layer by layer, so one layer's largest tensor (not the sum
                 over layers) sets the peak. The encoders' peak at the largest media the cache takes
                 (runtime/encoder_memory.py) competes with it; DiT and BigVGAN run on far smaller tensors.

Parameters are counted by name prefix, so the plan is exact for weights. A quantized decoder keeps its
output head (lm_head, codec_head: 0.5B parameters in the 7B Thinker) unquantized, so the head is priced at
the target's high precision; norms and biases also stay high precision, under 1% of the parameters, left out.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from omni_edge.components import checkpoint_component, table_component
from omni_edge.components import component as component_record
from omni_edge.errors import ModelSourceError, TargetError
from omni_edge.precision_plan import CALIBRATED
from omni_edge.targets import TARGETS, Target

GIB = 1 << 30
AWQ_GROUP = 128  # int4-awq: one fp16 scale per 128 weights
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}  # KV cache dtypes
BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "fp8": 1.0, "int4-awq": 0.5 + 2 / AWQ_GROUP}
# Weight-only MatMulNBits on a CPU (calibration/weight_only.py): int8 in blocks of 128 with an fp32 scale,
# int4 in blocks of 32 with an fp32 scale and a 4-bit zero point.
WEIGHT_ONLY_BYTES_PER_PARAMETER = {"int8": 1 + 4 / 128, "int4-awq": 0.5 + 4.5 / 32}
_MAX_HEADER = 100 << 20  # safetensors caps its JSON header at 100 MB


@dataclass(frozen=True)
class PartPlan:
    component: str
    precision: str
    parameters: int  # in the component's graphs
    copies: int  # graphs holding those parameters
    weight_bytes: int  # parameters x bytes per parameter x copies (the head at head_precision)
    table_parameters: int = 0
    table_bytes: int = 0  # host-side embedding tables resident at max_seq_len (see _table_resident)
    head_parameters: int = 0  # of `parameters`: the output head
    head_precision: str = ""  # what the head is priced at when it differs from `precision`
    table_file_bytes: int = 0  # those tables on disk, at the precision they are stored in
    table_rows: int = 0  # rows of those tables, and the widest row's width: what the resident bytes scale with
    table_width: int = 0


@dataclass(frozen=True)
class DecoderDims:
    """What the KV cache and the prefill activations of one decoder LLM scale with."""

    name: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    kv_itemsize: int

    def kv_bytes(self, seq: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * seq * self.kv_itemsize

    def activation(self, seq: int) -> tuple[int, str]:
        candidates = [
            (self.heads * seq * seq * 4, f"{self.name} attention scores [{self.heads}, {seq}, {seq}] fp32"),
            (2 * seq * self.intermediate * 4, f"{self.name} MLP [2, {seq}, {self.intermediate}] fp32"),
        ]
        largest, basis = max(candidates)
        return largest + 2 * seq * self.hidden * 4, basis


@dataclass(frozen=True)
class MemoryPlan:
    max_seq_len: int
    parts: tuple[PartPlan, ...]
    decoders: tuple[DecoderDims, ...]
    kv_bytes: dict[str, int] = field(default_factory=dict)
    activation_bytes: int = 0
    activation_basis: str = ""
    # The bundle's encoders' configs (thinker_config's audio_config / vision_config): their activation peak at
    # the largest media the KV cache takes competes with the prefill's (runtime/encoder_memory.py).
    encoder_configs: dict[str, dict] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(p.weight_bytes for p in self.parts)

    @property
    def table_bytes(self) -> int:
        return sum(p.table_bytes for p in self.parts)

    @property
    def table_file_bytes(self) -> int:
        return sum(p.table_file_bytes for p in self.parts)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.table_bytes + sum(self.kv_bytes.values()) + self.activation_bytes

    def at_seq_len(self, seq: int) -> MemoryPlan:
        """The same bundle with another --max-seq-len (weights do not change)."""
        return _with_sequence(replace(self, max_seq_len=seq))

    def summary(self) -> str:
        return (
            f"{_gib(self.total_bytes)} in all: weights {_gib(self.weight_bytes)}, tables {_gib(self.table_bytes)}, "
            f"KV cache {_gib(sum(self.kv_bytes.values()))} at --max-seq-len {self.max_seq_len}, "
            f"activations {_gib(self.activation_bytes)} ({self.activation_basis})"
        )

    @staticmethod
    def from_dict(data: dict) -> MemoryPlan:
        return MemoryPlan(
            **{
                **data,
                "parts": tuple(PartPlan(**p) for p in data["parts"]),
                "decoders": tuple(DecoderDims(**d) for d in data["decoders"]),
            }
        )


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 or n == 0 else f"{n / (1 << 20):.1f} MiB"


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "data_offsets"} from one file's header, reading nothing else."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= size <= _MAX_HEADER:
            raise ModelSourceError(f"{path} is not a safetensors file (bad header length); re-download the checkpoint")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelSourceError(f"{path} has a corrupt safetensors header; re-download the checkpoint") from None
    header.pop("__metadata__", None)
    return header


@dataclass(frozen=True)
class ParameterCounts:
    """Per component: parameters in its graphs, of those in its output head, and in host-side tables."""

    graphs: dict[str, int]
    heads: dict[str, int]
    tables: dict[str, int]
    # Per component, each table's (rows, width, bytes per value as the bundle stores it: bf16 stays bf16, the
    # rest is written in fp32)
    table_shapes: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)


def count_parameters(checkpoint: Path) -> ParameterCounts:
    """Parameter counts by component over every *.safetensors header."""
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"{checkpoint} has no *.safetensors files to plan memory from")
    counts = ParameterCounts({}, {}, {})
    for path in files:
        for name, info in read_safetensors_header(path).items():
            count = math.prod(int(d) for d in info["shape"])
            table = table_component(name)
            if table is not None:
                counts.tables[table.name] = counts.tables.get(table.name, 0) + count
                rows = int(info["shape"][0]) if info["shape"] else 1
                itemsize = 2 if info["dtype"] == "BF16" else 4
                counts.table_shapes.setdefault(table.name, []).append((rows, count // max(rows, 1), itemsize))
                continue
            owner = checkpoint_component(name)
            key = owner.name if owner else "other"
            counts.graphs[key] = counts.graphs.get(key, 0) + count
            if owner and owner.head_prefixes and name.startswith(owner.head_prefixes):
                counts.heads[key] = counts.heads.get(key, 0) + count
    return counts


def _decoder(name: str, config: dict, kv_itemsize: int) -> DecoderDims:
    heads = config["num_attention_heads"]
    return DecoderDims(
        name=name,
        layers=config["num_hidden_layers"],
        heads=heads,
        kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        vocab=config["vocab_size"],
        # The runtime's cache follows the graphs' KV inputs: the target's KV dtype at every precision
        # (quantization keeps graph I/O types, so reduced bundles are fed like fp32 ones).
        kv_itemsize=kv_itemsize,
    )


def _part(
    component: str,
    precision: str,
    counts: ParameterCounts,
    high_precision: str,
    weight_only: bool,
    quantized_heads: bool,
) -> PartPlan:
    params, head = counts.graphs.get(component, 0), counts.heads.get(component, 0)
    head_precision = high_precision if precision in CALIBRATED and head and not quantized_heads else precision
    sizes = {**BYTES_PER_PARAMETER, **(WEIGHT_ONLY_BYTES_PER_PARAMETER if weight_only else {})}
    per_graph = math.ceil((params - head) * sizes[precision]) + math.ceil(head * sizes[head_precision])
    copies = len(component_record(component).graphs) if component != "other" else 1
    tables = counts.tables.get(component, 0)
    shapes = counts.table_shapes.get(component, [])
    return PartPlan(
        component,
        precision,
        params,
        copies,
        per_graph * copies,
        tables,
        0,  # set by _with_sequence
        head,
        head_precision if head_precision != precision else "",
        table_file_bytes=sum(rows * width * itemsize for rows, width, itemsize in shapes),
        table_rows=sum(rows for rows, _, _ in shapes),
        table_width=max((width for _, width, _ in shapes), default=0),
    )


def _table_resident(part: PartPlan, seq: int) -> int:
    """A table's resident bytes at --max-seq-len `seq`: the rows one context looked up, in fp32 (the table
    itself stays in its file). A plan recorded while tables were loaded whole (no table_rows) keeps its
    bytes."""
    if not part.table_rows:
        return part.table_bytes
    return min(part.table_rows, seq) * part.table_width * 4


def plan_memory(
    checkpoint: Path,
    precisions: dict[str, str],
    max_seq_len: int,
    components: tuple[str, ...] | list[str],
    high_precision: str = "fp16",
    kv_dtype: str = "float32",
    weight_only: bool = False,
    quantized_heads: bool = False,
) -> MemoryPlan:
    """The plan for a bundle of `components` (names as in components.COMPONENTS) at the given precisions;
    `high_precision` is what a quantized component's unquantized head runs in (Target.high_precision),
    `kv_dtype` the decoders' KV cache (Target.kv_dtype), `weight_only` and `quantized_heads` how the target
    quantizes (Target.weight_only, Target.quantized_heads)."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    counts = count_parameters(checkpoint)
    parts = [
        _part(component, precisions.get(component, "fp32"), counts, high_precision, weight_only, quantized_heads)
        for component in [*components, *(["other"] if counts.graphs.get("other") else [])]
    ]
    kv_itemsize = ITEMSIZE[kv_dtype]
    decoders = [_decoder("thinker", config["thinker_config"]["text_config"], kv_itemsize)]
    if "talker" in components and "talker_config" in config:
        decoders.append(_decoder("talker", config["talker_config"], kv_itemsize))
    thinker = config["thinker_config"]
    encoders = {key: thinker[key] for name, key in _ENCODER_CONFIGS.items() if name in components and key in thinker}
    return _with_sequence(MemoryPlan(max_seq_len, tuple(parts), tuple(decoders), encoder_configs=encoders))


_ENCODER_CONFIGS = {"audio_encoder": "audio_config", "vision_encoder": "vision_config"}


def _with_sequence(plan: MemoryPlan) -> MemoryPlan:
    seq = plan.max_seq_len
    from omni_edge.runtime.encoder_memory import encoder_activation_plan

    activations = [d.activation(seq) for d in plan.decoders]
    # The encoders run before the prefill, never at the same time: the larger peak is the bundle's.
    activations += [(b, f"{what} fp32") for what, b in encoder_activation_plan(plan.encoder_configs, seq).items()]
    activation, basis = max(activations) if activations else (0, "no decoder")
    return replace(
        plan,
        parts=tuple(replace(p, table_bytes=_table_resident(p, seq)) for p in plan.parts),
        kv_bytes={d.name: d.kv_bytes(seq) for d in plan.decoders},
        activation_bytes=activation,
        activation_basis=basis,
    )


def largest_fitting_seq_len(plan: MemoryPlan, budget_bytes: float, floor: int = 16) -> int | None:
    """The largest power-of-two --max-seq-len (>= floor) below the plan's that fits, or None."""
    seq = 1 << (max(plan.max_seq_len - 1, 1)).bit_length() - 1
    while seq >= floor:
        if seq < plan.max_seq_len and plan.at_seq_len(seq).total_bytes <= budget_bytes:
            return seq
        seq //= 2
    return None


def check_fits(plan: MemoryPlan, target: Target, budget_gib: float | None = None) -> None:
    """Raise TargetError, with the numbers and what to do, when the plan exceeds the target's memory."""
    budget = budget_gib if budget_gib is not None else target.memory_gib
    if plan.total_bytes <= budget * GIB:
        return
    weights = ", ".join(
        f"{p.component} {_gib(p.weight_bytes)} ({_count(p.parameters)} params {p.precision}"
        + (f", head {_count(p.head_parameters)} {p.head_precision}" if p.head_precision else "")
        + (f" x {p.copies} graphs" if p.copies > 1 else "")
        + ")"
        for p in plan.parts
        if p.weight_bytes
    )
    kv = ", ".join(f"{name} {_gib(b)}" for name, b in plan.kv_bytes.items())
    fixes = []
    seq = largest_fitting_seq_len(plan, budget * GIB)
    if seq is not None:
        fixes.append(f"--max-seq-len {seq} (or less)")
    elif plan.activation_bytes + sum(plan.kv_bytes.values()) > 0:
        fixes.append("a smaller --max-seq-len will not be enough on its own")
    lower = [p for p in target.precisions if p != "fp32"]
    if lower:
        fixes.append(f"a lower --precision ({', '.join(lower)})")
    fixes.append("fewer --components")
    bigger = [t for t in TARGETS.values() if t.memory_gib * GIB >= plan.total_bytes and t.name != target.name]
    if bigger:
        fixes.append("a bigger target (" + ", ".join(f"{t.name} {t.memory_gib:g} GiB" for t in bigger) + ")")
    if target.tensorrt is None:
        fixes.append("--memory-gib N if this machine has more memory than the default budget")
    raise TargetError(
        f"the bundle does not fit {target.name}: it needs {_gib(plan.total_bytes)} and the target has "
        f"{budget:g} GiB (weights {_gib(plan.weight_bytes)}: {weights}; embedding tables {_gib(plan.table_bytes)}; "
        f"KV cache {_gib(sum(plan.kv_bytes.values()))} ({kv}) at --max-seq-len {plan.max_seq_len}; "
        f"activations {_gib(plan.activation_bytes)}, {plan.activation_basis}). Try: " + "; ".join(fixes)
    )
