"""The iterator holds one rebuilt tensor at a time, and the GIL is released while the engine works."""

import threading
import time
import tracemalloc

import numpy as np
import pytest

import ultradelta
from _st import write_safetensors

LAYERS = 24
SIDE = 256  # one tensor: 256 x 256 f32 = 256 KiB; the model: 24 of them = 6 MiB


def _model(folder, seed, base=None):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(LAYERS):
        name = f"encoder.layer.{i}.attention.self.query.weight"
        if base is None:
            w = rng.standard_normal((SIDE, SIDE), dtype=np.float32) * 0.05
        else:
            w = base[name] + rng.standard_normal((SIDE, SIDE), dtype=np.float32) * 0.002
        tensors[name] = w
    folder.mkdir(parents=True)
    write_safetensors(
        folder / "model.safetensors",
        {n: ("F32", w.shape, w.astype("<f4").tobytes()) for n, w in tensors.items()},
    )
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return tensors


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    base = _model(d / "base", 1)
    _model(d / "ft", 2, base)
    a = d / "ft.udelta"
    ultradelta.compress(d / "base", d / "ft", a)
    return d / "base", a


def test_iterator_holds_one_tensor_at_a_time(big):
    base, a = big
    tensor_bytes = SIDE * SIDE * 4
    model_bytes = LAYERS * tensor_bytes
    tracemalloc.start()
    try:
        n = 0
        for name, arr in ultradelta.iter_tensors(base, a):
            assert arr.nbytes == tensor_bytes
            n += 1
        _, peak_iter = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tracemalloc.start()
        everything = ultradelta.load(base, a)
        _, peak_load = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == LAYERS and len(everything) == LAYERS
    # The measurement sees the rebuilt buffers (load keeps all of them) ...
    assert peak_load >= model_bytes
    # ... and the iterator never holds more than two tensors (the one yielded, the next being made).
    assert peak_iter <= 2 * tensor_bytes + 256 * 1024, (peak_iter, tensor_bytes)


def test_the_gil_is_released_while_rebuilding(big):
    """While another thread rebuilds every tensor, this thread keeps running Python code."""
    base, a = big
    done = threading.Event()
    elapsed = {}

    def work():
        t = time.perf_counter()
        runs = 0
        # At least 3 runs and 0.1 s, so the ticks below have time to show the GIL is free.
        while runs < 3 or time.perf_counter() - t < 0.1:
            ultradelta.verify(a, base=base)
            runs += 1
        elapsed["s"] = time.perf_counter() - t
        done.set()

    ticks = 0
    th = threading.Thread(target=work)
    th.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    th.join()
    # With the GIL held for the whole verify, this loop could not tick during it: at most a few ticks around
    # the calls. Released, it ticks about once per millisecond (the sleep) all along.
    assert elapsed["s"] > 0.02
    assert ticks >= max(10, int(elapsed["s"] * 1000 * 0.2)), (ticks, elapsed)
