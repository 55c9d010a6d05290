"""Command-line entry points: omni-export, omni-build-engines, omni-run, omni-bench.

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

from omni_edge.components import COMPONENT_NAMES, COMPONENTS, SPEECH_COMPONENTS
from omni_edge.errors import InputError, OmniEdgeError
from omni_edge.runtime.vision_frontend import TRANSPARENCY_MODES, VIDEO_TIMINGS
from omni_edge.targets import PRECISIONS, TARGETS


def _one_line_errors(func):
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmniEdgeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into Terminated (omni_edge.signals)
            code = getattr(exc, "exit_code", 130)
            click.echo("terminated" if code != 130 else "interrupted", err=True)
            sys.exit(code)

    return wrapper


@contextlib.contextmanager
def _tqdm_progress(total: int, description: str):
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="step", file=sys.stderr, leave=True) as bar:
        yield bar


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--model",
    required=True,
    help="Local Hugging Face checkpoint directory, a hub id "
    "(e.g. Qwen/Qwen2.5-Omni-3B), `tiny` (generated tiny random-weight model) or `medium` (real 3B "
    "widths, 2 layers: CPU numbers that say something about real models).",
)
@click.option(
    "--target",
    default="cpu",
    show_default=True,
    type=click.Choice(list(TARGETS)),
    help="Hardware the bundle is for; sets precisions and the runtime backend.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to create.")
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    metavar="SPEC",
    help=f"auto (the target's default per component; on cpu weight-only int8 for every component but "
    f"BigVGAN, with no --calib needed), one of {', '.join(PRECISIONS)} for every component, or "
    "component=precision pairs over the defaults, e.g. thinker=int8,dit=fp32. fp8, int4-awq and int8 on GPU "
    "targets need --calib; on cpu int8 is weight-only and needs it only for bigvgan (convolutions, Q/DQ).",
)
@click.option(
    "--calib",
    default=None,
    metavar="DIR|synthetic",
    help="Calibration data for int8/fp8/int4-awq: a directory of your own media (wav/flac/mp3, "
    "png/jpg, mp4) and .txt files (one prompt per line), or `synthetic` for a built-in seeded set. "
    "The FP32 bundle answers these requests, every graph is calibrated on what it was fed and its accuracy "
    "measured; without --calib, precisions that need none are measured on the synthetic set.",
)
@click.option(
    "--plugins",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "on", "off"]),
    help="TMRoPE as one TensorRT plugin node per layer instead of plain ops. Only the full-TensorRT "
    "targets (Jetson, Hopper) can load it; `on` opts in there. auto keeps plain ops for now (the "
    "kernel has not been measured on a GPU yet); off always keeps plain ops.",
)
@click.option(
    "--no-engines",
    is_flag=True,
    help="Write the graphs and manifest only, e.g. on a workstation for a Jetson; build the engines "
    "on the device with `omni-build-engines BUNDLE`.",
)
@click.option(
    "--max-seq-len",
    default=4096,
    show_default=True,
    type=int,
    help="KV-cache length the runtime preallocates (prompt + reply + earlier turns).",
)
@click.option(
    "--components",
    default="",
    help=f"Comma-separated subset of: {', '.join(COMPONENT_NAMES)} (default: all; the "
    f"{', '.join(c.name for c in COMPONENTS if c.required)} always included; speech needs "
    f"{', '.join(SPEECH_COMPONENTS)} together).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing bundle at --out (kept until the new one is complete)."
)
@click.option(
    "--memory-gib",
    type=float,
    default=None,
    help="Memory the bundle may use (default: the target's; "
    "16 GiB for cpu). The export refuses, with numbers, a bundle whose memory plan exceeds it.",
)
@_one_line_errors
def export_main(
    model, target, out, precision, calib, plugins, no_engines, max_seq_len, components, overwrite, memory_gib
):
    """Export a Qwen2.5-Omni checkpoint into a deployable bundle.

    Each graph is verified against transformers before the bundle is written; the manifest is written
    last, so an interrupted export leaves nothing behind. Below fp32, every graph's error against its
    fp32 twin and the end-to-end token agreement are measured, printed and kept in the manifest.

    \b
    Examples:
      omni-export --model tiny --target cpu --out build/tiny
      omni-run build/tiny --prompt "Hello" --greedy
      omni-export --model tiny --target cpu --precision fp32 --out build/tiny-fp32
      omni-export --model tiny --target cpu --precision int8 --calib synthetic --out build/tiny-int8
      omni-export --model Qwen/Qwen2.5-Omni-3B --target rtx-ada --calib my_media/ --out build/rtx
    """
    from omni_edge.export.pipeline import ExportRequest, export_bundle

    wanted = tuple(c.strip() for c in components.split(",") if c.strip())
    request = ExportRequest(
        model=model,
        target=target,
        out=out,
        precision=precision,
        max_seq_len=max_seq_len,
        overwrite=overwrite,
        components=wanted,
        memory_gib=memory_gib,
        calib=calib,
        plugins=plugins,
        engines=not no_engines,
    )
    bundle = export_bundle(request, _tqdm_progress)
    from omni_edge.bundle import load_manifest
    from omni_edge.bundle_trust import manifest_sha256

    manifest = load_manifest(bundle, verify_files=False)
    click.echo(
        f"bundle written to {bundle} (manifest sha256 {manifest_sha256(bundle)}: pin it with "
        "omni-run --manifest-sha256)",
        err=True,
    )
    if manifest.memory_plan is not None:
        click.echo(f"memory plan: {manifest.memory_plan.summary()}", err=True)
    if manifest.quantization is not None:
        click.echo("accuracy vs the unreduced graphs (fp32 unless said):", err=True)
        for line in manifest.quantization.summary_lines():
            click.echo(f"  {line}", err=True)
    click.echo("next:", err=True)
    if manifest.backend == "tensorrt" and manifest.tensorrt is None:
        click.echo(f"  copy {bundle} to the {target} device, then: omni-build-engines {bundle.name}", err=True)
    click.echo(f'  omni-run {bundle} --prompt "Hello, who are you?"', err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(path_type=Path))
@_one_line_errors
def build_engines_main(bundle):
    """Build the TensorRT engines of a bundle exported with --no-engines, on the device it targets.

    Full TensorRT builds for the GPU it runs on, so this runs on the Jetson / GPU machine itself (JetPack's
    TensorRT on Orin). The manifest is updated last; a failed build leaves the bundle as graphs only.

    \b
    Example (workstation, then Orin):
      omni-export --model Qwen/Qwen2.5-Omni-3B --target jetson-orin --calib my_media/ --no-engines --out orin
      omni-build-engines orin && omni-run orin --prompt "Hello"
    """
    from omni_edge.export.engine_build import build_bundle_engines, check_bundle_can_build

    manifest, target = check_bundle_can_build(bundle)  # before the progress bar: a refusal stays one line
    from omni_edge.signals import terminate_as_interrupt

    # SIGTERM like Ctrl-C: the failed build's clean-up runs (the bundle goes back to graphs only).
    with terminate_as_interrupt(), _tqdm_progress(len(manifest.components), "building engines") as bar:
        build_bundle_engines(bundle, manifest, target, bar)
    click.echo(f"engines built in {bundle}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="User message (text after any media).")
@click.option(
    "--audio",
    "audio",
    multiple=True,
    type=click.Path(path_type=Path),
    help="wav/flac/ogg file (any rate, resampled to 16 kHz mono; up to 300 s). Repeatable.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Image file (png/jpg/...; larger than 12.8 MP is downscaled). Repeatable.",
)
@click.option(
    "--video",
    "videos",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Video file, sampled at 2 fps. Repeatable.",
)
@click.option(
    "--audio-in-video/--no-audio-in-video",
    "use_audio_in_video",
    default=False,
    help="Also hear each --video's sound track, interleaved with its frames every 2 s.",
)
@click.option(
    "--video-timing",
    default=VIDEO_TIMINGS[0],
    show_default=True,
    type=click.Choice(list(VIDEO_TIMINGS)),
    help="TMRoPE time of a video's frames: `processor` assumes 2 fps as transformers' processor does in Qwen's "
    "README pipeline; `sampled` uses the fps the sampler reached (README: Media conventions).",
)
@click.option(
    "--transparency",
    default=TRANSPARENCY_MODES[0],
    show_default=True,
    type=click.Choice(list(TRANSPARENCY_MODES)),
    help="Which reference flattens transparent images onto white: qwen-omni-utils (RGBA only, Qwen's README "
    "pipeline) or transformers' processor (every mode).",
)
@click.option(
    "--out-wav",
    type=click.Path(path_type=Path),
    default=None,
    help="Also speak the reply: write 24 kHz audio here (streamed to disk chunk by chunk; an interrupted "
    "run keeps what was spoken).",
)
@click.option(
    "--speaker", default="Chelsie", show_default=True, help="Voice for --out-wav (from the bundle's spk_dict)."
)
@click.option(
    "--max-codec-tokens",
    default=2048,
    show_default=True,
    type=int,
    help="Upper bound on speech length (50 codec tokens per second).",
)
@click.option(
    "--ode-solver",
    default="rk4",
    show_default=True,
    type=click.Choice(["rk4", "euler"]),
    help="Flow-matching solver for speech: rk4 (reference, 36 DiT calls per window) or euler (9).",
)
@click.option(
    "--system",
    default=None,
    help="System prompt (default: the model's standard one; with "
    "--out-wav, the speech prompt the model was trained with).",
)
@click.option("--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--greedy", is_flag=True, help="Deterministic argmax decoding (ignores temperature/top-k/top-p).")
@click.option("--temperature", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int, help="0 disables top-k.")
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--repetition-penalty", default=1.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int, help="Seed for sampling, for reproducible runs.")
@click.option("--threads", default=0, type=int, help="CPU threads for ONNX Runtime (0: one per physical core).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, token ids and timings.")
@click.option(
    "--manifest-sha256",
    default=None,
    metavar="HEX",
    help="Refuse the bundle unless manifest.json has this sha256 (kept apart from the bundle, e.g. from "
    "`sha256sum BUNDLE/manifest.json` on the machine that exported it): the manifest's hashes then vouch for "
    "every other file.",
)
@_one_line_errors
def run_main(
    bundle,
    prompt,
    audio,
    images,
    videos,
    use_audio_in_video,
    video_timing,
    transparency,
    out_wav,
    speaker,
    max_codec_tokens,
    ode_solver,
    system,
    max_new_tokens,
    greedy,
    temperature,
    top_k,
    top_p,
    repetition_penalty,
    seed,
    threads,
    as_json,
    manifest_sha256,
):
    """Run a bundle: stream the reply to PROMPT as it is generated.

    \b
    Example:
      omni-run build/tiny --prompt "Describe a sunny day" --greedy --max-new-tokens 32
      omni-run build/tiny --prompt "Hi" --json
      omni-run build/tiny --audio question.wav --image kitchen.jpg --prompt "Answer briefly"
      omni-run build/tiny --video clip.mp4 --audio-in-video --prompt "What happens?"
      omni-run build/tiny --prompt "Say hello" --out-wav reply.wav --speaker Ethan
    """
    from omni_edge.runtime.chat import SPEECH_SYSTEM_PROMPT
    from omni_edge.runtime.engine import check_threads
    from omni_edge.runtime.limits import check_max_codec_tokens, check_seed, check_text
    from omni_edge.runtime.sampling import SamplingConfig
    from omni_edge.runtime.session import Done, Session, TextDelta
    from omni_edge.runtime.speech import AudioChunk, SpeechOptions
    from omni_edge.runtime.talker import DEFAULT_TALKER_SAMPLING, GREEDY_TALKER_SAMPLING
    from omni_edge.runtime.wav_writer import WavWriter
    from omni_edge.signals import terminate_as_interrupt

    check_text(prompt, "--prompt")
    check_text(system, "--system")
    check_seed(seed)
    check_threads(threads)
    sampling = SamplingConfig(greedy, temperature, top_k, top_p, repetition_penalty)
    sampling.validate()
    session = Session(bundle, threads=threads, manifest_sha256=manifest_sha256)
    session.media.video_timing, session.media.transparency = video_timing, transparency
    if out_wav is not None and session.manifest.talker is not None:
        check_max_codec_tokens(max_codec_tokens, session.manifest.talker)
    speech = None
    if out_wav is not None:
        speech = SpeechOptions(
            speaker,
            GREEDY_TALKER_SAMPLING if greedy else DEFAULT_TALKER_SAMPLING,
            max_codec_tokens,
            ode_solver,
            seed or 0,
        )
        system = system or SPEECH_SYSTEM_PROMPT
        session.speech()  # a bundle without speech components is refused now, before the wav is opened
    result = None
    # Opened before generation: an unwritable path fails now, not after a minute of work.
    # SIGTERM ends the turn like Ctrl-C: the wav keeps what was spoken (WavWriter), then one line and exit 143.
    rate = session.manifest.token2wav.sample_rate if speech else 24000
    with terminate_as_interrupt(), WavWriter(out_wav, rate) as wav:
        turn = session.generate(
            prompt,
            max_new_tokens,
            sampling,
            seed,
            system,
            audio=audio,
            images=images,
            videos=videos,
            use_audio_in_video=use_audio_in_video,
            speech=speech,
        )
        for event in turn:
            if isinstance(event, TextDelta) and not as_json:
                click.echo(event.text, nl=False)
                sys.stdout.flush()
            elif isinstance(event, AudioChunk):
                wav.write(event.samples)
            elif isinstance(event, Done):
                result = event.result
    if as_json:
        click.echo(json.dumps(run_report(result)))
    else:
        click.echo()
        click.echo(
            f"[{len(result.text_token_ids)} tokens, ttft {result.ttft_ms:.1f} ms, "
            f"{result.decode_tokens_per_s:.1f} tok/s, {result.finish_reason}]",
            err=True,
        )
        if speech:
            click.echo(
                f"[{result.audio_seconds:.2f} s of speech in {out_wav}, first audio "
                f"{result.first_audio_ms or 0:.0f} ms, rtf {result.rtf or 0:.2f}, talker stop: "
                f"{result.talker_stop_reason}]",
                err=True,
            )


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
        "talker_stop_reason": result.talker_stop_reason,
        "total_ms": round(result.total_ms, 3),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--engine", "engines", multiple=True, help="Only these engines (repeatable); end to end always runs.")
@click.option("--iterations", default=20, show_default=True, type=int, help="Timed runs per row, after warm-up.")
@click.option("--warmup", default=3, show_default=True, type=int, help="Untimed runs per row first.")
@click.option(
    "--max-seconds",
    default=0.0,
    type=float,
    help="Per row, stop timing after this many seconds (never below 3 runs); 0: no limit.",
)
@click.option(
    "--threads",
    default=0,
    type=int,
    help="CPU threads for ONNX Runtime and for the PyTorch reference (0: one per physical core).",
)
@click.option("--new-tokens", default=32, show_default=True, type=int, help="Tokens per end-to-end reply.")
@click.option("--e2e-iterations", default=0, type=int, help="Timed replies per prompt (0: max(3, iterations/4)).")
@click.option(
    "--speech-codec-tokens",
    default=100,
    show_default=True,
    type=int,
    help="Cap of the spoken reply in codec tokens (50 per second of audio).",
)
@click.option("--no-reference", is_flag=True, help="Skip the PyTorch (transformers) reference.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (progress goes to stderr).")
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG: latency per engine, ratio vs reference.")
@click.option(
    "--live",
    "live_wav",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    metavar="WAV",
    help="Also the live case: this spoken question fed as a microphone would (20 ms chunks, each 2 s block "
    "prefilled as it arrives), end of speech to first token and first audio against the whole-clip path.",
)
@click.option("--live-speak", is_flag=True, help="With --live: a spoken reply too (needs the speech components).")
@_one_line_errors
def bench_main(
    bundle,
    engines,
    iterations,
    warmup,
    max_seconds,
    threads,
    new_tokens,
    e2e_iterations,
    speech_codec_tokens,
    no_reference,
    as_json,
    plot,
    live_wav,
    live_speak,
):
    """Measure every engine of a bundle (p50/p90/p99, throughput, peak RSS), end-to-end latency on fixed
    text/audio/image prompts, the same for the PyTorch reference, and decode against the bandwidth roofline.

    \b
    Example:
      omni-bench build/tiny --iterations 50 --json > bench.json
      omni-bench build/medium --threads 1 --max-seconds 30 --json --plot bench.png > bench.json
      omni-bench build/medium --live tests/data/speech_question.wav --live-speak --json > bench.json
    """
    import shlex

    from omni_edge.bench import BenchConfig, format_report, run_bench, write_plot
    from omni_edge.runtime.engine import check_threads

    if min(iterations, new_tokens, speech_codec_tokens) < 1 or min(warmup, e2e_iterations) < 0 or max_seconds < 0:
        raise InputError(
            "--iterations, --new-tokens and --speech-codec-tokens must be at least 1, --warmup and "
            "--e2e-iterations at least 0 (0: the default count), --max-seconds at least 0"
        )
    check_threads(threads)
    config = BenchConfig(
        engines=tuple(engines),
        iterations=iterations,
        warmup=warmup,
        threads=threads,
        max_seconds=max_seconds,
        e2e_new_tokens=new_tokens,
        e2e_iterations=e2e_iterations,
        speech_codec_tokens=speech_codec_tokens,
        reference=not no_reference,
    )
    report = run_bench(bundle, config, progress=lambda line: click.echo(line, err=True))
    if live_wav is not None:
        from omni_edge.live.bench import live_bench

        report["live"] = live_bench(bundle, live_wav, config.e2e_repeats(), new_tokens, live_speak, threads)
        first = report["live"]["end_of_speech_to_first_text_ms"]
        click.echo(f"live: end of speech to first token {first['live']} ms, whole clip {first['offline']} ms", err=True)
    report["command"] = shlex.join(["omni-bench", *sys.argv[1:]])
    if plot:
        report["plot"] = str(write_plot(report, plot))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
