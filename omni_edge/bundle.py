"""The bundle on disk: manifest.json schema, atomic writing, and validation on load.

A bundle is a directory of graph/engine files plus manifest.json. The manifest is written last, so a
directory without one is never a complete bundle; every file it lists carries a sha256 that is checked
when the bundle is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omni_edge.errors import BundleError
from omni_edge.memory_plan import ITEMSIZE, MemoryPlan
from omni_edge.naming import MANIFEST_FILE
from omni_edge.quantization_report import QuantizationReport

FORMAT_VERSION = 2  # 2: one decoder graph per decoder (thinker_decoder, talker_decoder) for prefill and decode


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list  # ints and axis names
    dtype: str


@dataclass(frozen=True)
class ComponentRecord:
    name: str
    file: str
    sha256: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    atol: float
    rtol: float
    measured_max_abs_error: float  # worst output difference vs PyTorch seen at export-time verification
    # axis name -> [min, opt, max] the runtime may feed: the TensorRT optimization profile, from the spec
    profile: dict[str, list[int]] | None = None
    engine_file: str | None = None  # "<name>.engine" in TensorRT bundles
    engine_sha256: str | None = None
    # worst output difference vs transformers' own module forward (spec.reference) at export; None: not checked
    reference_max_abs_error: float | None = None
    # Decoder graphs: True when the present.* outputs are the whole cache (GroupQueryAttention), so the runtime
    # binds past and present to one max_seq_len buffer that the graph appends to in place; False: they hold
    # the new tokens alone.
    shared_kv_buffer: bool = False


@dataclass(frozen=True)
class TensorRTInfo:
    """What built a bundle's engines; an engine only loads in the same TensorRT on the same kind of GPU."""

    flavour: str  # "tensorrt" (full, JetPack) or "tensorrt-rtx"
    version: str
    compute_capability: str  # of the GPU the engines are for, e.g. "8.9"
    built_on: str  # the GPU that built them, or "cpu" for a TensorRT-RTX ahead-of-time build
    timing_cache: str | None = None  # full TensorRT: file in the bundle, reused to rebuild faster


@dataclass(frozen=True)
class PluginChoice:
    """What the export did about TensorRT plugins for one bundle (export.plugin_stage)."""

    enabled: bool
    reason: str  # why: the target's capability or the user's --plugins choice
    graphs: dict[str, dict]  # graph name -> RewriteReport.to_manifest() of each rewritten graph

    def to_manifest(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KVCacheGeometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_seq_len: int
    dtype: str = "float32"

    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class ThinkerInfo:
    hidden_size: int
    vocab_size: int
    eos_token_ids: list[int]
    embedding_file: str


@dataclass(frozen=True)
class MediaInfo:
    """What the runtime needs to turn audio, images and video into Thinker tokens and TMRoPE ids."""

    audio_token_id: int
    image_token_id: int
    video_token_id: int
    audio_start_token_id: int
    audio_end_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    position_id_per_seconds: int
    seconds_per_chunk: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int
    audio_block_frames: int = 200  # mel frames per audio_encoder block: 2 * audio_config.n_window


@dataclass(frozen=True)
class TalkerInfo:
    """Codec-LM facts the runtime needs to build the dual-track input and stop generation."""

    kv_cache: KVCacheGeometry
    codec_embedding_file: str  # [vocab, thinker_hidden]: the Talker's embed_tokens, summed before the projection
    vocab_size: int
    codec_bos_token_id: int
    codec_eos_token_id: int
    codec_pad_token_id: int
    codec_mask_token_id: int
    text_bos_token_id: int
    text_eos_token_id: int
    text_pad_token_id: int
    stop_token_ids: list[int]  # pad or eos ends the utterance, as in the reference generate
    speakers: dict[str, int]  # speaker -> its text-bos token id
    speakers_file: str  # safetensors: "<name>.cond" x-vector, "<name>.ref_mel" reference mel


@dataclass(frozen=True)
class Token2WavInfo:
    mel_dim: int
    repeats: int  # mel frames per codec token
    block_size: int  # DiT attention block, in mel frames: the streaming windows are whole blocks
    # dit_config.num_embeds: the codec table has num_embeds + 1 rows (transformers' DiTCodecEmbedding), so
    # codes 0..num_embeds are looked up; codes above it are mapped to 0 before the DiT
    num_code_embeddings: int
    samples_per_frame: int  # BigVGAN upsampling
    sample_rate: int
    # one per look-backward / look-ahead layer of the DiT: the streaming window's context, in blocks
    look_back_blocks: int = 2
    look_ahead_blocks: int = 1


@dataclass(frozen=True)
class Manifest:
    format_version: int
    omni_edge_version: str
    source_model: str
    source_sha256: str
    target: str
    backend: str  # "onnxruntime" or "tensorrt"
    tools: dict[str, str | None]
    kv_cache: KVCacheGeometry
    thinker: ThinkerInfo
    media: MediaInfo
    tokenizer_file: str
    components: dict[str, ComponentRecord]
    files: dict[str, str] = field(default_factory=dict)  # every payload file -> sha256
    talker: TalkerInfo | None = None  # None: a text-only bundle
    token2wav: Token2WavInfo | None = None
    tensorrt: TensorRTInfo | None = None  # None: ONNX Runtime bundle
    memory_plan: MemoryPlan | None = None  # None: bundles written before plans were recorded
    quantization: QuantizationReport | None = None  # None: every graph is fp32
    plugins: PluginChoice | None = None  # None: bundles written before the plugin stage existed

    @property
    def speech(self) -> tuple[TalkerInfo, Token2WavInfo]:
        """The Talker and token2wav facts of a bundle that speaks; BundleError for a text-only one."""
        if self.talker is None or self.token2wav is None:
            raise BundleError(
                "this bundle has no speech components (talker, dit, bigvgan); re-export it without --components, "
                "or with --components talker,dit,bigvgan"
            )
        return self.talker, self.token2wav

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @staticmethod
    def from_dict(data: dict) -> Manifest:
        comps = {
            name: ComponentRecord(
                **{
                    **rec,
                    "inputs": [TensorSpec(**t) for t in rec["inputs"]],
                    "outputs": [TensorSpec(**t) for t in rec["outputs"]],
                }
            )
            for name, rec in data["components"].items()
        }
        return Manifest(
            **{
                **data,
                "kv_cache": KVCacheGeometry(**data["kv_cache"]),
                "thinker": ThinkerInfo(**data["thinker"]),
                "media": MediaInfo(**data["media"]),
                "talker": _talker_info(data.get("talker")),
                "token2wav": Token2WavInfo(**data["token2wav"]) if data.get("token2wav") else None,
                "tensorrt": TensorRTInfo(**data["tensorrt"]) if data.get("tensorrt") else None,
                "memory_plan": MemoryPlan.from_dict(data["memory_plan"]) if data.get("memory_plan") else None,
                "quantization": (
                    QuantizationReport.from_dict(data["quantization"]) if data.get("quantization") else None
                ),
                "plugins": PluginChoice(**data["plugins"]) if data.get("plugins") else None,
                "components": comps,
            }
        )


def _talker_info(data: dict | None) -> TalkerInfo | None:
    if not data:
        return None
    return TalkerInfo(**{**data, "kv_cache": KVCacheGeometry(**data["kv_cache"])})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json through a temp file and a rename, so readers see all of it or none."""
    tmp = bundle_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.to_json())
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, bundle_dir / MANIFEST_FILE)


def load_manifest(bundle_dir: Path, verify_files: bool = True, manifest_sha256: str | None = None) -> Manifest:
    """The bundle's manifest, once its schema holds; with verify_files, every file it lists is confined to the
    bundle and matches its sha256, and every graph, engine and table the runtime opens is among them.

    `manifest_sha256`: the hash of manifest.json kept apart from the bundle (bundle_trust.manifest_sha256);
    the bytes parsed must have it, which is what makes the manifest itself trusted."""
    from omni_edge.bundle_trust import check_manifest

    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory {bundle_dir} does not exist; create one with `omni-export`")
    manifest_path = bundle_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(
            f"{bundle_dir} has no {MANIFEST_FILE}: it is not a bundle or its export did not finish; "
            "run `omni-export` again"
        )
    raw = manifest_path.read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256.lower():
        raise BundleError(
            f"{manifest_path} does not have the sha256 it was pinned to ({manifest_sha256[:16]}...): the manifest "
            "was changed; get the bundle again from where you pinned it"
        )
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        manifest = Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError, UnicodeDecodeError too
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)[:200]
        raise BundleError(
            f"{manifest_path} is not a valid omni-edge manifest ({reason}); re-export the bundle"
        ) from None
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format {manifest.format_version} is not supported by this omni-edge "
            f"(expects {FORMAT_VERSION}); re-export it with this version"
        )
    check_manifest(manifest, verify_files)
    if verify_files:
        verify_bundle_files(bundle_dir, manifest)
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a manifest holds")


def verify_bundle_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Every listed file is a plain file of the bundle with its sha256. Engines hash again what they open
    (bundle_trust.read_verified), so a file changed after this check is still refused."""
    from omni_edge.bundle_trust import bundle_file

    for rel, expected in manifest.files.items():
        path = bundle_file(bundle_dir, rel)
        if not path.is_file():
            raise BundleError(f"bundle file {rel} is missing from {bundle_dir}; re-export the bundle")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"bundle file {rel} does not match its sha256 in the manifest (modified or corrupted); "
                "re-export the bundle"
            )
