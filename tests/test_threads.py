"""ONNX Runtime's intra-op threads: one per physical core by default, no spinning between runs, and the
--threads / Session(threads=) override."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omni_edge import naming
from omni_edge.bundle import load_manifest
from omni_edge.runtime.engine import (
    DEFAULT_SPINNING,
    SPINNING,
    OrtEngine,
    default_threads,
    open_engine,
    physical_cores,
)


def test_hardware_threads_of_one_core_count_once():
    two_way_smt = {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")}  # cpu 2 and 0 share core 0
    assert physical_cores(two_way_smt, {0, 1, 2, 3}) == 2
    assert physical_cores(two_way_smt, {0, 2}) == 1  # pinned to one core's two threads
    sockets = {0: ("0", "0"), 1: ("1", "0")}  # the same core id on two packages is two cores
    assert physical_cores(sockets, {0, 1}) == 2


def test_cpus_sysfs_does_not_describe_count_as_cores():
    assert physical_cores({}, {0, 1, 2}) == 3
    assert physical_cores({0: ("0", "0")}, {0, 5}) == 2


def test_default_threads_match_the_kernels_core_siblings():
    allowed = os.sched_getaffinity(0)
    cores = set()  # a core's thread_siblings_list is the same text for each of its hardware threads
    for cpu in allowed:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        if not path.exists():
            pytest.skip("this system has no sysfs CPU topology")
        cores.add(path.read_text().strip())
    assert default_threads() == len(cores) <= len(allowed)


def _options(engine: OrtEngine):
    return engine._session.get_session_options()


def test_sessions_use_the_default_threads_and_do_not_spin(cpu_bundle):
    manifest = load_manifest(cpu_bundle)
    engine = open_engine(cpu_bundle, manifest, naming.THINKER_DECODER)  # threads=0: the default
    options = _options(engine)
    assert options.intra_op_num_threads == default_threads()
    assert {key: options.get_session_config_entry(key) for key in SPINNING[DEFAULT_SPINNING]} == SPINNING[
        DEFAULT_SPINNING
    ]
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"  # never spins between runs


@pytest.mark.parametrize("threads", [1, os.cpu_count() or 1])
def test_threads_override_the_default(cpu_bundle, threads):
    manifest = load_manifest(cpu_bundle)
    graph = cpu_bundle / manifest.components[naming.THINKER_DECODER].file
    engine = OrtEngine("thinker", graph, threads=threads)
    assert _options(engine).intra_op_num_threads == threads
    for mode, entries in SPINNING.items():
        options = _options(OrtEngine("thinker", graph, threads=threads, spinning=mode))
        assert {key: options.get_session_config_entry(key) for key in entries} == entries


def test_a_session_passes_its_threads_to_every_engine(session):
    # the shared test session is opened with threads=1 (conftest)
    assert {_options(e).intra_op_num_threads for e in session._engines} == {1}
