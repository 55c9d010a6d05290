"""A long spoken conversation on one Session: resident memory after every turn, so a leak shows as a slope.

    python -m omni_edge.bench.soak BUNDLE --turns 200 --out bench/soak-tiny.json

Each turn is a short spoken reply (greedy, Euler token2wav) with its own --max-codec-tokens value, and the
conversation is reset every `--reset-every` turns so the KV cache never fills: what grows is then what the
session keeps by mistake (engines, Talkers, tables, per-turn rows), not the conversation.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from omni_edge.bench.machine import describe_machine


def _rss_mib() -> float:
    """Current resident set size (statm), falling back to the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / (1 << 20)
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak(bundle: Path, turns: int, reset_every: int, threads: int) -> dict:
    from omni_edge.runtime import Done, SamplingConfig, Session, SpeechOptions

    greedy = SamplingConfig(greedy=True)
    curve = []
    with Session(bundle, threads=threads) as session:
        start = time.perf_counter()
        for turn in range(turns):
            if turn % reset_every == 0:
                session.reset()
            speech = SpeechOptions(max_codec_tokens=24 + turn % 16, solver="euler")
            result = next(
                e.result for e in session.generate("Say hello.", 4, greedy, speech=speech) if isinstance(e, Done)
            )
            curve.append(
                {"turn": turn + 1, "rss_mib": round(_rss_mib(), 1), "codec_tokens": len(result.codec_token_ids)}
            )
        seconds = time.perf_counter() - start
    first, last = curve[min(9, len(curve) - 1)]["rss_mib"], curve[-1]["rss_mib"]
    return {
        "bundle": str(bundle),
        "turns": turns,
        "reset_every": reset_every,
        "seconds": round(seconds, 1),
        "rss_mib_after_turn_10": first,
        "rss_mib_at_end": last,
        "growth_mib_after_warmup": round(last - first, 1),
        "machine": describe_machine(threads),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--reset-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the report (JSON) here")
    args = parser.parse_args(argv)
    report = soak(args.bundle, args.turns, args.reset_every, args.threads)
    report["command"] = "python -m omni_edge.bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(
        f"{args.turns} spoken turns in {report['seconds']} s: RSS {report['rss_mib_after_turn_10']} MiB after "
        f"turn 10, {report['rss_mib_at_end']} MiB at the end ({report['growth_mib_after_warmup']:+} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
