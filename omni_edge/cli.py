"""Command-line entry points: omni-export, omni-run, omni-bench.

Every OmniEdgeError becomes one line on stderr and exit code 2; anything else is a bug and keeps its
traceback so it can be reported.
"""

from __future__ import annotations

import contextlib
import json
import sys
from functools import wraps
from pathlib import Path

import click

from omni_edge.errors import OmniEdgeError
from omni_edge.targets import PRECISIONS, TARGETS


def _one_line_errors(func):
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmniEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@contextlib.contextmanager
def _tqdm_progress(total: int, description: str):
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="step", file=sys.stderr, leave=True) as bar:
        yield bar


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", required=True, help="Local Hugging Face checkpoint directory, a hub id "
              "(e.g. Qwen/Qwen2.5-Omni-3B), or `tiny` for a generated tiny random-weight model.")
@click.option("--target", default="cpu", show_default=True, type=click.Choice(list(TARGETS)),
              help="Hardware the bundle is for; sets precisions and the runtime backend.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", *PRECISIONS]),
              help="Precision for every component; auto picks the target's default per component.")
@click.option("--max-seq-len", default=4096, show_default=True, type=int,
              help="KV-cache length the runtime preallocates (prompt + reply + earlier turns).")
@click.option("--components", default="", help="Comma-separated subset of: thinker, audio_encoder, "
              "vision_encoder (default: all; the Thinker is always included).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out (kept until the new one is complete).")
@_one_line_errors
def export_main(model, target, out, precision, max_seq_len, components, overwrite):
    """Export a Qwen2.5-Omni checkpoint into a deployable bundle.

    Each graph is verified against transformers before the bundle is written; the manifest is written
    last, so an interrupted export leaves nothing behind.

    \b
    Example:
      omni-export --model tiny --target cpu --out build/tiny
      omni-run build/tiny --prompt "Hello" --greedy
    """
    from omni_edge.export.pipeline import ExportRequest, export_bundle

    wanted = tuple(c.strip() for c in components.split(",") if c.strip())
    request = ExportRequest(model, target, out, precision, max_seq_len, overwrite, wanted)
    bundle = export_bundle(request, _tqdm_progress)
    click.echo(f"bundle written to {bundle}", err=True)
    click.echo("next:", err=True)
    click.echo(f'  omni-run {bundle} --prompt "Hello, who are you?"', err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="User message (text after any media).")
@click.option("--audio", "audio", multiple=True, type=click.Path(path_type=Path),
              help="wav/flac/ogg file (any rate, resampled to 16 kHz mono; up to 300 s). Repeatable.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Image file (png/jpg/...; larger than 12.8 MP is downscaled). Repeatable.")
@click.option("--video", "videos", multiple=True, type=click.Path(path_type=Path),
              help="Video file, sampled at 2 fps. Repeatable.")
@click.option("--audio-in-video/--no-audio-in-video", "use_audio_in_video", default=False,
              help="Also hear each --video's sound track, interleaved with its frames every 2 s.")
@click.option("--system", default=None, help="System prompt (default: the model's standard one).")
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--greedy", is_flag=True, help="Deterministic argmax decoding (ignores temperature/top-k/top-p).")
@click.option("--temperature", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int, help="0 disables top-k.")
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--repetition-penalty", default=1.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int, help="Seed for sampling, for reproducible runs.")
@click.option("--threads", default=0, type=int, help="CPU threads for ONNX Runtime (0: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, token ids and timings.")
@_one_line_errors
def run_main(bundle, prompt, audio, images, videos, use_audio_in_video, system, max_new_tokens, greedy,
             temperature, top_k, top_p, repetition_penalty, seed, threads, as_json):
    """Run a bundle: stream the reply to PROMPT as it is generated.

    \b
    Example:
      omni-run build/tiny --prompt "Describe a sunny day" --greedy --max-new-tokens 32
      omni-run build/tiny --prompt "Hi" --json
      omni-run build/tiny --audio question.wav --image kitchen.jpg --prompt "Answer briefly"
      omni-run build/tiny --video clip.mp4 --audio-in-video --prompt "What happens?"
    """
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Done, Session, TextDelta

    sampling = SamplingConfig(greedy, temperature, top_k, top_p, repetition_penalty)
    sampling.validate()
    session = Session(bundle, threads=threads)
    result = None
    turn = session.generate(prompt, max_new_tokens, sampling, seed, system, audio=audio, images=images,
                            videos=videos, use_audio_in_video=use_audio_in_video)
    for event in turn:
        if isinstance(event, TextDelta) and not as_json:
            click.echo(event.text, nl=False)
            sys.stdout.flush()
        elif isinstance(event, Done):
            result = event.result
    if as_json:
        click.echo(json.dumps(run_report(result)))
    else:
        click.echo()
        click.echo(f"[{len(result.text_token_ids)} tokens, ttft {result.ttft_ms:.1f} ms, "
                   f"{result.decode_tokens_per_s:.1f} tok/s, {result.finish_reason}]", err=True)


def run_report(result) -> dict:
    return {
        "text": result.text,
        "prompt_token_ids": result.prompt_token_ids,
        "text_token_ids": result.text_token_ids,
        "codec_token_ids": result.codec_token_ids,
        "audio_seconds": result.audio_seconds,
        "finish_reason": result.finish_reason,
        "ttft_ms": round(result.ttft_ms, 3),
        "first_audio_ms": result.first_audio_ms,
        "rtf": result.rtf,
        "total_ms": round(result.total_ms, 3),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--engine", "engines", multiple=True, help="Only these engines (repeatable).")
@click.option("--iterations", default=20, show_default=True, type=int)
@click.option("--warmup", default=3, show_default=True, type=int)
@click.option("--threads", default=0, type=int, help="CPU threads for ONNX Runtime (0: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_one_line_errors
def bench_main(bundle, engines, iterations, warmup, threads, as_json):
    """Measure per-engine latency (p50/p90/p99) and end-to-end text latency of a bundle.

    \b
    Example:
      omni-bench build/tiny --iterations 50 --json > bench.json
    """
    from omni_edge.runtime.bench import BenchConfig, format_report, run_bench

    report = run_bench(bundle, BenchConfig(engines=tuple(engines), iterations=iterations, warmup=warmup,
                                           threads=threads))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
