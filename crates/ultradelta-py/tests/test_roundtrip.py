"""Round trips, and equality with the command line: the same archive bytes, the same reports, the same tensors."""

import json
from pathlib import Path

import numpy as np
import pytest

import ultradelta
from conftest import run_cli
from _st import read_safetensors_folder


def _normalise_report(report: dict) -> dict:
    """The compress report without the output path (the two runs write different files)."""
    r = json.loads(json.dumps(report))
    r["report"].pop("output", None)
    r.pop("notes", None)  # the command line prints them on stderr
    return r


def _without_notes(report: dict) -> dict:
    """A report without the notes the Python calls add (the command line prints them on stderr)."""
    assert isinstance(report.pop("notes"), list)
    return report


@pytest.mark.parametrize(
    "options,flags",
    [
        ({}, []),
        (
            {"sparsity": 0.9, "bits": 3, "seed": 7, "no_msa": True, "keep": ["*embeddings*"]},
            ["--sparsity", "0.9", "--bits", "3", "--seed", "7", "--no-msa", "--keep", "*embeddings*"],
        ),
        ({"preset": "paper"}, ["--preset", "paper"]),
        ({"method": "dare", "sparsity": 0.8}, ["--method", "dare", "--sparsity", "0.8"]),
        ({"positions": "seeded", "codec": "auto"}, ["--positions", "seeded", "--codec", "auto"]),
        ({"bits": 2, "quant_fit": "mse-unbiased"}, ["--bits", "2", "--quant-fit", "mse-unbiased"]),
        (
            {"embeddings": "keep", "position_embeddings": "compress"},
            ["--embeddings", "keep", "--position-embeddings", "compress"],
        ),
        ({"lowrank_part": False}, ["--no-lowrank-part"]),
        ({"lowrank_part": True, "sparsity": 0.8}, ["--lowrank-part", "--sparsity", "0.8"]),
        ({"row_subset": False}, ["--no-row-subset"]),
    ],
    ids=[
        "defaults", "options", "preset", "dare", "codecs", "quantizer", "selection", "no-lowrank", "lowrank",
        "no-rows",
    ],
)
def test_compress_writes_the_clis_bytes_and_report(tmp_path, bert, cli, options, flags):
    py_out = tmp_path / "py.udelta"
    cli_out = tmp_path / "cli.udelta"
    report = ultradelta.compress(bert["base"], bert["sre"], py_out, **options)
    r = run_cli(cli, "compress", "--base", bert["base"], "--finetuned", bert["sre"], "-o", cli_out, "--json", *flags)
    assert py_out.read_bytes() == cli_out.read_bytes()
    assert _normalise_report(report) == _normalise_report(json.loads(r.stdout))
    assert report["report"]["output"] == str(py_out)


def test_inspect_and_verify_equal_the_cli(tmp_path, bert, cli):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    assert ultradelta.inspect(a) == json.loads(run_cli(cli, "inspect", a, "--json").stdout)
    assert _without_notes(ultradelta.verify(a)) == json.loads(run_cli(cli, "verify", a, "--json").stdout)
    with_base = json.loads(run_cli(cli, "verify", a, "--base", bert["base"], "--json").stdout)
    assert _without_notes(ultradelta.verify(a, base=bert["base"])) == with_base
    assert with_base["report"]["rebuilt"] > 0


def test_apply_and_load_give_the_same_tensors_as_the_cli(tmp_path, bert, cli):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    out = tmp_path / "py-rebuilt"
    res = ultradelta.apply(bert["base"], a, out)
    assert Path(res["output"]) == out and res["tensors"] > 0
    run_cli(cli, "apply", "--base", bert["base"], a, "-o", tmp_path / "cli-rebuilt")
    py_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    cli_dir = tmp_path / "cli-rebuilt"
    cli_files = sorted(p.relative_to(cli_dir) for p in cli_dir.rglob("*") if p.is_file())
    assert py_files == cli_files
    for f in py_files:
        assert (out / f).read_bytes() == (cli_dir / f).read_bytes(), f
    written = read_safetensors_folder(out)
    loaded = ultradelta.load(bert["base"], a)
    assert list(loaded) == list(written)
    for name, (dtype, shape, raw) in written.items():
        arr = loaded[name]
        assert arr.shape == shape, name
        assert arr.tobytes() == raw, name
        assert arr.flags.writeable
    # The rebuilt model is the fine-tune's approximation, not the base.
    ft = read_safetensors_folder(bert["sre"])
    base = read_safetensors_folder(bert["base"])
    changed = [n for n in written if base[n][2] != ft[n][2]]
    assert changed and any(written[n][2] != base[n][2] for n in changed)


def test_apply_refuses_an_existing_output_unless_forced(tmp_path, bert):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    out = tmp_path / "out"
    ultradelta.apply(bert["base"], a, out)
    with pytest.raises(ultradelta.UltraDeltaIOError, match="output exists; force=True replaces it"):
        ultradelta.apply(bert["base"], a, out)
    ultradelta.apply(bert["base"], a, out, force=True)
    with pytest.raises(ultradelta.UltraDeltaIOError, match="output exists"):
        ultradelta.compress(bert["base"], bert["sre"], a)
    ultradelta.compress(bert["base"], bert["sre"], a, force=True)


def test_rebuilder_reads_one_tensor_and_the_companions(tmp_path, bert):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    r = ultradelta.Rebuilder(bert["base"], a)
    names = r.names()
    assert len(r) == len(names) and names[0] in r
    loaded = ultradelta.load(bert["base"], a)
    last = names[-1]
    assert np.array_equal(r[last], loaded[last])
    assert "config.json" in r.files()
    # Every companion file reads back as the fine-tune's, those stored against the base's files included.
    for name in r.files():
        assert r.read_file(name) == (Path(bert["sre"]) / name).read_bytes(), name
    against = ultradelta.inspect(a)["files_against_base"]
    assert against, "the generated testbed's fine-tune shares companion files with its base"
    with pytest.raises(KeyError, match="no tensor named"):
        r["no.such.tensor"]


def test_the_module_is_typed_and_documented():
    pkg = Path(ultradelta.__file__).parent
    assert (pkg / "__init__.pyi").is_file() and (pkg / "py.typed").is_file()
    for name in ultradelta.__all__:
        obj = getattr(ultradelta, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_compress_many_writes_the_clis_archives_with_tngr_across_the_fine_tunes(tmp_path, bert, cli):
    py_dir, cli_dir = tmp_path / "py", tmp_path / "cli"
    out = ultradelta.compress_many(bert["base"], [bert["sre"], bert["jobs"]], py_dir, tngr=True)
    run_cli(
        cli, "compress", "--base", bert["base"], "--finetuned", bert["sre"], "--finetuned", bert["jobs"],
        "--output-dir", cli_dir, "--tngr",
    )
    names = sorted(p.name for p in cli_dir.iterdir())
    assert names == ["jobs.udelta", "sre.udelta"]
    assert sorted(p.name for p in py_dir.iterdir()) == names
    for n in names:
        assert (py_dir / n).read_bytes() == (cli_dir / n).read_bytes(), n
    archives = out["archives"]
    assert [Path(a["report"]["output"]).name for a in archives] == ["sre.udelta", "jobs.udelta"]
    # TNGR: the fine-tune with the smallest trace norm keeps gamma 1, the other is scaled down.
    gammas = sorted(a["report"]["gamma"] for a in archives)
    assert gammas[1] == 1.0 and gammas[0] < 1.0, gammas
    assert any("gamma" in n for n in out["notes"]), out["notes"]
    with pytest.raises(ultradelta.InvalidOptionError):
        ultradelta.compress_many(bert["base"], [], tmp_path / "none")


def test_evaluate_and_export_lora_equal_the_cli(tmp_path, bert, cli):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    ev = ultradelta.evaluate(bert["base"], bert["sre"], a)
    assert _without_notes(ev) == json.loads(
        run_cli(cli, "eval", "--base", bert["base"], "--finetuned", bert["sre"], a, "--json").stdout
    )
    assert 0.0 < ev["compressed"]["delta_cosine"] <= 1.0
    with pytest.raises(ultradelta.WrongBaseError):
        ultradelta.evaluate(bert["sre"], bert["sre"], a)
    # LoRA: a lowrank archive's factors, the CLI's adapter files byte for byte; another method is refused.
    lr = tmp_path / "lr.udelta"
    ultradelta.compress(bert["base"], bert["sre"], lr, method="lowrank", rank=4)
    got = ultradelta.export_lora(lr, tmp_path / "py-lora")
    assert got == str(tmp_path / "py-lora")
    run_cli(
        cli, "compress", "--base", bert["base"], "--finetuned", bert["sre"], "-o", tmp_path / "cli-lr.udelta",
        "--method", "lowrank", "--rank", "4", "--lora-out", tmp_path / "cli-lora",
    )
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "py-lora" / f).read_bytes() == (tmp_path / "cli-lora" / f).read_bytes(), f
    with pytest.raises(ultradelta.InvalidOptionError, match="needs a lowrank archive"):
        ultradelta.export_lora(a, tmp_path / "no-lora")
    with pytest.raises(ultradelta.UltraDeltaIOError, match="output exists"):
        ultradelta.export_lora(lr, tmp_path / "py-lora")
    ultradelta.export_lora(lr, tmp_path / "py-lora", force=True)
