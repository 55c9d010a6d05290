"""The fp16 cast and graphs with control flow: the vision encoder's chunked attention is an ONNX Scan, which
ModelOpt 0.47's fp16 conversion cannot handle; an fp16 vision encoder is refused in one line, and quantized
ones keep their unquantized ops in fp32."""

from __future__ import annotations

import onnx
import pytest

from omni_edge import naming
from omni_edge.calibration.quantize import QuantizationError, has_subgraphs, to_fp16


def test_the_vision_encoder_has_a_scan_and_the_dit_does_not(cpu_bundle):
    vision = onnx.load(str(cpu_bundle / f"{naming.VISION_ENCODER}.onnx"), load_external_data=False)
    dit = onnx.load(str(cpu_bundle / f"{naming.DIT_WINDOW}.onnx"), load_external_data=False)
    assert has_subgraphs(vision) and not has_subgraphs(dit)


def test_an_fp16_vision_encoder_is_refused_with_the_fix(cpu_bundle, tmp_path):
    with pytest.raises(QuantizationError, match="vision_encoder=fp8"):
        to_fp16(cpu_bundle / f"{naming.VISION_ENCODER}.onnx", tmp_path / "vision_encoder.onnx")
    assert not (tmp_path / "vision_encoder.onnx").exists()


def test_an_fp16_vision_encoder_is_refused_before_the_export():
    from omni_edge.errors import TargetError
    from omni_edge.precision_plan import component_precisions
    from omni_edge.targets import TARGETS

    with pytest.raises(TargetError, match="vision_encoder cannot be exported at fp16"):
        component_precisions(TARGETS["rtx-ada"], "vision_encoder=fp16")
    with pytest.raises(TargetError, match="vision_encoder cannot be exported at fp16"):
        component_precisions(TARGETS["jetson-orin"], "fp16")  # every component in fp16
    assert component_precisions(TARGETS["rtx-ada"], "dit=fp16")["dit"] == "fp16"


def test_a_component_left_out_of_the_export_is_not_checked():
    from omni_edge.precision_plan import component_precisions
    from omni_edge.targets import TARGETS

    # every component in fp16, but only the Thinker (and what it requires) exported: the vision encoder's
    # refusal must not block it
    chosen = component_precisions(TARGETS["rtx-ada"], "fp16", ("thinker", "talker"))
    assert chosen == {"thinker": "fp16", "talker": "fp16"}
