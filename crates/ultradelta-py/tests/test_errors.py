"""One exception class per cause, each carrying the command line's one-line message."""

import shutil

import pytest

import ultradelta
from conftest import cli_error_line, run_cli


@pytest.fixture()
def archive(tmp_path, bert):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    return a


def test_classes():
    assert issubclass(ultradelta.InvalidOptionError, ValueError)
    assert issubclass(ultradelta.UltraDeltaIOError, OSError)
    for c in (
        ultradelta.CorruptArchiveError,
        ultradelta.WrongBaseError,
        ultradelta.InvalidOptionError,
        ultradelta.UltraDeltaIOError,
    ):
        assert issubclass(c, ultradelta.UltraDeltaError)


def test_corrupt_archive(tmp_path, archive, bert, cli):
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record: its checksum fails
    bad = tmp_path / "bad.udelta"
    bad.write_bytes(bytes(data))
    with pytest.raises(ultradelta.CorruptArchiveError) as e:
        ultradelta.verify(bad)
    r = run_cli(cli, "verify", bad, check=False)
    assert r.returncode == 3
    assert str(e.value) == cli_error_line(r)
    assert "\n" not in str(e.value)
    # load checks the same way, before handing out a wrong tensor
    with pytest.raises(ultradelta.CorruptArchiveError):
        ultradelta.load(bert["base"], bad)
    # a truncated archive is refused when opened
    short = tmp_path / "short.udelta"
    short.write_bytes(bytes(data[:100]))
    with pytest.raises(ultradelta.CorruptArchiveError) as e:
        ultradelta.inspect(short)
    assert str(e.value) == cli_error_line(run_cli(cli, "inspect", short, check=False))


def test_wrong_base(tmp_path, archive, bert, cli):
    with pytest.raises(ultradelta.WrongBaseError) as e:
        ultradelta.load(bert["jobs"], archive)
    r = run_cli(cli, "apply", "--base", bert["jobs"], archive, "-o", tmp_path / "x", check=False)
    assert r.returncode != 0
    assert str(e.value) == cli_error_line(r)
    assert "made for a different base checkpoint" in str(e.value)
    with pytest.raises(ultradelta.WrongBaseError):
        ultradelta.apply(bert["jobs"], archive, tmp_path / "y")
    assert not (tmp_path / "y").exists()
    with pytest.raises(ultradelta.WrongBaseError):
        ultradelta.verify(archive, base=bert["jobs"])
    assert run_cli(cli, "verify", archive, "--base", bert["jobs"], check=False).returncode == 4


def test_changed_base_companion_file(tmp_path, archive, bert, cli):
    """A companion file stored against the base's (the generated testbed's vocab.txt is the base's) needs that file
    unchanged: a base folder whose copy differs is a wrong base, with the command line's message."""
    assert "vocab.txt" in ultradelta.inspect(archive)["files_against_base"]
    base = tmp_path / "base"
    shutil.copytree(bert["base"], base)
    with open(base / "vocab.txt", "ab") as f:
        f.write(b"extra\n")
    with pytest.raises(ultradelta.WrongBaseError) as e:
        ultradelta.Rebuilder(base, archive)
    r = run_cli(cli, "apply", "--base", base, archive, "-o", tmp_path / "x", check=False)
    assert r.returncode != 0 and not (tmp_path / "x").exists()
    line = cli_error_line(r)
    assert line.endswith(" (compress --self-contained stores companion files whole)")
    assert str(e.value) == line.replace("compress --self-contained", "compress with self_contained=True")
    assert '"vocab.txt"' in str(e.value)
    assert run_cli(cli, "verify", archive, "--base", base, check=False).returncode == 4


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"bits": 300}, "option bits: expected an integer 0-255"),
        ({"sparsity": "high"}, "option sparsity: expected a number"),
        ({"spartisy": 0.9}, "unknown option spartisy"),
        ({"method": "zip"}, 'option method: "zip" is not one of'),
        ({"rescale": "local"}, 'option rescale: "local" is not one of: global, per-tensor'),
        ({"preset": "paper", "sparsity": 0.9}, "option sparsity cannot be combined with preset"),
        ({"tngr": True, "no_tngr": True}, "contradict"),
        ({"gamma_clamp": (0.5, 1.0)}, "add tngr=True"),
        ({"family": "nope"}, 'unknown family "nope"'),
    ],
)
def test_invalid_option(tmp_path, bert, options, needle):
    with pytest.raises(ultradelta.InvalidOptionError, match=None) as e:
        ultradelta.compress(bert["base"], bert["sre"], tmp_path / "x.udelta", **options)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.udelta").exists()


def test_invalid_option_message_is_the_clis_with_the_keyword(tmp_path, bert, cli):
    with pytest.raises(ultradelta.InvalidOptionError) as e:
        ultradelta.compress(bert["base"], bert["sre"], tmp_path / "x.udelta", sparsity=1.5)
    r = run_cli(cli, "compress", "--base", bert["base"], "--finetuned", bert["sre"], "-o", tmp_path / "y", "--sparsity", "1.5", check=False)
    line = cli_error_line(r)
    assert line.endswith("(set by --sparsity)")
    assert str(e.value) == line.replace("(set by --sparsity)", "(set by sparsity=)")


def test_io_errors(tmp_path, archive, bert, cli):
    missing = tmp_path / "missing.udelta"
    with pytest.raises(ultradelta.UltraDeltaIOError) as e:
        ultradelta.inspect(missing)
    assert str(e.value) == cli_error_line(run_cli(cli, "inspect", missing, check=False))
    with pytest.raises(ultradelta.UltraDeltaIOError):
        ultradelta.load(tmp_path / "no-base", archive)
    with pytest.raises(ultradelta.UltraDeltaIOError):
        ultradelta.compress(bert["base"], tmp_path / "no-ft", tmp_path / "z.udelta")
    # a folder where the archive should be
    with pytest.raises(ultradelta.UltraDeltaIOError):
        ultradelta.verify(tmp_path)


def test_bf16_mode_is_checked(archive, bert):
    with pytest.raises(ultradelta.InvalidOptionError, match="option bf16"):
        ultradelta.load(bert["base"], archive, bf16="half")
