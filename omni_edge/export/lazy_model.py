"""The model the exporter works on: transformers' own Qwen2.5-Omni classes with every parameter on the meta
device (no memory), and one component's weights at a time read from the checkpoint's shards.

The full 3B is 20.8 GiB in fp32 and the 7B about 40 GiB: loading it whole is what made a 24 GiB machine
unable to export. Here the skeleton costs nothing, `loaded(...)` brings in the parameters of one component
(its graph weights, or its host-side table) converted to fp32 (fp16 for a half-source graph), and puts the
meta tensors back when the block ends. The exporter runs each block in a child process (isolated.py), since libraries keep references
to traced weights; the export's peak is then the largest component, not the model. Buffers (rotary frequencies,
the vocoder's filters) are not in a checkpoint; they are computed on CPU when the skeleton is built, as
transformers does, and are small.

Checkpoint names are the hub layout (thinker.model.layers..., thinker.audio_tower..., written by
transformers 4.52); transformers 5 holds the Thinker's parts one level deeper (thinker.model.language_model,
thinker.model.audio_tower). `hub_name` maps one to the other; either layout on disk is accepted, and the
skeleton is checked against the shards (every parameter found, every shape equal) before anything loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from omni_edge.components import checkpoint_component, table_component
from omni_edge.errors import ModelSourceError
from omni_edge.export.shards import CheckpointShards

# transformers 5's module paths -> the released checkpoints' tensor names (longest first).
_HUB_RENAMES = (
    ("thinker.model.audio_tower.", "thinker.audio_tower."),
    ("thinker.model.visual.", "thinker.visual."),
    ("thinker.model.language_model.", "thinker.model."),
)


def hub_name(key: str) -> str:
    for module_path, stored in _HUB_RENAMES:
        if key.startswith(module_path):
            return stored + key[len(module_path) :]
    return key


def graph_weights(component: str) -> Callable[[str], bool]:
    """Selects the parameters in `component`'s graphs (by hub name): its prefixes minus its host tables."""

    def select(name: str) -> bool:
        owner = checkpoint_component(name)
        return owner is not None and owner.name == component and table_component(name) is None

    return select


def table_weights(component: str) -> Callable[[str], bool]:
    """Selects `component`'s host-side embedding tables."""

    def select(name: str) -> bool:
        table = table_component(name)
        return table is not None and table.name == component

    return select


@dataclass
class _Slot:
    """One parameter object of the skeleton and every (module, attribute) that holds it (tied weights share)."""

    names: list[str]  # module paths, transformers 5 layout
    owners: list[tuple[object, str]]
    stored: str  # the checkpoint tensor that fills it


class LazyOmniModel:
    """`model` is the skeleton; `loaded(select)` fills the selected parameters for the block's duration."""

    def __init__(self, path: Path, shards: CheckpointShards | None = None):
        self.path = Path(path)
        self.shards = shards or CheckpointShards(self.path)
        self.model = _skeleton(self.path)
        self._slots = self._match()

    def _match(self) -> list[_Slot]:
        by_object: dict[int, _Slot] = {}
        for module_path, module in self.model.named_modules():
            for attribute, param in module._parameters.items():
                if param is None:
                    continue
                name = f"{module_path}.{attribute}" if module_path else attribute
                slot = by_object.setdefault(id(param), _Slot([], [], ""))
                slot.names.append(name)
                slot.owners.append((module, attribute))
        for slot in by_object.values():
            stored = next(
                (n for name in slot.names for n in (hub_name(name), name) if n in self.shards.tensors),
                None,
            )
            if stored is None:
                raise ModelSourceError(
                    f"{self.path} has no tensor {hub_name(slot.names[0])} (config.json says the model has it); "
                    "the checkpoint is incomplete or for another model: re-download it"
                )
            param = slot.owners[0][0]._parameters[slot.owners[0][1]]  # type: ignore[attr-defined]
            shape = self.shards.tensors[stored].shape
            if tuple(param.shape) != shape:
                raise ModelSourceError(
                    f"{self.path}: tensor {stored} has shape {list(shape)} but config.json implies "
                    f"{list(param.shape)}; the config and the weights are from different checkpoints"
                )
            slot.stored = stored
        return list(by_object.values())

    def parameter_count(self, select: Callable[[str], bool]) -> int:
        import math

        return sum(math.prod(self.shards.tensors[s.stored].shape) for s in self._slots if select(hub_name(s.names[0])))

    @contextlib.contextmanager
    def loaded(self, select: Callable[[str], bool], dtype: str = "float32") -> Iterator[object]:
        """The skeleton with the selected parameters (chosen by hub name) read from the shards in `dtype`."""
        import torch
        from torch import nn

        into = getattr(torch, dtype)

        chosen = [s for s in self._slots if select(hub_name(s.names[0]))]
        saved = []
        try:
            for slot in chosen:
                module, attribute = slot.owners[0]
                saved.append((slot, module._parameters[attribute]))  # type: ignore[attr-defined]
                value = nn.Parameter(self.shards.get(slot.stored).to(into), requires_grad=False)
                for owner, name in slot.owners:
                    owner._parameters[name] = value  # type: ignore[attr-defined]
            yield self.model
        finally:
            for slot, meta in saved:
                for owner, name in slot.owners:
                    owner._parameters[name] = meta  # type: ignore[attr-defined]
            saved.clear()


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters are created on the meta device, buffers on CPU (the rotary tables and filters transformers
    computes at init, which no checkpoint holds). torch.empty's pages are never touched before the move, so
    even the 1.2 GB embedding costs nothing."""
    import torch
    from torch import nn

    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_on_meta(config):
    """transformers' model for `config` with its parameters on the meta device."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    with _parameters_on_meta():
        return Qwen2_5OmniForConditionalGeneration(config)


def _skeleton(path: Path):
    from transformers import Qwen2_5OmniConfig

    from omni_edge.export.checkpoint import check_config, check_speakers, quiet_transformers

    check_config(path)
    check_speakers(path)
    with quiet_transformers():
        model = build_on_meta(Qwen2_5OmniConfig.from_pretrained(path))
    if getattr(model, "has_talker", False):
        model.load_speakers(path / "spk_dict.pt")  # torch.load(weights_only=True), checked above
    return model.eval()
