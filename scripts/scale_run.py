"""One committed scale run: export a checkpoint and record, per export stage, the peak resident memory and
the wall time, then the bundle's bytes on disk; merged into a JSON file under bench/ (one row per model,
target and precision). Run by scripts/scale_runs.sh.

    python scripts/scale_run.py export --model full-3b --target cpu --precision fp32 --out /tmp/s/3b-cpu \
        --json bench/scale-full-3b.json [--calib synthetic] [--no-engines] [--memory-gib 24]
    python scripts/scale_run.py parity --model full-3b --bundle /tmp/s/3b-cpu --tokens 16 --json ...
    python scripts/scale_run.py rss --model full-3b --bundle /tmp/s/3b-cpu --json ...

The stages are the export's own progress descriptions ("exporting thinker_decoder", "verifying
thinker_decoder", ...); a sampler thread reads the RSS of this process and its children every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import sys
import threading
import time
from pathlib import Path

GIB = 1 << 30


def rss_bytes(pid: str = "self") -> int:
    """Resident bytes of a process and its children (the export runs large components in a child)."""
    try:
        total = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * resource.getpagesize()
        tasks = Path(f"/proc/{pid}/task")
        for task in tasks.iterdir():
            for child in (task / "children").read_text().split():
                total += rss_bytes(child)
    except (OSError, ValueError):  # a child that ended while being read
        return 0
    return total


class StageRecorder:
    """A progress factory for export_bundle that notes, per description, the peak RSS and the time spent."""

    def __init__(self):
        self.stages: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self, name: str) -> None:
        # "calibrating: Thinker on request 3/12" -> one stage per pass, not per request
        name = re.sub(r"(:| on| of)? request \d+/\d+$", "", name)
        with self._lock:
            if self.stages and self.stages[-1]["stage"] == name:
                return
            now = time.perf_counter()
            if self.stages:
                self.stages[-1]["wall_s"] = round(now - self.stages[-1].pop("_t0"), 1)
            self.stages.append({"stage": name, "_t0": now, "peak_rss_gib": round(rss_bytes() / GIB, 2)})
        print(f"[{time.strftime('%H:%M:%S')}] {name}  rss {rss_bytes() / GIB:.2f} GiB", file=sys.stderr, flush=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            rss = round(rss_bytes() / GIB, 2)
            with self._lock:
                if self.stages and rss > self.stages[-1]["peak_rss_gib"]:
                    self.stages[-1]["peak_rss_gib"] = rss

    def finish(self) -> list[dict]:
        self._stop.set()
        self.start("done")
        self.stages.pop()
        return self.stages

    @contextlib.contextmanager
    def __call__(self, total: int, description: str):
        recorder = self

        class Bar:
            def update(self, n=1):
                pass

            def set_description(self, text):
                recorder.start(text)

        if not self._sampler.is_alive():
            self._sampler.start()
        self.start(description)
        yield Bar()


def _merge(path: Path, key: dict, row: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    data["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
    }
    rows = [r for r in data["rows"] if any(r.get(k) != v for k, v in key.items())]
    data["rows"] = [*rows, {**key, **row}]
    path.write_text(json.dumps(data, indent=1) + "\n")


def export_run(args) -> None:
    from omni_edge.errors import OmniEdgeError
    from omni_edge.export.pipeline import ExportRequest, export_bundle

    recorder = StageRecorder()
    load_before = os.getloadavg()
    started = time.perf_counter()
    request = ExportRequest(
        model=args.model,
        target=args.target,
        out=Path(args.out),
        precision=args.precision,
        overwrite=True,
        calib=args.calib,
        engines=not args.no_engines,
        memory_gib=args.memory_gib,
        max_seq_len=args.max_seq_len,
        components=tuple(c for c in args.components.split(",") if c),
    )
    key = {"run": "export", "model": args.model, "target": args.target, "precision": args.precision}
    if args.components:
        key["components"] = args.components
    try:
        export_bundle(request, recorder)
    except OmniEdgeError as exc:  # a refusal is a result too: the row says why, with the export's numbers
        _merge(Path(args.json), key, {"command": " ".join(sys.argv), "refused": str(exc), "stages": recorder.finish()})
        print(f"refused: {exc}", file=sys.stderr)
        return
    stages = recorder.finish()
    bundle = Path(args.out)
    row = {
        "command": " ".join(sys.argv),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(max(s["peak_rss_gib"] for s in stages), 2),  # sampled: process and child together
        "peak_rss_gib_self_and_largest_child": [
            round(resource.getrusage(who).ru_maxrss * 1024 / GIB, 2)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ],
        "bundle_bytes": sum(p.stat().st_size for p in bundle.iterdir()),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "stages": stages,
    }
    _merge(Path(args.json), key, row)
    print(json.dumps({**key, **{k: v for k, v in row.items() if k != "stages"}}, indent=1))


def omni_edge_tokens(bundle: str, prompt: str, tokens: int) -> tuple[list[int], list[int]]:
    from omni_edge.runtime import Done, SamplingConfig, Session

    with Session(bundle, threads=os.cpu_count() or 1) as session:
        events = session.generate(prompt, tokens, SamplingConfig(greedy=True))
        result = next(e.result for e in events if isinstance(e, Done))
    return list(result.text_token_ids), list(result.prompt_token_ids)


def parity_run(args) -> None:
    """omni-edge's greedy tokens from the bundle, then transformers' Thinker loaded alone from the shards."""
    import torch

    from omni_edge.export.checkpoint import resolve_model_source
    from omni_edge.export.isolated import run_isolated
    from omni_edge.export.lazy_model import LazyOmniModel, graph_weights, table_weights

    # In a child process: ONNX Runtime keeps the 3B Thinker's 13 GB after the session closes, and the
    # transformers Thinker beside it does not fit a 24 GiB machine (OOM-killed at 24.2 GiB).
    ours, prompt = run_isolated(omni_edge_tokens, args.bundle, args.prompt, args.tokens, what="omni-edge's reply")
    source = resolve_model_source(args.model)
    thinker, tables = graph_weights("thinker"), table_weights("thinker")
    lazy = LazyOmniModel(source.path)
    with lazy.loaded(lambda name: thinker(name) or tables(name)) as model, torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.thinker.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens, do_sample=False
        )
    theirs = out[0, len(prompt) :].tolist()
    row = {
        "command": " ".join(sys.argv),
        "prompt": args.prompt,
        "omni_edge_tokens": ours,
        "transformers_tokens": theirs,
        "identical": ours == theirs,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
    }
    _merge(Path(args.json), {"run": "parity", "model": args.model, "bundle": args.bundle}, row)
    print(json.dumps(row, indent=1))


def rss_run(args) -> None:
    """The loaded bundle's resident memory against its memory plan (scripts/bundle_rss.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bundle_rss import main as bundle_rss

    row = {"command": " ".join(sys.argv), **bundle_rss(args.bundle)}
    _merge(Path(args.json), {"run": "rss", "model": args.model, "bundle": args.bundle}, row)
    print(json.dumps(row, indent=1))


def command_run(args) -> None:
    """A CLI command (omni-run on the bundle): its wall time, exit status and the child's peak RSS."""
    import subprocess

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    row = {
        "command": " ".join(argv),
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),
        "output_tail": output[-400:],
    }
    _merge(Path(args.json), {"run": "command", "model": args.model, "label": args.label}, row)
    print(json.dumps(row, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export")
    export.add_argument("--model", required=True)
    export.add_argument("--target", required=True)
    export.add_argument("--precision", default="fp32")
    export.add_argument("--out", required=True)
    export.add_argument("--json", required=True)
    export.add_argument("--calib")
    export.add_argument("--no-engines", action="store_true")
    export.add_argument("--memory-gib", type=float)
    export.add_argument("--max-seq-len", type=int, default=4096)
    export.add_argument("--components", default="", help="comma-separated; default: every component")
    parity = sub.add_parser("parity")
    parity.add_argument("--model", required=True)
    parity.add_argument("--bundle", required=True)
    parity.add_argument("--json", required=True)
    parity.add_argument("--tokens", type=int, default=16)
    parity.add_argument("--prompt", default="Describe the weather on a sunny day in one sentence.")
    rss = sub.add_parser("rss")
    rss.add_argument("--model", required=True)
    rss.add_argument("--bundle", required=True)
    rss.add_argument("--json", required=True)
    command = sub.add_parser("command")
    command.add_argument("--model", required=True)
    command.add_argument("--label", required=True)
    command.add_argument("--json", required=True)
    command.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    {"export": export_run, "parity": parity_run, "rss": rss_run, "command": command_run}[args.command](args)


if __name__ == "__main__":
    main()
