"""bfloat16 and sharded checkpoints."""

import shutil

import numpy as np
import pytest

import ultradelta
from conftest import run_cli
from _st import read_safetensors_folder, write_safetensors, write_sharded


@pytest.fixture(scope="module")
def llama_archive(tmp_path_factory, llama):
    d = tmp_path_factory.mktemp("llama")
    a = d / "drunk.udelta"
    ultradelta.compress(llama["base"], llama["drunk"], a)
    out = d / "rebuilt"
    ultradelta.apply(llama["base"], a, out)
    return a, out


def test_bf16_raw_float32_and_ml_dtypes(llama, llama_archive):
    a, out = llama_archive
    written = read_safetensors_folder(out)
    assert {d for d, _, _ in written.values()} == {"BF16"}
    raw = ultradelta.load(llama["base"], a, bf16="raw")
    f32 = ultradelta.load(llama["base"], a, bf16="float32")
    for name, (_, shape, b) in written.items():
        assert raw[name].dtype == np.uint16 and raw[name].shape == shape
        assert raw[name].tobytes() == b, name
        expect = (np.frombuffer(b, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        assert f32[name].dtype == np.float32
        assert np.array_equal(f32[name], expect, equal_nan=True), name
    if ultradelta.HAS_ML_DTYPES:
        import ml_dtypes

        auto = ultradelta.load(llama["base"], a)
        for name, (_, _, b) in written.items():
            assert auto[name].dtype == ml_dtypes.bfloat16
            assert auto[name].tobytes() == b
            assert np.array_equal(auto[name].astype(np.float32), f32[name], equal_nan=True)
    else:
        auto = ultradelta.load(llama["base"], a)
        assert all(v.dtype == np.uint16 for v in auto.values())
        with pytest.raises(ultradelta.InvalidOptionError, match="ml_dtypes"):
            ultradelta.load(llama["base"], a, bf16="ml_dtypes")


def test_sharded_checkpoints(tmp_path, bert, cli):
    """A sharded base and fine-tune (3 shards each) compress and rebuild like the single-file ones."""
    base = read_safetensors_folder(bert["base"])
    ft = read_safetensors_folder(bert["sre"])
    for src, dst in ((bert["base"], tmp_path / "base"), (bert["sre"], tmp_path / "sre")):
        tensors = base if src == bert["base"] else ft
        write_sharded(dst, tensors, 3)
        shutil.copy(src / "config.json", dst / "config.json")
    a_sharded = tmp_path / "sharded.udelta"
    a_single = tmp_path / "single.udelta"
    ultradelta.compress(tmp_path / "base", tmp_path / "sre", a_sharded)
    ultradelta.compress(bert["base"], bert["sre"], a_single)
    # The same tensors in another layout: the same records (the base fingerprint ignores the layout).
    ins_sharded = ultradelta.inspect(a_sharded)
    ins_single = ultradelta.inspect(a_single)
    assert ins_sharded["tensors"] == ins_single["tensors"]
    # The sharded archive applies to the single-file base too, and load equals apply, sharded output included.
    out = tmp_path / "rebuilt"
    ultradelta.apply(tmp_path / "base", a_sharded, out, max_shard_bytes=200_000)
    assert len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "model.safetensors.index.json").is_file()
    written = read_safetensors_folder(out)
    for b in (tmp_path / "base", bert["base"]):
        loaded = ultradelta.load(b, a_sharded)
        assert list(loaded) == list(written)
        for name, (_, shape, raw) in written.items():
            assert loaded[name].tobytes() == raw, name


def test_a_vocabulary_grown_by_added_tokens(tmp_path, llama, cli):
    """A fine-tune whose token embedding gained two rows (added tokens): compress stores them whole beside the
    base rows' delta (record kind 18), and load gives the bytes the CLI's apply writes, the added rows exact."""
    ft = read_safetensors_folder(llama["drunk"])
    name = next(n for n in ft if n.endswith("embed_tokens.weight"))
    dtype, (rows, cols), raw = ft[name]
    added = bytes((i * 37) % 251 for i in range(2 * cols * 2))
    ft[name] = (dtype, (rows + 2, cols), raw + added)
    grown = tmp_path / "grown"
    grown.mkdir()
    write_safetensors(grown / "model.safetensors", ft)
    shutil.copy(llama["drunk"] / "config.json", grown / "config.json")
    a = tmp_path / "grown.udelta"
    ultradelta.compress(llama["base"], grown, a)
    entry = next(t for t in ultradelta.inspect(a)["tensors"] if t["name"] == name)
    assert entry["kind"] == "appended-rows" and entry["base_rows"] == rows
    out = tmp_path / "rebuilt"
    run_cli(cli, "apply", "--base", llama["base"], "--output", out, a)
    written = read_safetensors_folder(out)
    assert written[name][1] == (rows + 2, cols)
    assert written[name][2][-len(added):] == added
    loaded = ultradelta.load(llama["base"], a, bf16="raw")
    for n, (_, shape, b) in written.items():
        assert loaded[n].shape == shape and loaded[n].tobytes() == b, n
