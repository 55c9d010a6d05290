"""The report as a terminal table, and as a PNG (latency per engine, ours vs reference, and the ratio)."""

from __future__ import annotations

from pathlib import Path

from omni_edge.errors import OmniEdgeError


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_report(report: dict) -> str:
    config, machine = report["config"], report["machine"]
    lines = [
        f"bundle {report['bundle']} ({report['source_model']}, target {report['target']}, {report['backend']})",
        f"{machine['cpu']}, {machine['usable_cpus']} cpus, {machine['mem_total_gib']} GiB; "
        f"{config['threads']} threads; load at start {machine['load_average_at_start']}",
        f"reference: {report['reference']['status']}",
        "",
        f"{'engine':<16}{'shape':<40}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'throughput':>25}"
        f"{'RSS MiB':>9}{'ref p50':>10}{'ours/ref':>9}",
    ]
    for row in report["engines"]:
        ref = row["reference"] or {}
        lines.append(
            f"{row['engine']:<16}{row['shape']:<40}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['throughput']:>11.1f} {row['throughput_unit']:<13}"
            f"{row['peak_rss_mib']:>9.0f}{_fmt(ref.get('p50_ms'), '.2f'):>10}"
            f"{_fmt(row['latency_ratio'], '.2f'):>9}"
        )
    for row in report["engines_pending"]:
        lines.append(f"{row['engine']:<16}{row['status'] + ' (' + row['planned'] + ')'}")
    lines += [
        "",
        f"{'end to end (greedy, ' + str(config['e2e_new_tokens']) + ' new tokens)':<40}{'ttft ms':>10}"
        f"{'tok/s':>8}{'ref ttft':>10}{'ref tok/s':>10}{'ttft ratio':>11}{'tok/s ratio':>12}",
    ]
    for row in report["end_to_end"]:
        ref = row.get("reference") or {}
        lines.append(
            f"{row['kind'] + ' (' + str(row['prompt_tokens']) + ' prompt tokens)':<40}"
            f"{row['ttft_ms_p50']:>10.1f}{row['thinker_tokens_per_s_p50']:>8.1f}"
            f"{_fmt(ref.get('ttft_ms_p50'), '.1f'):>10}{_fmt(ref.get('thinker_tokens_per_s_p50'), '.1f'):>10}"
            f"{_fmt(row.get('ttft_ratio'), '.2f'):>11}{_fmt(row.get('tokens_per_s_ratio'), '.2f'):>12}"
        )
    lines += ["", *_speech_lines(report["speech"])]
    roof = report["roofline"]
    samples = ", ".join(f"{v:.1f}" for v in roof["copy_bandwidth_samples_gb_s"])
    lines += [
        "",
        f"copy bandwidth {roof['copy_bandwidth_gb_s']:.1f} GB/s ({roof['threads']} threads; probes {samples})",
    ]
    if "decode_weight_bytes" in roof:
        lines.append(
            f"thinker_decoder weights {roof['decode_weight_bytes'] / 2**20:.0f} MiB -> roofline "
            f"{roof['roofline_tokens_per_s']:.1f} tok/s"
        )
        for item in roof["decode"]:
            lines.append(
                f"  context {item['context']:>5}: {item['tokens_per_s']:.1f} of "
                f"{item['roofline_tokens_per_s']:.1f} tok/s = {100 * item['fraction']:.0f}% of roofline"
                + (
                    f" (reference {100 * item['reference_fraction']:.0f}%)"
                    if item.get("reference_fraction") is not None
                    else ""
                )
            )
    return "\n".join(lines)


def _speech_lines(speech: dict) -> list[str]:
    if speech["status"] != "measured":
        missing = speech.get("missing_engines")
        return [f"speech (first audio, RTF): {speech['status']}" + (f" ({', '.join(missing)})" if missing else "")]
    lines = [
        f"speech: {speech['codec_tokens']} codec tokens ({speech['talker_stop_reason']}), "
        f"{speech['audio_seconds']:.2f} s audio, {speech['solver']}; ttft {speech['ttft_ms_p50']:.1f} ms, "
        f"first audio {_fmt(speech['first_audio_ms_p50'], '.1f')} ms, RTF {_fmt(speech['rtf_p50'], '.2f')}, "
        f"{speech['codec_tokens_per_s_p50']:.1f} codec tok/s"
    ]
    ref = speech.get("reference")
    if ref:
        lines.append(
            f"  reference (not streaming): first audio {ref['first_audio_ms_p50']:.1f} ms, RTF "
            f"{_fmt(ref['rtf_p50'], '.2f')}; ours/ref first audio {_fmt(speech['first_audio_ratio'], '.2f')}, "
            f"RTF {_fmt(speech['rtf_ratio'], '.2f')}"
        )
    return lines


def write_plot(report: dict, path: Path) -> Path:
    """Two panels: p50 latency per row (ours and reference, log scale) and ours/reference latency ratio."""
    try:
        import matplotlib
    except ImportError:
        raise OmniEdgeError("--plot needs matplotlib; pip install 'omni-edge[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (f"{r['engine']}\n{r['shape']}", r["p50_ms"], (r["reference"] or {}).get("p50_ms")) for r in report["engines"]
    ]
    rows += [
        (f"end to end TTFT\n{r['kind']} prompt", r["ttft_ms_p50"], (r.get("reference") or {}).get("ttft_ms_p50"))
        for r in report["end_to_end"]
    ]
    speech = report["speech"]
    if speech.get("first_audio_ms_p50") is not None:
        rows.append(
            (
                "end to end\nfirst audio (speech)",
                speech["first_audio_ms_p50"],
                (speech.get("reference") or {}).get("first_audio_ms_p50"),
            )
        )
    labels = [label for label, _, _ in rows]
    positions = range(len(rows))
    height = 0.38
    fig, (latency, ratio) = plt.subplots(
        1, 2, figsize=(14, 0.55 * len(rows) + 2.0), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    latency.barh([p - height / 2 for p in positions], [ours for _, ours, _ in rows], height, label="omni-edge (ORT)")
    refs = [(p, ref) for p, (_, _, ref) in zip(positions, rows) if ref is not None]
    if refs:
        latency.barh([p + height / 2 for p, _ in refs], [ref for _, ref in refs], height, label="PyTorch reference")
    latency.set_xscale("log")
    latency.set_xlabel("p50 latency (ms, log scale)")
    latency.set_yticks(list(positions), labels, fontsize=8)
    latency.invert_yaxis()
    latency.legend(loc="lower right", fontsize=8)
    ratios = [(p, ours / ref) for p, (_, ours, ref) in zip(positions, rows) if ref]
    ratio.barh(
        [p for p, _ in ratios],
        [r for _, r in ratios],
        0.6,
        color=["tab:green" if r <= 1 else "tab:red" for _, r in ratios],
    )
    for p, r in ratios:
        ratio.text(r, p, f" {r:.2f}", va="center", fontsize=7)
    if ratios:
        ratio.set_xlim(0, max(1.1, max(r for _, r in ratios)) * 1.15)
    ratio.axvline(1.0, color="black", linewidth=0.8)
    ratio.set_xlabel("latency ours / reference (< 1: ours faster)")
    if not ratios:
        ratio.text(
            0.5,
            0.5,
            f"reference: {report['reference']['status']}",
            ha="center",
            va="center",
            transform=ratio.transAxes,
            fontsize=8,
            wrap=True,
        )
    machine = report["machine"]
    fig.suptitle(
        f"{report['source_model']} bundle, {report['target']} target, {machine['cpu']}, "
        f"threads={report['config']['threads']}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
