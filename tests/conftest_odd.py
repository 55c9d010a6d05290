"""Session fixtures for the `odd` checkpoint (omni_edge.export.tiny: other head counts, mrope sections, audio
n_window and DiT block size than `tiny`), exported once. Import the fixtures a test module uses from here."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def odd_checkpoint(cache_dir) -> Path:
    from omni_edge.export.tiny import ensure_preset_checkpoint

    return ensure_preset_checkpoint("odd", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def odd_bundle(odd_checkpoint, tmp_path_factory) -> Path:
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "odd-cpu"
    request = ExportRequest(
        model=str(odd_checkpoint), target="cpu", out=out, precision="fp32", max_seq_len=2048
    )  # a 7.9 s clip is ~1000 tokens
    return export_bundle(request, _no_progress)


@pytest.fixture(scope="session")
def odd_hf_model(odd_checkpoint):
    from omni_edge.export.checkpoint import load_omni_model

    return load_omni_model(odd_checkpoint)


@pytest.fixture(scope="session")
def _odd_shared_session(odd_bundle):
    from omni_edge.runtime.session import Session

    return Session(odd_bundle, threads=1)


@pytest.fixture()
def odd_session(_odd_shared_session):
    _odd_shared_session.reset()
    yield _odd_shared_session
