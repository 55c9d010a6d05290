"""TensorRT engines from a bundle's verified ONNX graphs: strongly typed, one optimization profile each.

    check_can_build(target)                       # milliseconds; before any export work
    records, info = build_engines(bundle_dir, records, target)

Each graph becomes `<component>.engine` next to it, built from a strongly typed network (precision comes
from the graph itself: casts and Q/DQ, never builder flags) with one optimization profile whose min/opt/max
per dynamic axis come from the spec's ranges recorded in the ComponentRecord. With full TensorRT all engines
share one timing cache, saved in the bundle so a rebuild on the same TensorRT and GPU is faster; TensorRT-RTX
does not time tactics at build time (its timing-cache calls are deprecated no-ops since 1.2), so its bundles
have none.

TensorRT-RTX builds on a CPU-only machine for the target's compute capability; full TensorRT builds for the
GPU it runs on, so Jetson and Hopper bundles are exported on that device.

Compatibility: only APIs present in TensorRT 10.3 (JetPack 6) and kept in 11.x are used:
Builder.create_network(1 << STRONGLY_TYPED) (the flag is ignored, not removed, in 11.x, where strong typing
is the only mode), OnnxParser.parse_from_file, create_optimization_profile / set_shape,
add_optimization_profile, create_timing_cache / set_timing_cache / ITimingCache.serialize (full TensorRT),
clear_flag(BuilderFlag.TF32) and build_serialized_network. No precision flags (FP16/INT8/FP8/... are removed
in 11.x), no calibrators, no `build_engine_with_config`, no weight streaming or refit.
`num_compute_capabilities` / `set_compute_capability` are TensorRT-RTX only and used only with it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from omni_edge import naming, trt_compat
from omni_edge.bundle import ComponentRecord, TensorRTInfo, sha256_file
from omni_edge.errors import OmniEdgeError, TargetError
from omni_edge.targets import Target

_SCALED_AXIS = re.compile(r"^(?:(\d+)\*)?([A-Za-z_][\w]*)(?:\*(\d+))?$")


class EngineBuildError(OmniEdgeError):
    """TensorRT could not parse or build a graph of the bundle."""


def check_can_build(target: Target) -> None:
    """Everything about the TensorRT side of a request that can be checked without a model."""
    flavour = target.tensorrt
    if flavour == "tensorrt-rtx":
        if not trt_compat.is_installed(flavour):
            raise TargetError(
                f"target {target.name} builds TensorRT-RTX engines and tensorrt-rtx is not installed: "
                "pip install 'omni-edge[trt]' (it builds on a machine without a GPU too)"
            )
        trt = _import(flavour)
        if trt_compat.rtx_compute_capability(trt, target.engine_target()[1]) is None:
            raise TargetError(
                f"TensorRT-RTX {trt.__version__} cannot build for compute capability "
                f"{target.compute_capability} ({target.name}); upgrade tensorrt-rtx"
            )
        return
    if flavour != "tensorrt":
        return
    if not trt_compat.is_installed(flavour):
        raise TargetError(
            f"target {target.name} needs full TensorRT, which is not installed here. Full TensorRT builds "
            f"engines for the GPU it runs on, so export on the {target.description} itself: on Jetson use "
            "JetPack's TensorRT (apt install python3-libnvinfer, and a venv with --system-site-packages), on an "
            "x86 GPU machine `pip install tensorrt`"
        )
    from omni_edge.runtime.cuda import compute_capability, cuda_device_status

    ok, device = cuda_device_status()
    if not ok:
        raise TargetError(
            f"target {target.name} builds engines on its own GPU (compute capability "
            f"{target.compute_capability}), and this machine has none: {device}"
        )
    here = ".".join(map(str, compute_capability()))
    if here != target.compute_capability:
        raise TargetError(
            f"this GPU ({device}) has compute capability {here}, but {target.name} engines must be built on a "
            f"{target.compute_capability} GPU; run omni-export on the {target.description}"
        )
    trt = _import(flavour)
    if trt_compat.version_tuple(trt.__version__)[:2] < trt_compat.OLDEST_FULL_TENSORRT:
        raise TargetError(
            f"TensorRT {trt.__version__} is older than 10.3, the oldest omni-edge builds with; "
            "upgrade TensorRT (JetPack 6 or newer)"
        )


def _import(flavour: str):
    try:
        return trt_compat.import_flavour(flavour)
    except ImportError as exc:
        raise TargetError(f"{exc}; reinstall it (pip install 'omni-edge[trt]', or JetPack's TensorRT)") from None


def axis_value(axis, ranges: dict[str, list[int]], which: int, where: str) -> int:
    """One dimension of a recorded shape at min (0), opt (1) or max (2): ints stay, "seq" and "2*codes" scale."""
    if isinstance(axis, int):
        return axis
    match = _SCALED_AXIS.match(str(axis).replace(" ", ""))
    if not match or match.group(2) not in ranges:
        raise EngineBuildError(f"{where}: no profile range for axis {axis!r}; the component's spec must give one")
    factor = int(match.group(1) or 1) * int(match.group(3) or 1)
    return factor * int(ranges[match.group(2)][which])


def profile_shapes(record: ComponentRecord) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """input name -> (min, opt, max) shapes, for the inputs that have a dynamic axis."""
    ranges = record.profile or {}
    shapes = {}
    for tensor in record.inputs:
        if all(isinstance(d, int) for d in tensor.shape):
            continue
        where = f"{record.name} input {tensor.name}"
        low, opt, high = ([axis_value(d, ranges, k, where) for d in tensor.shape] for k in range(3))
        shapes[tensor.name] = (low, opt, high)
    return shapes


def _logger(trt):
    """Keeps TensorRT's errors for our messages; its warnings (int64 inputs, ...) are expected and dropped."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return Logger()


def _network(trt, builder, logger, path: Path, allowed_files: dict[str, str] | None = None):
    """The parsed network of one graph. Its external-data locations are checked first (plain files of the
    bundle, listed in `allowed_files` when given), and the parser gets the bytes that were checked."""
    from omni_edge.bundle_trust import check_external_locations, read_verified

    model = read_verified(path.parent, allowed_files, path.name, "graph")
    check_external_locations(path.parent, path.name, model, allowed_files)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 11 is always strongly typed and only keeps the flag as a no-op
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # `path` only tells the parser where the (checked) external-data files are.
    if not parser.parse(model, str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "; ".join(logger.errors)
        raise EngineBuildError(f"TensorRT could not parse {path.name}: {errors}")
    return network, parser


def build_engine(
    trt,
    builder,
    logger,
    cache,
    record: ComponentRecord,
    onnx_path: Path,
    target: Target,
    allowed_files: dict[str, str] | None = None,
) -> bytes:
    # The parser owns the weights it read, so it is kept alive until the build is done.
    network, _parser = _network(trt, builder, logger, onnx_path, allowed_files)
    config = builder.create_builder_config()
    if cache is not None:
        config.set_timing_cache(cache, False)
    if hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and rounds fp32 matmul inputs to 10 mantissa bits; an fp32 graph was verified
        # against PyTorch at 1e-4, which TF32 does not keep. Reduced precision comes from the graph instead.
        config.clear_flag(trt.BuilderFlag.TF32)
    if target.tensorrt == "tensorrt-rtx":
        capability = trt_compat.rtx_compute_capability(trt, target.engine_target()[1])
        config.num_compute_capabilities = 1
        config.set_compute_capability(capability, 0)
    shapes = profile_shapes(record)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    logger.errors.clear()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build {record.name}: {'; '.join(logger.errors) or 'no details'}")
    return bytes(serialized)


def build_engines(
    bundle_dir: Path,
    records: dict[str, ComponentRecord],
    target: Target,
    bar=None,
    allowed_files: dict[str, str] | None = None,
) -> tuple[dict[str, ComponentRecord], TensorRTInfo]:
    """Build `<name>.engine` for every record's graph in bundle_dir; returns updated records and the build info.

    `allowed_files` (a manifest's files -> sha256): graphs and their external data must be among them and
    match; None (the export's own staging) checks only that they are plain files of bundle_dir."""
    bundle_dir = Path(bundle_dir)
    check_can_build(target)
    flavour, compute_capability = target.engine_target()
    trt = _import(flavour)
    if target.tensorrt == "tensorrt":
        from omni_edge.kernels.plugins import register_plugins

        # The ONNX parser turns OmniEdgeTMRoPE nodes into plugin layers through the registry, so the Python
        # plugin creators must be registered before parsing, as before deserializing.
        register_plugins(trt)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    cache_path = bundle_dir / naming.TIMING_CACHE_FILE
    cache = None
    if target.tensorrt == "tensorrt":
        config = builder.create_builder_config()
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    out = {}
    for name, record in records.items():
        if bar is not None:
            bar.set_description(f"building {name}.engine")
        data = build_engine(trt, builder, logger, cache, record, bundle_dir / record.file, target, allowed_files)
        engine_path = bundle_dir / f"{name}.engine"
        engine_path.write_bytes(data)
        out[name] = replace(record, engine_file=engine_path.name, engine_sha256=sha256_file(engine_path))
        if bar is not None:
            bar.update()
    if cache is not None:
        cache_path.write_bytes(bytes(cache.serialize()))
    return out, TensorRTInfo(
        flavour=flavour,
        version=trt.__version__,
        compute_capability=compute_capability,
        built_on=_builder_device(target),
        timing_cache=cache_path.name if cache is not None else None,
    )


def _builder_device(target: Target) -> str:
    if target.tensorrt == "tensorrt-rtx":
        return "cpu"  # ahead-of-time: no GPU is used, kernels are compiled on the user's GPU at load
    from omni_edge.runtime.cuda import cuda_device_status

    return cuda_device_status()[1]


def check_bundle_can_build(bundle_dir: Path):
    """(manifest, target) of a bundle whose engines this machine can build; refused with the reason otherwise."""
    from omni_edge.bundle import load_manifest
    from omni_edge.targets import get_target

    manifest = load_manifest(bundle_dir)
    target = get_target(manifest.target)
    if target.tensorrt is None:
        raise TargetError(
            f"bundle {bundle_dir} is for target {target.name}, which runs ONNX Runtime and has no engines to build"
        )
    check_can_build(target)
    return manifest, target


def build_bundle_engines(bundle_dir: Path, manifest, target: Target, bar=None) -> Path:
    """Build the engines of a bundle exported with --no-engines, on the device it is for.

    `manifest` and `target` come from check_bundle_can_build, which loads and verifies the bundle once.
    The manifest is rewritten last; a failed build removes every engine it may have touched."""
    from omni_edge.bundle import write_manifest

    bundle_dir = Path(bundle_dir)
    try:
        records, tensorrt = build_engines(bundle_dir, manifest.components, target, bar, manifest.files)
        files = dict(manifest.files)
        for record in records.values():
            files[record.engine_file] = record.engine_sha256
        if tensorrt.timing_cache:
            files[tensorrt.timing_cache] = sha256_file(bundle_dir / tensorrt.timing_cache)
        write_manifest(bundle_dir, replace(manifest, components=records, tensorrt=tensorrt, files=files))
    except BaseException:
        # Engines are rebuilt in place, so after a failure none is trusted: the bundle goes back to graphs only,
        # consistent with its manifest, and the next run builds them all again.
        for name in manifest.components:
            (bundle_dir / f"{name}.engine").unlink(missing_ok=True)
        if manifest.tensorrt is not None:
            stale = {r.engine_file for r in manifest.components.values()} | {manifest.tensorrt.timing_cache}
            write_manifest(
                bundle_dir,
                replace(
                    manifest,
                    tensorrt=None,
                    files={f: h for f, h in manifest.files.items() if f not in stale},
                    components={
                        n: replace(r, engine_file=None, engine_sha256=None) for n, r in manifest.components.items()
                    },
                ),
            )
        raise
    return bundle_dir
