"""Peer benchmark on CPU: omni-edge's Thinker against llama.cpp and onnxruntime-genai on the same weights.

    python scripts/peers_bench.py run --work DIR --peers-python PY --out bench/peers-cpu.json [--quick]
    python scripts/peers_bench.py table bench/peers-cpu.json          # the markdown of bench/README.md

`run` measures every (runtime, precision) in its own child process, one after another in a fixed order
(omni-edge, llama.cpp, onnxruntime-genai per precision) for each thread count, and repeats that whole round:
A B C A B C, so a burst of load from another job lands on all runtimes alike. Each child loads its model,
warms up, then for every context C: prefill C tokens from an empty cache (timed, first token picked
greedily) and decode K more tokens greedily (timed), so prefill_tok_s = C / prefill time and decode_tok_s =
K / decode time at context C. Every runtime gets the same token ids. Each thread count's A B C block holds the
big-memory lock (the machine is shared; other big jobs wait between blocks). Every run is also appended to
WORK/runs.jsonl as it ends. The json keeps every run (with the load average before and after) and
the medians as `rows`.

omni-edge is measured through its public Session API (generate_from_ids, greedy): TurnResult.ttft_ms is the
prefill (embedding lookup, Thinker forward, first token) and decode_tokens_per_s the K steps after it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRECISIONS = (("fp32", "f32"), ("int8", "q8_0"), ("int4", "q4_0"))  # omni-edge/genai name, GGUF name
RUNTIMES = ("omni-edge", "llama.cpp", "onnxruntime-genai")


def token_ids(n: int) -> list[int]:
    """The same seeded ids for every runtime (inside the BPE-trained range of the preset tokenizer)."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(0).integers(1, 600, n)]


# -- children: one runtime, one model, one thread count -----------------------------------------------------
class OmniEdge:
    def __init__(self, bundle: str, threads: int):
        from omni_edge.runtime import SamplingConfig, Session

        self.session = Session(bundle, threads=threads)
        self.greedy = SamplingConfig(greedy=True)

    def run(self, ids: list[int], k: int) -> tuple[float, float, list[int]]:
        from omni_edge.runtime import Done

        self.session.reset()
        events = self.session.generate_from_ids(ids, max_new_tokens=k + 1, sampling=self.greedy)
        result = next(e.result for e in events if isinstance(e, Done))
        steps = len(result.text_token_ids) - 1
        decode_s = steps / result.decode_tokens_per_s if result.decode_tokens_per_s else float("nan")
        return result.ttft_ms / 1000, decode_s, result.text_token_ids

    def weights(self, bundle: str) -> tuple[int, int]:
        files = [p for p in Path(bundle).iterdir() if p.name not in ("manifest.json", "tokenizer.json")]
        embed = Path(bundle) / self.session.manifest.thinker.embedding_file
        return sum(p.stat().st_size for p in files), embed.stat().st_size


class LlamaCpp:
    def __init__(self, gguf: str, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(gguf, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def _next(self) -> int:
        import numpy as np

        # Llama.eval keeps no logits unless logits_all; the context's buffer holds the last token's.
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return int(np.argmax(logits))

    def run(self, ids: list[int], k: int) -> tuple[float, float, list[int]]:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        tokens = [self._next()]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(k):
            self.llm.eval([tokens[-1]])
            tokens.append(self._next())
        return prefill, time.perf_counter() - start, tokens

    def weights(self, gguf: str) -> tuple[int, int]:
        from gguf import GGUFReader

        embed = next(t for t in GGUFReader(gguf).tensors if t.name == "token_embd.weight")
        return Path(gguf).stat().st_size, int(embed.n_bytes)


class GenAI:
    def __init__(self, folder: str, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(folder)
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)

    def run(self, ids: list[int], k: int) -> tuple[float, float, list[int]]:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + k + 2, do_sample=False)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)  # runs the prefill
        generator.generate_next_token()  # picks from the prefill's logits (no forward)
        tokens = [int(generator.get_next_tokens()[0])]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(k):
            generator.generate_next_token()  # one forward of the last token, then the pick
            tokens.append(int(generator.get_next_tokens()[0]))
        return prefill, time.perf_counter() - start, tokens

    def weights(self, folder: str) -> tuple[int, int]:
        import onnx

        model = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)
        gathers = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
        sizes = {1: 4, 10: 2, 16: 2, 3: 1, 2: 1, 22: 1, 21: 1}
        embed = 0
        for init in model.graph.initializer:
            if init.name in gathers and len(init.dims) == 2 and "embed" in init.name:
                count = init.dims[0] * init.dims[1]
                embed += count * sizes.get(init.data_type, 4) // (2 if init.data_type in (21, 22) else 1)
        files = [p for p in Path(folder).iterdir() if p.name.startswith("model.onnx")]
        return sum(p.stat().st_size for p in files), embed


RUNNERS = {"omni-edge": OmniEdge, "llama.cpp": LlamaCpp, "onnxruntime-genai": GenAI}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("omni-edge", "onnxruntime", "onnxruntime-genai", "llama_cpp_python", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def child(args) -> None:
    start = time.perf_counter()
    runner = RUNNERS[args.runtime](args.model, args.threads)
    load_s = time.perf_counter() - start
    contexts = [int(c) for c in args.contexts.split(",")]
    ids = token_ids(max(contexts))
    runner.run(ids[:16], 2)  # warm-up: arenas, first-run kernels
    measured = []
    for context in contexts:
        prefill_s, decode_s, tokens = runner.run(ids[:context], args.decode_tokens)
        measured.append(
            {
                "context": context,
                "prefill_s": prefill_s,
                "decode_s": decode_s,
                "decode_steps": len(tokens) - 1,
                "prefill_tok_s": context / prefill_s,
                "decode_tok_s": (len(tokens) - 1) / decode_s,
                "tokens": tokens[:8],
            }
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    weights, embed = runner.weights(args.model)
    out = {"load_s": load_s, "peak_rss_mib": peak, "weights_bytes": weights, "embedding_bytes": embed}
    print(json.dumps({**out, "measured": measured, "versions": versions()}))


# -- the parent: the matrix, interleaved and repeated -----------------------------------------------------
def copy_bandwidth_gbs(mib: int = 512, tries: int = 5) -> float:
    """Best of `tries` numpy copies of a `mib` MiB array, counting bytes read plus bytes written."""
    import numpy as np

    src = np.ones(mib << 18, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def cpu_description() -> dict:
    info: dict[str, str] = {}
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile", "hypervisor")
    return {
        "cpu": info.get("model name"),
        "cpu_flags": [f for f in wanted if f in flags],
        "logical_cpus": os.cpu_count(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def configs(work: Path, peers_python: str) -> tuple[list[tuple], dict]:
    """(runtime, precision, model, python) in run order, and the missing ones with their reasons."""
    present, missing = [], {}
    for precision, gguf_name in PRECISIONS:
        omni, failed = work / "omni" / precision, work / "omni" / f"{precision}.failed"
        candidates = [
            ("omni-edge", omni, sys.executable, omni / "manifest.json"),
            ("llama.cpp", work / "gguf" / f"{gguf_name}.gguf", peers_python, work / "gguf" / f"{gguf_name}.gguf"),
            ("onnxruntime-genai", work / "genai" / precision, peers_python, work / "genai" / precision / "model.onnx"),
        ]
        for runtime, model, python, marker in candidates:
            if marker.exists():
                present.append((runtime, precision, str(model), python))
            else:
                reason = failed.read_text().strip() if runtime == "omni-edge" and failed.exists() else "not built"
                missing[f"{runtime} {precision}"] = reason
    return present, missing


def run_child(runtime: str, precision: str, model: str, python: str, threads: int, args) -> dict:
    command = [python, __file__, "child", "--runtime", runtime, "--model", model, "--threads", str(threads)]
    command += ["--contexts", args.contexts, "--decode-tokens", str(args.decode_tokens)]
    before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout)
    wall = time.perf_counter() - start
    record = {"runtime": runtime, "precision": precision, "threads": threads, "wall_s": round(wall, 1)}
    record |= {"load_before": before, "load_after": os.getloadavg()}
    if done.returncode != 0:
        return record | {"error": (done.stderr or done.stdout).strip().splitlines()[-3:]}
    return record | json.loads(done.stdout.strip().splitlines()[-1])


def block(args, present: list[tuple], thread_count: int, repeat: int, log: Path) -> list[dict]:
    """One thread count's runtimes back to back, holding the big-memory lock for the whole block: the
    shared machine's other big jobs wait between blocks, never inside the A B C of one comparison."""
    records = []
    with open(args.lock, "w") as handle:
        waited = time.perf_counter()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = round(time.perf_counter() - waited, 1)
        for runtime, precision, model, python in present:
            record = run_child(runtime, precision, model, python, thread_count, args)
            record |= {"repeat": repeat, "block_lock_wait_s": waited}
            records.append(record)
            with log.open("a") as out:  # every run as it ends, so an interrupted benchmark keeps its data
                out.write(json.dumps(record) + "\n")
            brief = [round(m["decode_tok_s"], 1) for m in record.get("measured", [])] or record.get("error")
            print(f"[{repeat}] {runtime} {precision} t{thread_count}: decode {brief}", file=sys.stderr)
    return records


def summarise(runs: list[dict], bandwidth_gbs: float) -> list[dict]:
    rows = []
    keys = sorted({(r["runtime"], r["precision"], r["threads"]) for r in runs if "measured" in r}, key=str)
    for runtime, precision, threads in keys:
        group = [r for r in runs if (r["runtime"], r["precision"], r["threads"]) == (runtime, precision, threads)]
        group = [r for r in group if "measured" in r]
        for index, context in enumerate(m["context"] for m in group[0]["measured"]):
            points = [r["measured"][index] for r in group]
            per_token = group[0]["weights_bytes"] - group[0]["embedding_bytes"]  # one embedding row per token
            row = {"runtime": runtime, "precision": precision, "threads": threads, "context": context}
            row["prefill_tok_s"] = round(statistics.median(p["prefill_tok_s"] for p in points), 2)
            row["decode_tok_s"] = round(statistics.median(p["decode_tok_s"] for p in points), 2)
            row["peak_rss_mib"] = round(statistics.median(r["peak_rss_mib"] for r in group))
            row["weights_mib"] = round(group[0]["weights_bytes"] / 2**20)
            row["repeats"] = len(points)
            row["roofline_decode_tok_s"] = round(bandwidth_gbs * 1e9 / per_token, 2)
            row["roofline_fraction"] = round(row["decode_tok_s"] / row["roofline_decode_tok_s"], 3)
            rows.append(row)
    return rows


def run(args) -> None:
    work = Path(args.work)
    present, missing = configs(work, args.peers_python)
    threads = [int(t) for t in args.threads.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    load_start = os.getloadavg()
    bandwidth = [copy_bandwidth_gbs()]
    runs, began, cut = [], time.perf_counter(), None
    if args.from_runs:  # the report of an interrupted benchmark, from the runs it appended to runs.jsonl
        runs = [json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines() if line.strip()]
        cut = f"report written from {len(runs)} runs of runs.jsonl: {args.from_runs}"
    for repeat in range(0 if args.from_runs else args.repeats):
        spent = (time.perf_counter() - began) / 60
        measuring = sum(r["wall_s"] for r in runs) / 60  # a repeat's own time, without waits for the lock
        if repeat and args.budget_min and spent + measuring / repeat > args.budget_min:
            cut = f"stopped after {repeat} of {args.repeats} repeats: another would pass --budget-min {args.budget_min}"
            break
        for thread_count in threads:
            runs += block(args, present, thread_count, repeat, work / "runs.jsonl")
        bandwidth.append(copy_bandwidth_gbs())
    peak_bw = max(bandwidth)
    commands = (work / "commands.txt").read_text().splitlines() if (work / "commands.txt").exists() else []
    report = {
        "what": "Thinker of the medium preset (Qwen2.5-Omni-3B widths, 2 layers, random seeded weights), "
        "prefill and greedy decode on CPU, omni-edge vs llama.cpp vs onnxruntime-genai on the same weights",
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "quick": args.quick,
        "omni_edge_tree": args.tree,
        "method": {
            "contexts": args.contexts,
            "decode_tokens": args.decode_tokens,
            "threads": threads,
            "repeats": args.repeats,
            "budget_min": args.budget_min,
            "cut": cut,
            "minutes": round((time.perf_counter() - began) / 60, 1),
            "order": "per repeat, per thread count: " + ", ".join(f"{r} {p}" for r, p, _, _ in present),
            "statistic": "median over repeats; decode_tok_s = decode_tokens / time of that many greedy steps",
        },
        "machine": cpu_description(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "copy_bandwidth_gbs": [round(b, 2) for b in bandwidth],
        "roofline": "roofline_decode_tok_s = max copy bandwidth / (weights bytes - embedding table bytes)",
        "versions": {r["runtime"]: r["versions"] for r in runs if "versions" in r},
        "parity": json.loads((work / "qwen2" / "parity.json").read_text()),
        "commands": commands + [" ".join(["python scripts/peers_bench.py", *sys.argv[2:]])],
        "missing": missing,
        "rows": summarise(runs, peak_bw),
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))


# -- the table for bench/README.md ------------------------------------------------------------------------
def table(report: dict) -> str:
    rows = {(r["runtime"], r["precision"], r["threads"], r["context"]): r for r in report["rows"]}
    lines = [
        "| precision | threads | context | omni-edge decode / prefill | llama.cpp | onnxruntime-genai "
        "| omni/llama decode, prefill | omni/genai decode, prefill |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for precision, threads, context in sorted({k[1:] for k in rows}, key=lambda k: (k[0] != "fp32", k)):
        cells = [rows.get((rt, precision, threads, context)) for rt in RUNTIMES]
        shown = [f"{c['decode_tok_s']:.1f} / {c['prefill_tok_s']:.0f}" if c else "–" for c in cells]
        ratios = []
        for peer in cells[1:]:
            ok = cells[0] and peer
            ratios.append(
                f"{cells[0]['decode_tok_s'] / peer['decode_tok_s']:.2f}, "
                f"{cells[0]['prefill_tok_s'] / peer['prefill_tok_s']:.2f}"
                if ok
                else "–"
            )
        lines.append(f"| {precision} | {threads} | {context} | " + " | ".join(shown + ratios) + " |")
    lines += ["", "| precision | runtime | weights MiB | peak RSS MiB (1 thread) | decode at context 128 / roofline |"]
    lines.append("|---|---|--:|--:|--:|")
    for precision, _ in PRECISIONS:
        for runtime in RUNTIMES:
            row = rows.get((runtime, precision, 1, 128))
            if row:
                share = (
                    f"{row['decode_tok_s']:.1f} / {row['roofline_decode_tok_s']:.1f} ({row['roofline_fraction']:.0%})"
                )
                lines.append(f"| {precision} | {runtime} | {row['weights_mib']} | {row['peak_rss_mib']} | {share} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("child")
    c.add_argument("--runtime", choices=RUNTIMES, required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--threads", type=int, required=True)
    c.add_argument("--contexts", default="128,512,2048")
    c.add_argument("--decode-tokens", type=int, default=16)
    r = sub.add_parser("run")
    r.add_argument("--work", required=True)
    r.add_argument("--peers-python", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", default="1,2")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--decode-tokens", type=int, default=16)
    r.add_argument("--contexts", default="128,512,2048")
    r.add_argument("--lock", default="/tmp/bigmem.lock")
    r.add_argument("--tree", default="", help="the repository state measured (git describe --dirty)")
    r.add_argument("--child-timeout", type=int, default=1200)
    r.add_argument("--from-runs", default="", help="measure nothing: report WORK/runs.jsonl; the text says why")
    r.add_argument("--budget-min", type=float, default=0, help="start no repeat that would end past this (0: off)")
    r.add_argument("--quick", action="store_true", help="2 repeats, contexts 128,512 (for a loaded machine)")
    t = sub.add_parser("table")
    t.add_argument("json")
    args = parser.parse_args()
    if args.command == "child":
        child(args)
    elif args.command == "run":
        if args.quick:
            args.repeats, args.contexts = 2, "128,512"
        run(args)
    else:
        print(table(json.loads(Path(args.json).read_text())))


if __name__ == "__main__":
    main()
