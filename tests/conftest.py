"""Session-wide fixtures: the tiny checkpoint, one exported cpu bundle, the transformers reference, and one
runtime Session handed to each test freshly reset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    # OMNI_EDGE_CACHE lets a developer reuse the generated checkpoint across runs; CI starts empty.
    env = os.environ.get("OMNI_EDGE_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("omni-edge-cache")


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir) -> Path:
    from omni_edge.export.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def cpu_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-cpu"
    # fp32: the parity tests compare it with transformers (cpu `auto` is weight-only int8)
    request = ExportRequest(model=str(tiny_checkpoint), target="cpu", out=out, precision="fp32", max_seq_len=2048)
    return export_bundle(request, _no_progress)


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoint):
    from omni_edge.export.checkpoint import load_omni_model

    return load_omni_model(tiny_checkpoint)


@pytest.fixture(scope="session")
def standard_thinker_decoder(hf_model, tmp_path_factory) -> Path:
    """The Thinker's decoder graph with transformers' standard-op attention and an fp32 KV cache: what the
    TensorRT targets get (their cache in fp16); the cpu bundle's graph uses GroupQueryAttention instead."""
    from omni_edge.export.decoder_specs import decoder_spec
    from omni_edge.export.verify_loop import export_and_verify

    out = tmp_path_factory.mktemp("standard-decoder")
    return out / export_and_verify(decoder_spec("thinker", hf_model), hf_model, out, max_seq_len=2048).file


@pytest.fixture(scope="session")
def _shared_session(cpu_bundle):
    from omni_edge.runtime.session import Session

    return Session(cpu_bundle, threads=1)


@pytest.fixture()
def session(_shared_session):
    """The one loaded Session (opening its engines takes seconds), reset before each test: a test that leaves a
    conversation in its cache cannot change what the next one sees, whatever the order."""
    _shared_session.reset()
    yield _shared_session
