"""The bundle is a trust boundary: nothing outside it is read, nothing unverified is run, and a manifest that
is not what omni-export writes is refused in one line. Every test corrupts a copy of the session bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, cli

from omni_edge import naming
from omni_edge.bench.inputs import decoder_feeds
from omni_edge.bundle import load_manifest
from omni_edge.errors import BundleError
from omni_edge.runtime.engine import OrtEngine, open_engine


@pytest.fixture()
def bundle(cpu_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, copy)
    return copy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / naming.MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rehash(bundle: Path, rel: str) -> None:
    """Fix the manifest's hashes of `rel` after changing it, as an attacker who edits the manifest would."""

    def edit(data):
        digest = _sha(bundle / rel)
        data["files"][rel] = digest
        for record in data["components"].values():
            if record["file"] == rel:
                record["sha256"] = digest

    _edit_manifest(bundle, edit)


def _refused(bundle: Path, *fragments: str) -> None:
    with pytest.raises(BundleError) as info:
        load_manifest(bundle)
    for fragment in fragments:
        assert fragment in str(info.value)


# -- files confined to the bundle, and every one listed ------------------------------------------------


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "sub/../../x", "..", ""])
def test_file_entries_outside_the_bundle_are_refused(bundle, entry):
    _edit_manifest(bundle, lambda d: d["files"].update({entry: _sha(Path("/etc/passwd"))}))
    _refused(bundle, "not a plain file name inside the bundle")


def test_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    os.symlink(outside, bundle / "extra.bin")
    _edit_manifest(bundle, lambda d: d["files"].update({"extra.bin": _sha(outside)}))
    _refused(bundle, "symbolic link", "outside")


def test_graph_not_among_hashed_files_is_refused(bundle):
    _edit_manifest(bundle, lambda d: d["files"].pop("thinker_decoder.onnx"))
    _refused(bundle, "thinker_decoder.onnx", "not among the manifest's hashed files")


def test_component_graph_outside_the_bundle_is_refused(bundle, tmp_path):
    shutil.copy(bundle / "thinker_decoder.onnx", tmp_path / "evil.onnx")

    def edit(data):
        data["components"]["thinker_decoder"]["file"] = "../evil.onnx"

    _edit_manifest(bundle, edit)
    _refused(bundle, "../evil.onnx")


@pytest.mark.parametrize("field", ["tokenizer_file", "embedding_file"])
def test_tables_must_be_hashed_too(bundle, field):
    def edit(data):
        rel = data["tokenizer_file"] if field == "tokenizer_file" else data["thinker"]["embedding_file"]
        data["files"].pop(rel)

    _edit_manifest(bundle, edit)
    _refused(bundle, "not among the manifest's hashed files")


# -- what was verified is what runs (time of check = time of use) ------------------------------------


@pytest.mark.parametrize("rel", ["thinker_decoder.onnx", "thinker_decoder.onnx.data"])
def test_graph_changed_after_load_is_refused_at_open(bundle, rel):
    manifest = load_manifest(bundle)  # verified here
    path = bundle / rel
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        open_engine(bundle, manifest, naming.THINKER_DECODER, threads=1)


def test_verified_engine_computes_what_the_file_does(cpu_bundle):
    manifest = load_manifest(cpu_bundle)
    name = naming.THINKER_DECODER
    verified = open_engine(cpu_bundle, manifest, name, threads=1)  # graph and external data from memory
    plain = OrtEngine(name, cpu_bundle / manifest.components[name].file, threads=1)
    rows = np.random.default_rng(0).standard_normal((5, manifest.thinker.hidden_size))
    feeds = decoder_feeds(rows, manifest.kv_cache, past=3)
    a, b = verified.run(feeds), plain.run(feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_graph_swapped_for_another_components_graph_is_refused(bundle):
    # The Talker's decoder graph has the Thinker's input and output names; only its sizes differ.
    shutil.copy(bundle / "talker_decoder.onnx", bundle / "thinker_decoder.onnx")
    _rehash(bundle, "thinker_decoder.onnx")
    manifest = load_manifest(bundle)  # every hash matches
    with pytest.raises(BundleError, match="another graph"):
        open_engine(bundle, manifest, naming.THINKER_DECODER, threads=1)


def test_session_refuses_a_swapped_graph_in_one_line(bundle):
    shutil.copy(bundle / "talker_decoder.onnx", bundle / "thinker_decoder.onnx")
    _rehash(bundle, "thinker_decoder.onnx")
    assert_one_line_error(cli("omni-run", str(bundle), "--prompt", "hi"), "thinker_decoder.onnx", "another graph")


# -- external data: locations checked before any backend reads them ----------------------------------


def _point_external_data(bundle: Path, graph: str, location: str) -> None:
    import onnx

    model = onnx.load(str(bundle / graph), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (bundle / graph).write_bytes(model.SerializeToString())
    _rehash(bundle, graph)


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "unlisted"])
def test_external_data_outside_the_bundle_is_refused(bundle, tmp_path, kind):
    graph = "thinker_decoder.onnx"
    outside = tmp_path / "outside.data"
    shutil.copy(bundle / f"{graph}.data", outside)  # valid weights: a backend would load them happily
    if kind == "parent":
        location, message = "../outside.data", "not a plain file name"
    elif kind == "absolute":
        location, message = str(outside), "not a plain file name"
    elif kind == "symlink":
        location, message = "link.data", "symbolic link"
        os.symlink(outside, bundle / location)
        _edit_manifest(bundle, lambda d: d["files"].update({location: _sha(outside)}))
    else:
        location, message = "unlisted.data", "not among the bundle's hashed files"
        shutil.copy(outside, bundle / location)
    _point_external_data(bundle, graph, location)
    with pytest.raises(BundleError, match=message):
        manifest = load_manifest(bundle)
        open_engine(bundle, manifest, naming.THINKER_DECODER, threads=1)


def test_tensorrt_parser_gets_only_checked_graphs(bundle, tmp_path):
    from omni_edge.export.engine_build import _network

    shutil.copy(bundle / "thinker_decoder.onnx.data", tmp_path / "outside.data")
    _point_external_data(bundle, "thinker_decoder.onnx", "../outside.data")
    manifest = load_manifest(bundle)
    # No TensorRT here: the check runs before the parser is created, so None stands in for it.
    with pytest.raises(BundleError, match="not a plain file name"):
        _network(None, None, None, bundle / "thinker_decoder.onnx", manifest.files)
    with pytest.raises(BundleError, match="not a plain file name"):
        _network(None, None, None, bundle / "thinker_decoder.onnx", None)  # the export's own staging


def test_external_locations_are_found_everywhere(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from omni_edge.onnx_external import external_locations

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    c = numpy_helper.from_array(np.ones((4,), np.float32), "c")
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=c)],
        "body",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(graph)
    onnx.external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True
    )
    found = external_locations(model.SerializeToString())
    assert found == {"w", "c"}  # the initializer, and the Constant inside the If's subgraph


# -- the manifest's schema: one line, never a traceback ----------------------------------------------


def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (_set("components", {}), "no components"),
        (_set("components", []), "not a valid omni-edge manifest"),
        (_set("files", []), "manifest field manifest.files"),
        (_set("files", {}), "no hashed files"),
        (_set("kv_cache.max_seq_len", -1), "max_seq_len is -1"),
        (_set("kv_cache.max_seq_len", 10**12), "max_seq_len is 1000000000000"),
        (_set("kv_cache.max_seq_len", "4096"), "kv_cache.max_seq_len should be int"),
        (_set("kv_cache.num_layers", 0), "num_layers is 0"),
        (_set("kv_cache.dtype", "complex128"), "not a KV-cache type"),
        (_set("talker.kv_cache.max_seq_len", 10**12), "talker.kv_cache.max_seq_len"),
        (_set("thinker.eos_token_ids", "eos"), "eos_token_ids should be list"),
        (_set("backend", "tflite"), "tflite"),
        (lambda d: d["components"].pop("thinker_decoder"), "no thinker_decoder component"),
        (lambda d: d.pop("kv_cache"), "missing field 'kv_cache'"),
        (lambda d: d.update(extra=1), "not a valid omni-edge manifest"),
        (lambda d: d["files"].update({"tokenizer.json": "not-a-hash"}), "has no sha256"),
    ],
)
def test_malformed_manifest_is_refused(bundle, edit, fragment):
    _edit_manifest(bundle, edit)
    _refused(bundle, fragment)


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"format_version": NaN}',
        b"",
    ],
)
def test_manifest_that_is_not_json_is_refused(bundle, content):
    (bundle / naming.MANIFEST_FILE).write_bytes(content)
    _refused(bundle, "not a valid omni-edge manifest")


def test_cli_gives_one_line_for_broken_manifests(bundle):
    manifest = bundle / naming.MANIFEST_FILE
    original = manifest.read_text()
    for content in (b"\x00\x01binary\xff", json.dumps({**json.loads(original), "components": {}}).encode()):
        manifest.write_bytes(content)
        assert_one_line_error(cli("omni-run", str(bundle), "--prompt", "hi"), "manifest")
    data = json.loads(original)
    data["kv_cache"]["max_seq_len"] = 10**12
    manifest.write_text(json.dumps(data))
    assert_one_line_error(cli("omni-run", str(bundle), "--prompt", "hi"), "max_seq_len is 1000000000000")


def test_manifest_pinned_from_outside(bundle):
    from omni_edge.bundle_trust import manifest_sha256

    pinned = manifest_sha256(bundle)
    load_manifest(bundle, manifest_sha256=pinned)
    _edit_manifest(bundle, lambda d: d.update(source_model="someone else's"))
    with pytest.raises(BundleError, match="pinned"):
        load_manifest(bundle, manifest_sha256=pinned)
    proc = cli("omni-run", str(bundle), "--prompt", "hi", "--manifest-sha256", pinned)
    assert_one_line_error(proc, "pinned")


def test_omni_run_runs_a_bundle_pinned_to_its_own_manifest(bundle):
    from omni_edge.bundle_trust import manifest_sha256

    pinned = manifest_sha256(bundle)
    proc = cli(
        "omni-run", str(bundle), "--prompt", "hi", "--max-new-tokens", "2", "--json", "--manifest-sha256", pinned
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text_token_ids"]


def test_onnxruntime_floor_validates_external_data():
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    for extra in ("ort", "quant"):
        (spec,) = [d for d in pyproject["project"]["optional-dependencies"][extra] if d.startswith("onnxruntime")]
        floor = tuple(int(p) for p in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))
        assert floor >= (1, 27), spec  # 1.27: external data outside the model directory refused for every tensor


def test_session_refuses_a_graph_changed_after_it_loaded(bundle):
    from omni_edge.runtime.session import Session

    session = Session(bundle, threads=1)  # verified here; the speech graphs open on first use
    path = bundle / "dit_window.onnx.data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="dit_window.onnx.data does not match its sha256"):
        session.speech()


def test_external_data_is_mapped_hashed_and_refused_if_rewritten_while_loading(tmp_path):
    """Large external data is mapped, not read into memory (the 3B Thinker's 12 GB would be held twice while
    ONNX Runtime copies it); a rewrite between the hash and the backend's read is caught by the file's identity."""
    import hashlib
    import os

    from omni_edge.bundle_trust import MappedFile

    path = tmp_path / "w.onnx.data"
    path.write_bytes(b"x" * 5000)
    files = {"w.onnx.data": hashlib.sha256(b"x" * 5000).hexdigest()}
    mapped = MappedFile(tmp_path, files, "w.onnx.data", "external data")
    assert bytes(mapped.data[:3]) == b"xxx" and len(mapped.data) == 5000
    mapped.check_unchanged()
    path.write_bytes(b"y" * 5000)
    os.utime(path, ns=(1, 1))
    with pytest.raises(BundleError, match="changed while it was being loaded"):
        mapped.check_unchanged()
    mapped.close()
    with pytest.raises(BundleError, match="does not match its sha256"):
        MappedFile(tmp_path, files, "w.onnx.data", "external data")
