"""UltraDelta: data-free delta compression of fine-tuned models (NeurIPS 2025), from Python.

The same engine as the ``ultradelta`` command line (a Rust extension; the GIL is released while it works):

- :func:`compress` writes an archive byte-identical to ``ultradelta compress``'s and returns its ``--json`` report;
  :func:`compress_many` one per fine-tune of a base (TNGR across them with ``tngr=True``);
- :func:`apply` rebuilds the fine-tuned model folder (weights, metadata and every companion file);
- :func:`inspect`, :func:`verify` and :func:`evaluate` return what ``inspect --json``, ``verify --json`` and
  ``eval --json`` print; :func:`export_lora` writes a ``lowrank`` archive's factors as a PEFT LoRA adapter;
- :func:`load` rebuilds the tensors in memory as numpy arrays (exactly the bytes :func:`apply` writes),
  :func:`iter_tensors` one at a time, :func:`load_torch` as PyTorch tensors for ``model.load_state_dict``.

Long calls (:func:`compress`, :func:`compress_many`, :func:`apply`, :func:`verify`, :func:`evaluate`) take
``progress=callable(stage, done, total)``, pass their notes (the command line's informational lines) to the
``logging`` logger ``"ultradelta"`` at level INFO and return them under ``"notes"``, and stop between two tensors on Ctrl-C (``KeyboardInterrupt``) or when the callback
raises, removing what they had started to write.

Errors are :class:`UltraDeltaError` subclasses, one per cause (:class:`CorruptArchiveError`,
:class:`WrongBaseError`, :class:`InvalidOptionError`, :class:`UltraDeltaIOError`), with the command line's
one-line message.

bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays when ``ml_dtypes`` is installed
(:data:`HAS_ML_DTYPES`); otherwise as raw ``uint16`` bit patterns. Pass ``bf16="float32"`` for float32 arrays
(exact: every bfloat16 is a float32) or ``bf16="raw"`` for the bit patterns in any case.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

from . import _native
from ._errors import (
    CorruptArchiveError,
    InvalidOptionError,
    UltraDeltaError,
    UltraDeltaIOError,
    WrongBaseError,
)

try:  # optional: numpy dtypes for bfloat16 and the 8-bit floats
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    _ml_dtypes = None

__all__ = [
    "compress",
    "compress_many",
    "export_lora",
    "evaluate",
    "apply",
    "inspect",
    "verify",
    "load",
    "iter_tensors",
    "load_torch",
    "Rebuilder",
    "COMPRESS_OPTIONS",
    "HAS_ML_DTYPES",
    "UltraDeltaError",
    "CorruptArchiveError",
    "WrongBaseError",
    "InvalidOptionError",
    "UltraDeltaIOError",
]

__version__: str = _native.__version__

#: The keyword options :func:`compress` takes: the command line's flags in snake_case.
COMPRESS_OPTIONS: Tuple[str, ...] = tuple(_native.COMPRESS_OPTIONS)

#: True when ``ml_dtypes`` is importable, so that ``bf16="auto"`` gives ``ml_dtypes.bfloat16`` arrays
#: (otherwise raw ``uint16`` bit patterns).
HAS_ML_DTYPES: bool = _ml_dtypes is not None

PathLike = Union[str, "os.PathLike[str]"]

#: A progress callback: ``progress(stage, done, total)``, ``stage`` being ``"copying views"``, ``"analysing
#: deltas"``, ``"budget search"`` (once per setting a budget search tries), ``"compressing"``, ``"rebuilding"`` or
#: ``"verifying"``, ``done`` and ``total`` its units (tensor elements).
ProgressCallback = Callable[[str, int, int], Any]

_BF16_MODES = ("auto", "ml_dtypes", "raw", "float32")

_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}


def compress(
    base: PathLike,
    finetuned: PathLike,
    output: PathLike,
    *,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Compresses ``finetuned`` against ``base`` into the archive ``output``.

    ``options`` are the command line's ``compress`` flags in snake_case, with the same defaults and checks
    (:data:`COMPRESS_OPTIONS`): ``sparsity=0.97``, ``bits=3`` (default: the model family's), ``quant_fit="mse"``,
    ``lowrank_part=False`` and ``row_subset=False`` (default: the model family's, on for BERT), ``seed=0``, ``method="ultradelta"``,
    ``preset="paper"``, ``no_msa=True``, ``keep=["*.embeddings.*"]``, ``target_ratio=50.0``, ... A glob option
    takes a string or a list of strings; ``None`` means "not given". The archive is byte-identical to the one
    ``ultradelta compress`` writes with the same flags.

    ``progress(stage, done, total)``, if given, is called from this thread when a stage starts (``done == 0``; the
    stage waits for the call), about ten times a second while it advances, and when it ends (``done == total``); the notes (tensor selection, what was not paired,
    ...) go to the ``"ultradelta"`` logger. Ctrl-C, or an exception raised by ``progress``, stops the work at the
    next tensor and is raised here; no archive is left behind (nor a partial file).

    Returns the ``compress --json`` report: ``{"report": ..., "ratio": ..., "bytes": ..., "codec": ..., "notes":
    [...]}``.

    Raises :class:`InvalidOptionError` (unknown or bad option), :class:`WrongBaseError` (the checkpoints do not
    match), :class:`UltraDeltaIOError` (unreadable input, output exists without ``force=True``).
    """
    text = _native.compress(
        os.fspath(base), os.fspath(finetuned), os.fspath(output), bool(force), options, progress
    )
    return json.loads(text)


def compress_many(
    base: PathLike,
    finetuned: "list[PathLike]",
    output_dir: PathLike,
    *,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Compresses each of ``finetuned`` (fine-tunes of one ``base``) into its own archive in ``output_dir``
    (``<fine-tune folder name>.udelta``), as ``ultradelta compress --finetuned A B ... --output-dir DIR``: with
    ``tngr=True`` the trace-norm-guided rescaling is computed across all of them, as the paper does for a set of
    tasks. ``options``, ``force`` and ``progress`` as in :func:`compress`.

    Returns ``{"archives": [one compress --json object per fine-tune, in order], "notes": [...]}``.
    """
    text = _native.compress_many(
        os.fspath(base),
        [os.fspath(f) for f in finetuned],
        os.fspath(output_dir),
        bool(force),
        options,
        progress,
    )
    return json.loads(text)


def export_lora(archive: PathLike, output: PathLike, *, force: bool = False) -> str:
    """Writes the low-rank factors of a ``method="lowrank"`` archive as a PEFT LoRA adapter folder ``output``
    (``adapter_model.safetensors``, ``adapter_config.json``), as ``compress --lora-out``; returns the folder. The
    adapter carries the compressed linear layers' deltas only (tensors the archive keeps without loss are not in
    it). Raises :class:`InvalidOptionError` for an archive of another method or without factors."""
    return os.fspath(_native.export_lora(os.fspath(archive), os.fspath(output), bool(force)))


def evaluate(
    base: PathLike,
    finetuned: PathLike,
    archive: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
) -> Dict[str, Any]:
    """How close the rebuilt model is to the fine-tune it was made from, tensor by tensor (the delta's and the
    weight's relative error and cosine), without writing anything: the ``ultradelta eval --json`` object, with
    ``"notes"``. Raises :class:`WrongBaseError` when ``base`` is not the archive's base or a tensor of ``finetuned``
    differs from the archive's in shape or dtype. ``progress`` as in :func:`compress`."""
    text = _native.evaluate(os.fspath(base), os.fspath(finetuned), os.fspath(archive), progress)
    return json.loads(text)


def apply(
    base: PathLike,
    archive: PathLike,
    output: PathLike,
    force: bool = False,
    *,
    max_shard_bytes: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
) -> Dict[str, Any]:
    """Rebuilds the fine-tuned checkpoint folder ``output`` from ``base`` and ``archive``, as ``ultradelta
    apply`` does: safetensors weights (sharded above ``max_shard_bytes``, default 5 GB), the fine-tune's
    metadata and every companion file (``config.json``, tokenizer files, subfolders such as ``1_Pooling/``). The
    folder appears only when complete: Ctrl-C, or an exception raised by ``progress``, stops at the next tensor
    and leaves no folder. ``progress`` and the notes as in :func:`compress`.

    Returns ``{"output": folder, "tensors": count, "files": [companion file names], "notes": [...]}``.
    """
    text = _native.apply(
        os.fspath(base),
        os.fspath(archive),
        os.fspath(output),
        bool(force),
        max_shard_bytes,
        progress,
    )
    return json.loads(text)


def inspect(archive: PathLike) -> Dict[str, Any]:
    """What the archive holds and what it costs: the ``ultradelta inspect --json`` object (method, parameters,
    ratios, per-tensor entries, companion files). Decodes no record."""
    return json.loads(_native.inspect(os.fspath(archive)))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise UltraDeltaIOError(f"{path}: {e.strerror or e}") from e
    return h.hexdigest()


def verify(
    archive: PathLike,
    base: Optional[PathLike] = None,
    *,
    progress: Optional[ProgressCallback] = None,
) -> Dict[str, Any]:
    """Decodes every record and companion file of ``archive`` and checks every checksum and limit; with
    ``base``, also that it applies to that base (every tensor rebuilt in memory, nothing written).

    Returns the ``ultradelta verify --json`` object: ``{"archive", "ok": True, "report", "sha256", "base"}``, with
    ``"notes"``. ``progress`` as in :func:`compress`.
    Raises :class:`CorruptArchiveError`, :class:`WrongBaseError` or :class:`UltraDeltaIOError` (the
    command line's exit statuses 3, 4 and 1).
    """
    a = os.fspath(archive)
    out = json.loads(_native.verify(a, None if base is None else os.fspath(base), progress))
    out["sha256"] = _sha256(a)
    return out


def _check_bf16(bf16: str) -> None:
    if bf16 not in _BF16_MODES:
        raise InvalidOptionError(
            f"option bf16: {bf16!r} is not one of: {', '.join(_BF16_MODES)}"
        )
    if bf16 == "ml_dtypes" and _ml_dtypes is None:
        raise InvalidOptionError(
            'option bf16: "ml_dtypes" needs the ml_dtypes package (pip install ml_dtypes); '
            'use bf16="raw" or bf16="float32"'
        )


def _to_numpy(dtype: str, shape: Tuple[int, ...], buf: bytearray, bf16: str) -> np.ndarray:
    """Views the rebuilt bytes ``buf`` as an array (no copy, except for ``bf16="float32"``)."""
    if dtype == "BF16":
        mode = bf16
        if mode == "auto":
            mode = "ml_dtypes" if _ml_dtypes is not None else "raw"
        raw = np.frombuffer(buf, dtype="<u2").reshape(shape)
        if mode == "raw":
            return raw
        if mode == "float32":
            return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return raw.view(_ml_dtypes.bfloat16)
    try:
        dt = _NUMPY_DTYPES[dtype]
    except KeyError:  # pragma: no cover - every dtype the format has is listed
        raise CorruptArchiveError(f"unsupported dtype {dtype}") from None
    return np.frombuffer(buf, dtype=dt).reshape(shape)


class Rebuilder:
    """A base checkpoint and an archive, checked against each other (the base's fingerprint, every tensor's
    shape and dtype, the companion file names) as :func:`apply` checks them, from which tensors are rebuilt in
    memory one at a time. Each tensor is the one :func:`apply` writes, byte for byte.

    >>> r = Rebuilder("base/", "sre.udelta")        # doctest: +SKIP
    >>> w = r["encoder.layer.0.attention.self.query.weight"]   # doctest: +SKIP
    """

    def __init__(self, base: PathLike, archive: PathLike, *, bf16: str = "auto") -> None:
        _check_bf16(bf16)
        self._native = _native.Loader(os.fspath(base), os.fspath(archive))
        self.bf16 = bf16

    def names(self) -> list:
        """Tensor names, in the rebuilt checkpoint's order."""
        return self._native.names()

    def __len__(self) -> int:
        return len(self._native.names())

    def __contains__(self, name: object) -> bool:
        return name in self._native.names()

    def info(self, name: str) -> Tuple[str, Tuple[int, ...], int]:
        """``(safetensors dtype name, shape, byte size)`` of tensor ``name``."""
        dtype, shape, nbytes = self._native.info(name)
        return dtype, tuple(shape), nbytes

    @property
    def metadata(self) -> Dict[str, str]:
        """The fine-tune's safetensors ``__metadata__``."""
        return dict(self._native.metadata())

    def files(self) -> list:
        """Companion file names (``config.json``, ``1_Pooling/config.json``, ...)."""
        return self._native.files()

    def read_file(self, name: str) -> bytes:
        """The bytes of companion file ``name``."""
        return bytes(self._native.read_file(name))

    def raw(self, name: str) -> bytearray:
        """Tensor ``name``'s rebuilt bytes (little-endian, in its dtype): what :func:`apply` writes for it."""
        return self._native.read(name)

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, _ = self.info(name)
        return _to_numpy(dtype, shape, self._native.read(name), self.bf16)

    def __iter__(self) -> Iterator[Tuple[str, np.ndarray]]:
        for name in self._native.names():
            yield name, self[name]


def iter_tensors(
    base: PathLike, archive: PathLike, *, bf16: str = "auto"
) -> Iterator[Tuple[str, np.ndarray]]:
    """Yields ``(name, array)`` for every tensor of the rebuilt model, one at a time, in checkpoint order.

    Only the tensor being yielded is in memory (plus the memory-mapped base): a caller that keeps no reference
    to earlier arrays never holds two copies of the model, whatever its size. ``bf16`` as in :func:`load`.
    """
    return iter(Rebuilder(base, archive, bf16=bf16))


def load(base: PathLike, archive: PathLike, *, bf16: str = "auto") -> Dict[str, np.ndarray]:
    """The rebuilt fine-tuned model's tensors in memory, ``{name: numpy.ndarray}`` in checkpoint order, without
    writing a folder. Each array holds exactly the bytes :func:`apply` writes for that tensor, in the
    checkpoint's dtype (writable, little-endian).

    ``bf16`` says how bfloat16 tensors come back: ``"auto"`` (``ml_dtypes.bfloat16`` when ``ml_dtypes`` is
    installed, else ``"raw"``), ``"ml_dtypes"``, ``"raw"`` (``uint16`` bit patterns) or ``"float32"``.

    Raises :class:`WrongBaseError` before rebuilding anything if ``archive`` was made for another base.
    """
    return dict(iter_tensors(base, archive, bf16=bf16))


_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def load_torch(base: PathLike, archive: PathLike) -> "Dict[str, Any]":
    """The rebuilt tensors as CPU ``torch.Tensor`` s in the checkpoint's dtypes (bfloat16 included), ready for
    ``model.load_state_dict``. Each tensor views its own rebuilt buffer (no second copy). Needs PyTorch."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("load_torch needs PyTorch (pip install torch)") from e
    r = Rebuilder(base, archive)
    out: Dict[str, Any] = {}
    for name in r.names():
        dtype, shape, nbytes = r.info(name)
        tdtype = getattr(torch, _TORCH_DTYPES[dtype])
        if nbytes == 0:
            out[name] = torch.empty(shape, dtype=tdtype)
            continue
        buf = r.raw(name)
        out[name] = torch.frombuffer(buf, dtype=tdtype).reshape(shape)
    return out
