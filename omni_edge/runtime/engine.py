"""The engine interface: a named-tensor function. ONNX Runtime now; TensorRT implements the same surface.

Like Polygraphy's runners, an engine only knows how to run one graph; caching, sampling and
orchestration live elsewhere in the runtime. `open_engine` is where a bundle's file becomes an engine: the
bytes are hashed as they are read and handed to the backend as bytes, so a file changed after the bundle
was verified is refused rather than run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from omni_edge.components import graph
from omni_edge.errors import BundleError, InputError

if TYPE_CHECKING:
    import mmap

    from omni_edge.bundle import Manifest


class Engine(Protocol):
    name: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_threads(threads: int, flag: str = "--threads") -> int:
    """Threads for ONNX Runtime's intra-op pool: 0 (one per physical core, `default_threads`) up to this
    machine's logical CPU count. More threads than cores only adds contention; 100000 made a run take minutes
    before it failed."""
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= cores:
        raise InputError(
            f"{flag} {threads} is out of range: use 0 (one per physical core) or 1 to {cores}, the CPUs of this "
            "machine (more threads than cores only slows ONNX Runtime down)"
        )
    return threads


def default_threads() -> int:
    """One intra-op thread per physical core this process may run on. A core's second hardware thread shares
    its vector units and its caches, so a memory-bound decode step gains nothing from it and the extra thread
    only waits at every barrier."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    return physical_cores(_cpu_topology(), affinity(0) if affinity else set(range(os.cpu_count() or 1)))


def physical_cores(topology: dict[int, tuple[str, str]], allowed: set[int]) -> int:
    """Distinct (package, core) pairs among the `allowed` CPUs; a CPU missing from `topology` (sysfs not
    readable) counts as a core of its own."""
    return max(1, len({topology.get(cpu, ("cpu", str(cpu))) for cpu in allowed}))


def _cpu_topology(root: Path = Path("/sys/devices/system/cpu")) -> dict[int, tuple[str, str]]:
    """CPU number -> (physical_package_id, core_id), from Linux's sysfs; empty where it is not there."""
    topology = {}
    for cpu in root.glob("cpu[0-9]*"):
        try:
            ids = [(cpu / "topology" / f).read_text().strip() for f in ("physical_package_id", "core_id")]
        except OSError:
            continue
        topology[int(cpu.name[3:])] = (ids[0], ids[1])
    return topology


# How the intra-op pool's threads wait for work (ONNX Runtime session config entries). ORT's default ("on") lets
# them spin after a run has ended; a spoken reply alternates the Thinker's, the Talker's and token2wav's sessions,
# each with a pool of its own, so an idle session's spinning threads take the cores the running one needs.
# Measured (bench/cpu-medium-spinning.json: medium int8 bundle, context 128, medians of 5 interleaved repeats, this
# 2-core machine at load 5): one thread, the three modes are alike (57-58 ms a Thinker step; a pool of one has no
# threads to spin); two threads, a Thinker step takes 81 / 92 / 64 ms with on / within-run / off, a Thinker step
# plus a Talker step 144 / 110 / 68 ms. Not spinning is fastest wherever the cores are shared; a dedicated,
# idle machine may gain from "within-run" (spinning only inside a run), not measured here.
SPINNING = {
    "on": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"},
    "within-run": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
    "off": {"session.intra_op.allow_spinning": "0", "session.force_spinning_stop": "1"},
}
DEFAULT_SPINNING = "off"


class OrtEngine:
    """One ONNX graph in an onnxruntime InferenceSession (CPU by default).

    `model` is a path, or the graph's bytes; `external_data` maps each external-data file the graph names
    to its bytes, so ONNX Runtime reads nothing from disk on the graph's behalf. `threads` 0: one per physical
    core (default_threads). `spinning`: a SPINNING mode, an argument so the benchmark that chose the default
    can be rerun (scripts/bench_spinning.py)."""

    def __init__(
        self,
        name: str,
        model: Path | bytes,
        providers: list[str] | None = None,
        threads: int = 0,
        external_data: dict[str, bytes | mmap.mmap] | None = None,
        label: str | None = None,
        spinning: str = DEFAULT_SPINNING,
    ):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("onnxruntime is not installed; pip install 'omni-edge[ort]'") from None
        from omni_edge.ort_options import cast_at_run_time

        check_threads(threads, "threads")
        label = label or (model.name if isinstance(model, Path) else name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        for key, value in SPINNING[spinning].items():
            options.add_session_config_entry(key, value)
        options.log_severity_level = 3
        cast_at_run_time(options, model if isinstance(model, bytes) else model.read_bytes())
        if external_data:
            # ONNX Runtime copies what it needs while the session is created, so the buffers may go afterwards.
            names = list(external_data)
            buffers = [external_data[n] for n in names]
            options.add_external_initializers_from_files_in_memory(names, buffers, [len(b) for b in buffers])
        try:
            self._session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                sess_options=options,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"cannot load {label} into ONNX Runtime ({exc}); re-export the bundle") from None
        self.name = name
        self.input_names = [arg.name for arg in self._session.get_inputs()]
        self.output_names = [arg.name for arg in self._session.get_outputs()]
        # ints for fixed sizes, names (or None) for dynamic axes
        self.shapes = {arg.name: list(arg.shape) for arg in [*self._session.get_inputs(), *self._session.get_outputs()]}

    @property
    def session(self):
        """The onnxruntime InferenceSession: for IOBinding (a KV buffer bound as past and present, kv_cache.py)."""
        return self._session

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))


def open_engine(bundle_dir: Path, manifest: Manifest, name: str, threads: int = 0, verify: bool = True) -> Engine:
    """The engine of component `name`, from bytes that match the manifest (verify=False: from the files as
    they are, for the export's own staging bundles). Its inputs and outputs must be the manifest's."""
    from omni_edge.bundle_trust import MappedFile, check_external_locations, read_verified

    bundle_dir = Path(bundle_dir)
    record = manifest.components.get(name)
    if record is None:
        raise BundleError(f"bundle {bundle_dir} has no {name} component; re-export it with that component")
    files = manifest.files if verify else None
    if manifest.backend == "onnxruntime":
        model = read_verified(bundle_dir, files, record.file, f"{name} graph")
        locations = check_external_locations(bundle_dir, record.file, model, files)
        if not verify:
            # The export's own files, just written: ONNX Runtime maps their weights itself instead of copying
            # them from our mapping, so a 7B fp16 Thinker (14 GB) is never held twice while its session opens.
            return _checked(OrtEngine(name, bundle_dir / record.file, threads=threads), record, manifest)
        mapped = []
        try:
            for location in locations:
                mapped.append(MappedFile(bundle_dir, files, location, f"external data of {record.file}"))
            data = {m.rel: m.data for m in mapped}
            engine: Engine = OrtEngine(name, model, threads=threads, external_data=data, label=record.file)
            for m in mapped:  # ONNX Runtime has copied the weights: they must be the bytes that were hashed
                m.check_unchanged()
        finally:
            for m in mapped:
                m.close()
    elif manifest.backend == "tensorrt":
        from omni_edge.runtime.trt_engine import TrtEngine

        if not record.engine_file:
            raise BundleError(
                f"bundle {bundle_dir} has no TensorRT engines yet (exported with --no-engines); "
                f"build them on this device: omni-build-engines {bundle_dir}"
            )
        # Streaming windows repeat their shapes: the component table marks them for CUDA graph replay.
        engine = TrtEngine(
            name,
            bundle_dir / record.engine_file,
            manifest.tensorrt,
            bundle_dir,
            manifest.target,
            cuda_graph=graph(name).cuda_graph,
            data=read_verified(bundle_dir, files, record.engine_file, f"{name} engine"),
        )
    else:
        raise BundleError(
            f"bundle {bundle_dir} is for backend {manifest.backend}, which this runtime cannot load yet; "
            "export a --target cpu bundle for ONNX Runtime"
        )
    return _checked(engine, record, manifest)


def _checked(engine: Engine, record, manifest: Manifest) -> Engine:
    from omni_edge.bundle_trust import check_engine_io

    # TensorRT drops network inputs a graph never reads, so an engine may have fewer inputs than its graph.
    check_engine_io(
        record,
        engine.input_names,
        engine.output_names,
        getattr(engine, "shapes", None),
        exact=manifest.backend == "onnxruntime",
    )
    return engine
