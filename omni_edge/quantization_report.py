"""The quantization report a bundle's manifest carries (part of its schema, beside bundle.py): how it was
calibrated and what precision cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphAccuracy:
    precision: str
    cosine: float  # worst over outputs of (y . y_ref) / (|y| |y_ref|)
    relative_error: float  # worst over outputs of |y - y_ref| / |y_ref| (L2 norms)
    max_abs_error: float
    feeds: int  # held-out feeds compared
    outputs: int  # floating outputs compared per feed
    method: str = ""  # calibration recipe, e.g. "int8 entropy + SmoothQuant(0.5)"


@dataclass(frozen=True)
class EndToEndAccuracy:
    requests: int
    text_token_agreement: float  # share of positions where the greedy text tokens are equal
    text_exact_match: float  # share of requests with identical text tokens
    codec_token_agreement: float | None  # the Talker's greedy codes, same measure; None without speech
    waveform_relative_error: float | None  # token2wav of the FP32 codes, reduced vs FP32
    waveform_snr_db: float | None


@dataclass(frozen=True)
class CalibrationInfo:
    source: str  # "synthetic" or the --calib directory
    requests: dict[str, int]  # kind (text/audio/image/video) -> requests replayed
    feeds: dict[str, int]  # graph -> feeds recorded (calibration and held-out together)


@dataclass(frozen=True)
class QuantizationReport:
    calibration: CalibrationInfo  # the requests replayed: calibration feeds and held-out measurement feeds
    graphs: dict[str, GraphAccuracy]  # every graph below fp32, vs the fp32 graph
    end_to_end: EndToEndAccuracy

    @staticmethod
    def from_dict(data: dict) -> QuantizationReport:
        return QuantizationReport(
            calibration=CalibrationInfo(**data["calibration"]),
            graphs={name: GraphAccuracy(**g) for name, g in data["graphs"].items()},
            end_to_end=EndToEndAccuracy(**data["end_to_end"]),
        )

    def summary_lines(self) -> list[str]:
        kinds = ", ".join(f"{n} {k}" for k, n in self.calibration.requests.items() if n)
        lines = [f"calibration: {self.calibration.source} ({kinds} requests)"]
        for name, g in self.graphs.items():
            lines.append(
                f"  {name:<16} {g.precision:<9} cosine {g.cosine:.4f}  rel.err {g.relative_error:.4f}  "
                f"({g.feeds} held-out feeds{'; ' + g.method if g.method else ''})"
            )
        e = self.end_to_end
        line = (
            f"end to end vs the unreduced bundle ({e.requests} requests): text tokens agree {e.text_token_agreement:.1%}, "
            f"identical replies {e.text_exact_match:.0%}"
        )
        if e.codec_token_agreement is not None:
            line += (
                f"; codec tokens agree {e.codec_token_agreement:.1%}; waveform rel.err "
                f"{e.waveform_relative_error:.4f} (SNR {e.waveform_snr_db:.1f} dB)"
            )
        return lines + [line]
