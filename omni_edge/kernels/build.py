"""Compile the CUDA kernels with nvcc: one cubin per architecture plus one PTX for newer GPUs.

    python -m omni_edge.kernels.build --out DIR

Outputs land in DIR as `{kernel}.sm_{arch}.cubin` and `{kernel}.compute_{arch}.ptx`, with `build.json`
recording nvcc's version and a hash of each source. A second build with the same sources, flags and
nvcc reuses the files (the cache key is in the file's directory name), so tests and CI compile once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from omni_edge.kernels.errors import KernelError

KERNEL_DIR = Path(__file__).resolve().parent
KERNELS = ("tmrope", "audio_decode")
# Orin (JetPack 6), Ada, Hopper, Blackwell datacenter, Thor (JetPack 7), Blackwell RTX.
ARCHITECTURES = ("87", "89", "90", "100", "110", "120")
# PTX for the oldest listed architecture: the driver JIT-compiles it on any newer GPU we have no cubin for.
PTX_ARCHITECTURE = "87"
# -O3 and accurate math on purpose: no --use_fast_math, the kernels must match the numpy references.
NVCC_FLAGS = ("-O3", "-std=c++17", "-Xptxas=-warn-spills")


@dataclass(frozen=True)
class Artifact:
    kernel: str
    target: str  # "sm_87" (cubin) or "compute_87" (ptx)
    path: str


@dataclass(frozen=True)
class BuildResult:
    out_dir: str
    nvcc_version: str
    artifacts: tuple[Artifact, ...]
    compiled: int  # how many nvcc runs this call made (0 when everything came from the cache)

    def path(self, kernel: str, target: str) -> Path:
        for artifact in self.artifacts:
            if artifact.kernel == kernel and artifact.target == target:
                return Path(artifact.path)
        raise KernelError(
            f"no {target} build of {kernel} in {self.out_dir}; rebuild with "
            "`python -m omni_edge.kernels.build --out DIR`"
        )


def find_nvcc() -> str:
    nvcc = shutil.which("nvcc") or next(
        (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc",) if p.exists()), None
    )
    if nvcc is None:
        raise KernelError(
            "nvcc not found: install the CUDA toolkit (12.8+ for sm_100/sm_120, 13.0+ for "
            "sm_110) and put nvcc on PATH or set CUDA_HOME"
        )
    return nvcc


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else out.strip().splitlines()[-1]


def source_path(kernel: str) -> Path:
    return KERNEL_DIR / f"{kernel}.cu"


def _cache_key(version: str, architectures: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in (version, *architectures, PTX_ARCHITECTURE, *NVCC_FLAGS):
        digest.update(part.encode())
    for kernel in KERNELS:
        digest.update(source_path(kernel).read_bytes())
    return digest.hexdigest()[:16]


def _jobs(out_dir: Path, architectures: tuple[str, ...]) -> list[tuple[Artifact, list[str]]]:
    jobs = []
    for kernel in KERNELS:
        src = str(source_path(kernel))
        for arch in architectures:
            path = out_dir / f"{kernel}.sm_{arch}.cubin"
            jobs.append(
                (
                    Artifact(kernel, f"sm_{arch}", str(path)),
                    ["-cubin", f"-arch=sm_{arch}", *NVCC_FLAGS, "-o", str(path), src],
                )
            )
        path = out_dir / f"{kernel}.compute_{PTX_ARCHITECTURE}.ptx"
        jobs.append(
            (
                Artifact(kernel, f"compute_{PTX_ARCHITECTURE}", str(path)),
                ["-ptx", f"-arch=compute_{PTX_ARCHITECTURE}", *NVCC_FLAGS, "-o", str(path), src],
            )
        )
    return jobs


def _compile(nvcc: str, args: list[str]) -> None:
    proc = subprocess.run([nvcc, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(f"nvcc failed ({' '.join(args[:2])} {args[-1]}):\n{proc.stderr.strip()}")


def build(out: str | Path, architectures: tuple[str, ...] = ARCHITECTURES, jobs: int | None = None) -> BuildResult:
    """Compile every kernel for every architecture into `out/<cache key>/`, reusing an earlier build."""
    nvcc = find_nvcc()
    version = nvcc_version(nvcc)
    out_dir = Path(out) / _cache_key(version, tuple(architectures))
    todo = _jobs(out_dir, tuple(architectures))
    artifacts = tuple(artifact for artifact, _ in todo)
    manifest = out_dir / "build.json"
    if manifest.exists() and all(Path(a.path).exists() for a in artifacts):
        return BuildResult(str(out_dir), version, artifacts, compiled=0)
    # Compile into a temporary sibling and rename, so a killed build never leaves a half cache.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir.parent))
    staged = [(a, [staging / Path(a.path).name if x == a.path else x for x in args]) for a, args in todo]
    workers = jobs or max(1, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # nvcc runs as a subprocess: threads suffice
            list(pool.map(lambda job: _compile(nvcc, [str(x) for x in job[1]]), staged))
        info = {
            "nvcc_version": version,
            "flags": list(NVCC_FLAGS),
            "architectures": list(architectures),
            "ptx": f"compute_{PTX_ARCHITECTURE}",
            "sources": {k: hashlib.sha256(source_path(k).read_bytes()).hexdigest() for k in KERNELS},
            "artifacts": [asdict(a) | {"path": Path(a.path).name} for a in artifacts],
        }
        (staging / "build.json").write_text(json.dumps(info, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(str(out_dir), version, artifacts, compiled=len(todo))


def default_cache_dir() -> Path:
    return Path(os.environ.get("OMNI_EDGE_KERNEL_CACHE", Path.home() / ".cache" / "omni_edge" / "kernels"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(default_cache_dir()), help="cache directory for cubin/PTX files")
    parser.add_argument("--arch", action="append", help="architecture like 87 or 120 (default: all listed)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes (default: CPU count)")
    args = parser.parse_args(argv)
    try:
        result = build(args.out, tuple(args.arch) if args.arch else ARCHITECTURES, args.jobs)
    except KernelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{len(result.artifacts)} kernel images (nvcc {result.nvcc_version}, {result.compiled} compiled) "
        f"in {result.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
