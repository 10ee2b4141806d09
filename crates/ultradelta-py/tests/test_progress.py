"""Long calls report progress to a callback and notes to the ``ultradelta`` logger, and stop cleanly on Ctrl-C or
an exception from the callback: nothing half-written is left, an output that existed is left as it was."""

import logging
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

import ultradelta
from _st import write_safetensors


class Recorder:
    """A progress callback that records its calls, and optionally raises at a given stage."""

    def __init__(self, raise_at=None, exc=None):
        self.calls = []
        self.raise_at = raise_at
        self.exc = exc

    def __call__(self, stage, done, total):
        self.calls.append((stage, done, total))
        if stage == self.raise_at:
            raise self.exc

    def runs(self):
        """The calls split into stages: a stage starts with a call at done = 0 (the callback hears of every stage
        before its work starts), or where the name changes."""
        out = []
        for call in self.calls:
            if not out or call[0] != out[-1][-1][0] or call[1] == 0:
                out.append([])
            out[-1].append(call)
        return out

    def stages(self):
        return [run[0][0] for run in self.runs()]


def _check_calls(rec):
    """Each stage is heard of at done = 0 and ends at done = total; in between `done` only grows."""
    for run in rec.runs():
        assert run[0][1] == 0, run
        assert run[-1][1] == run[-1][2], f"stage ended early: {run}"
        assert all(a[1] <= b[1] and a[2] == b[2] for a, b in zip(run, run[1:])), run


def _leftovers(folder: Path):
    """Hidden partial files or folders the writers use before publishing."""
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def test_compress_apply_and_verify_report_their_stages_and_notes(tmp_path, bert, caplog):
    a = tmp_path / "sre.udelta"
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="ultradelta"):
        report = ultradelta.compress(bert["base"], bert["sre"], a, progress=rec)
    assert rec.stages() == ["analysing deltas", "compressing"]
    _check_calls(rec)
    # The same notes the command line prints, in the report and in the log.
    notes = report["notes"]
    assert any("tensor selection" in n for n in notes), notes
    logged = [r.getMessage() for r in caplog.records if r.name == "ultradelta"]
    assert logged == notes
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "ultradelta")

    # A budget search: one stage per setting tried, then the usual two.
    rec = Recorder()
    report = ultradelta.compress(bert["base"], bert["sre"], tmp_path / "b.udelta", progress=rec, target_ratio=60)
    stages = rec.stages()
    searches = stages.count("budget search")
    assert searches == report["report"]["budget"]["evaluations"] and searches >= 2, stages
    assert stages[-2:] == ["analysing deltas", "compressing"], stages
    _check_calls(rec)

    rec = Recorder()
    res = ultradelta.apply(bert["base"], a, tmp_path / "out", progress=rec)
    assert rec.stages() == ["rebuilding"]
    _check_calls(rec)
    assert isinstance(res["notes"], list)

    rec = Recorder()
    out = ultradelta.verify(a, base=bert["base"], progress=rec)
    assert rec.stages() == ["verifying"] and out["ok"]
    _check_calls(rec)


class Stop(Exception):
    pass


def test_an_exception_from_the_callback_stops_compress_and_leaves_nothing(tmp_path, bert):
    a = tmp_path / "sre.udelta"
    rec = Recorder(raise_at="compressing", exc=Stop("enough"))
    with pytest.raises(Stop, match="enough"):
        ultradelta.compress(bert["base"], bert["sre"], a, progress=rec)
    assert not a.exists()
    assert _leftovers(tmp_path) == []
    # An existing archive is left as it was when a forced rewrite is stopped.
    ultradelta.compress(bert["base"], bert["sre"], a)
    before = a.read_bytes()
    with pytest.raises(Stop):
        ultradelta.compress(
            bert["base"], bert["sre"], a, force=True, sparsity=0.5,
            progress=Recorder(raise_at="compressing", exc=Stop()),
        )
    assert a.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_an_exception_from_the_callback_stops_apply_and_verify(tmp_path, bert):
    a = tmp_path / "sre.udelta"
    ultradelta.compress(bert["base"], bert["sre"], a)
    out = tmp_path / "out"
    with pytest.raises(Stop):
        ultradelta.apply(bert["base"], a, out, progress=Recorder(raise_at="rebuilding", exc=Stop()))
    assert not out.exists()
    assert _leftovers(tmp_path) == []
    with pytest.raises(Stop):
        ultradelta.verify(a, base=bert["base"], progress=Recorder(raise_at="verifying", exc=Stop()))


def test_a_bad_callback_is_an_invalid_option(tmp_path, bert):
    with pytest.raises(ultradelta.InvalidOptionError, match="option progress: expected a callable"):
        ultradelta.compress(bert["base"], bert["sre"], tmp_path / "a.udelta", progress=3)
    assert list(tmp_path.iterdir()) == []


def _big_pair(folder: Path, n_tensors=24, rows=1024, cols=1024):
    """A base and a fine-tune large enough that a budget search takes a while on any machine."""
    rng = np.random.default_rng(0)
    base, ft = {}, {}
    for i in range(n_tensors):
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        name = f"model.layers.{i}.mlp.up_proj.weight"
        d = 0.01 * rng.standard_normal((rows, cols), dtype=np.float32)
        base[name] = ("F32", [rows, cols], w.tobytes())
        ft[name] = ("F32", [rows, cols], (w + d).tobytes())
    for which, tensors in (("base", base), ("ft", ft)):
        d = folder / which
        d.mkdir()
        write_safetensors(d / "model.safetensors", tensors)
    return folder / "base", folder / "ft"


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_ctrl_c_stops_compress_at_the_next_tensor(tmp_path):
    base, ft = _big_pair(tmp_path)
    a = tmp_path / "a.udelta"
    main = threading.main_thread().ident
    started = threading.Event()

    def progress(stage, done, total):
        started.set()

    # SIGINT arrives while the main thread waits in the extension (or runs the callback): either way the default
    # handler's KeyboardInterrupt must stop the work, and the archive must not appear.
    killer = threading.Thread(target=lambda: (started.wait(30), signal.pthread_kill(main, signal.SIGINT)))
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ultradelta.compress(base, ft, a, target_ratio=300, progress=progress)
    finally:
        killer.join()
    assert not a.exists()
    assert _leftovers(tmp_path) == []
