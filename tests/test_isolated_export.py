"""Components with large weights are exported in a spawned child process (omni_edge/export/isolated.py),
so what the libraries keep after tracing is returned to the system when the child ends."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from omni_edge.errors import InputError
from omni_edge.export.isolated import ISOLATE_ENV, ExportProcessDied, run_isolated


def child_pid_and_sum(values: list[int]) -> tuple[int, int]:
    return os.getpid(), sum(values)


def child_refuses(message: str) -> None:
    raise InputError(message)


def child_fills_the_disk() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def child_is_killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_result_comes_back_from_another_process():
    pid, total = run_isolated(child_pid_and_sum, [1, 2, 3], what="adding")
    assert total == 6 and pid != os.getpid()


def test_the_childs_errors_are_raised_here_as_they_were():
    with pytest.raises(InputError, match="bad calibration file"):
        run_isolated(child_refuses, "bad calibration file", what="refusing")
    with pytest.raises(OSError) as info:  # the errno survives: a full disk is still reported as one
        run_isolated(child_fills_the_disk, what="writing")
    assert info.value.errno == errno.ENOSPC


def test_a_killed_child_says_so_and_suspects_memory():
    with pytest.raises(ExportProcessDied, match="exporting thinker ended without a result .*signal 9.*out of memory"):
        run_isolated(child_is_killed, what="exporting thinker")


def test_an_isolated_export_answers_like_the_in_process_one(tiny_checkpoint, tmp_path, monkeypatch, session):
    from omni_edge.export.pipeline import ExportRequest, _no_progress, export_bundle
    from omni_edge.runtime import Done, SamplingConfig, Session

    monkeypatch.setenv(ISOLATE_ENV, "0")  # every component in a child, as the full-size ones are
    request = ExportRequest(
        model=str(tiny_checkpoint), target="cpu", out=tmp_path / "b", precision="fp32", components=("thinker",)
    )
    bundle = export_bundle(request, _no_progress)

    def greedy(s) -> list[int]:
        events = s.generate("Tell me about the sea.", 12, SamplingConfig(greedy=True))
        return list(next(e.result for e in events if isinstance(e, Done)).text_token_ids)

    with Session(bundle, threads=1) as isolated:
        assert greedy(isolated) == greedy(session)
