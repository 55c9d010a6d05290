"""Host-side embedding tables: stored at the checkpoint's precision, mapped, looked up bit-identically to the
fp32 table, never held in memory, refused when the file changes, and priced in the memory plan at the rows
a context can look up."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys

import numpy as np
import pytest
import torch

from omni_edge.bundle import load_manifest
from omni_edge.errors import BundleError
from omni_edge.export.tables import is_bf16_exact, write_embedding_table
from omni_edge.memory_plan import plan_memory, read_safetensors_header
from omni_edge.runtime.embedding_table import EmbeddingTable

INDEXES = [5, [3, 3, 0], np.array([[1, 2], [7, 0]]), slice(2, 6), -1]


def _hashes(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def _table(path, files=None) -> EmbeddingTable:
    return EmbeddingTable(path.parent, files, path.name)


def test_a_bf16_checkpoint_table_is_stored_in_bf16_and_looked_up_exactly(tmp_path):
    weight = torch.randn(300, 64).to(torch.bfloat16).float()  # what a bf16 checkpoint loads as
    path = tmp_path / "t.safetensors"
    assert write_embedding_table(weight, path) == "bfloat16"
    assert read_safetensors_header(path)["weight"]["dtype"] == "BF16"
    assert path.stat().st_size < 300 * 64 * 2 + 200  # half the fp32 bytes
    table = _table(path, _hashes(tmp_path))
    want = weight.numpy()
    assert table.shape == (300, 64) and len(table) == 300 and table.stored == "bfloat16"
    for index in INDEXES:
        got = table[index]
        assert got.dtype == np.float32 and got.shape == want[index].shape
        assert np.array_equal(got.view(np.uint32), want[index].view(np.uint32))  # bit for bit


def test_an_fp32_table_stays_fp32(tmp_path):
    weight = torch.randn(200, 48)
    weight[7, 3] = 1.0 + 2**-20  # one value bf16 cannot hold
    path = tmp_path / "t.safetensors"
    assert not is_bf16_exact(weight, rows=16)
    assert write_embedding_table(weight, path) == "float32"
    table = _table(path, _hashes(tmp_path))
    assert table.stored == "float32"
    for index in INDEXES:
        got = table[index]
        assert np.array_equal(got, weight.numpy()[index])
    got[...] = 0  # a caller may write into what it got
    assert np.array_equal(table[index], weight.numpy()[index])


def test_the_bf16_check_covers_every_chunk(tmp_path):
    weight = torch.randn(100, 8).to(torch.bfloat16).float()
    assert is_bf16_exact(weight, rows=16)
    weight[99, 7] += 2**-12 * weight[99, 7]  # the last row of the last, partial chunk
    assert not is_bf16_exact(weight, rows=16)


def test_session_tables_match_the_fp32_rows_written_at_export(session, cpu_bundle):
    from safetensors.numpy import load_file

    manifest = load_manifest(cpu_bundle, verify_files=False)
    want = load_file(str(cpu_bundle / manifest.thinker.embedding_file))["weight"]
    ids = np.array([151644, 0, 198, 151935, 42])
    assert isinstance(session.embeddings, EmbeddingTable)
    assert np.array_equal(session.embeddings[ids], want[ids])
    codec = load_file(str(cpu_bundle / manifest.talker.codec_embedding_file))["weight"]
    talker = session.speech().talker
    assert np.array_equal(talker.codec_table[[0, 5, len(codec) - 1]], codec[[0, 5, len(codec) - 1]])


@pytest.fixture()
def bundle(cpu_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, copy)
    return copy


def test_a_table_changed_after_load_is_refused_at_the_next_lookup(bundle):
    manifest = load_manifest(bundle)
    rel = manifest.thinker.embedding_file
    table = EmbeddingTable(bundle, manifest.files, rel)
    table[[1, 2]]
    path = bundle / rel
    data = bytearray(path.read_bytes())
    data[-4] ^= 0xFF
    path.write_bytes(bytes(data))  # same inode and size, new mtime
    with pytest.raises(BundleError, match="changed after it was verified"):
        table[[1, 2]]


def test_a_tampered_table_is_refused_at_open(bundle):
    manifest = load_manifest(bundle)
    path = bundle / manifest.thinker.embedding_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        EmbeddingTable(bundle, manifest.files, manifest.thinker.embedding_file)


@pytest.mark.parametrize(
    "header",
    [
        {"weight": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 32]}},
        {"weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}},
        {"weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}},
        {"other": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}},
        {"weight": {"dtype": "F32", "shape": [4, 400], "data_offsets": [0, 6400]}},  # past the end of the file
    ],
)
def test_a_malformed_table_is_one_bundle_error(tmp_path, header):
    text = json.dumps(header).encode()
    (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + bytes(64))
    with pytest.raises(BundleError, match="not a safetensors table"):
        _table(tmp_path / "t.safetensors")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_the_table_is_not_held_in_memory(tmp_path):
    weight = torch.randn(16384, 1024)  # 64 MiB fp32
    path = tmp_path / "t.safetensors"
    write_embedding_table(weight, path)
    files = _hashes(tmp_path)
    del weight
    before = _rss_kib()
    table = _table(path, files)  # hashed through the descriptor
    rng = np.random.default_rng(0)
    rows = table[rng.integers(0, 16384, 2000)]  # 8 MiB of rows, scattered over the whole file
    assert rows.shape == (2000, 1024)
    assert _rss_kib() - before < 24 << 10  # the rows asked for, not the 64 MiB table
    with open("/proc/self/maps") as maps:
        assert str(path) not in maps.read()  # and no mapping of it


def test_out_of_range_and_non_integer_ids_are_index_errors(tmp_path):
    path = tmp_path / "t.safetensors"
    write_embedding_table(torch.randn(10, 4), path)
    table = _table(path)
    for bad in (10, -11, [0, 10], np.array([1.0])):
        with pytest.raises(IndexError):
            table[bad]
    assert table[[]].shape == (0, 4)


def test_memory_plan_prices_a_table_at_the_rows_of_one_context(tiny_checkpoint):
    text = json.loads((tiny_checkpoint / "config.json").read_text())["thinker_config"]["text_config"]
    vocab, hidden = text["vocab_size"], text["hidden_size"]
    plan = plan_memory(tiny_checkpoint, {"thinker": "fp32"}, 512, ["thinker"])
    (part,) = [p for p in plan.parts if p.component == "thinker"]
    assert part.table_file_bytes == vocab * hidden * 4  # the tiny checkpoint is fp32: so is its table
    assert part.table_bytes == 512 * hidden * 4  # one context's rows, in fp32
    assert plan.at_seq_len(256).table_bytes == 256 * hidden * 4
    assert plan.at_seq_len(1 << 20).table_bytes == vocab * hidden * 4  # never more rows than the table has


def test_memory_plan_halves_a_bf16_table_on_disk(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "bf16"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    save_file(
        {k: v.to(torch.bfloat16) if "embed_tokens" in k else v for k, v in weights.items()},
        str(ckpt / "model.safetensors"),
    )
    fp32 = plan_memory(tiny_checkpoint, {"thinker": "fp32"}, 512, ["thinker"])
    bf16 = plan_memory(ckpt, {"thinker": "fp32"}, 512, ["thinker"])
    assert bf16.table_file_bytes * 2 == fp32.table_file_bytes


def test_recorded_plans_without_table_rows_keep_their_table_bytes(cpu_bundle):
    from dataclasses import asdict

    from omni_edge.memory_plan import MemoryPlan

    plan = load_manifest(cpu_bundle, verify_files=False).memory_plan
    assert plan is not None
    old = asdict(plan)
    for part in old["parts"]:  # as a manifest written before tables were mapped has them
        for key in ("table_file_bytes", "table_rows", "table_width"):
            part.pop(key)
        part["table_bytes"] = part["table_parameters"] * 4
    loaded = MemoryPlan.from_dict(old)
    assert loaded.at_seq_len(256).table_bytes == sum(p["table_parameters"] * 4 for p in old["parts"])
