"""Type stubs of the ultradelta package (see the docstrings in __init__.py)."""

import os
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._errors import (
    CorruptArchiveError as CorruptArchiveError,
    InvalidOptionError as InvalidOptionError,
    UltraDeltaError as UltraDeltaError,
    UltraDeltaIOError as UltraDeltaIOError,
    WrongBaseError as WrongBaseError,
)

PathLike = Union[str, os.PathLike[str]]
Bf16Mode = Literal["auto", "ml_dtypes", "raw", "float32"]
ProgressCallback = Callable[[str, int, int], Any]

__version__: str
COMPRESS_OPTIONS: Tuple[str, ...]
HAS_ML_DTYPES: bool

def compress(
    base: PathLike,
    finetuned: PathLike,
    output: PathLike,
    *,
    force: bool = ...,
    progress: Optional[ProgressCallback] = ...,
    method: Optional[Literal["ultradelta", "dare", "magnitude", "bitdelta", "lowrank", "compeft", "quant"]] = ...,
    preset: Optional[Literal["paper"]] = ...,
    rank: Optional[int] = ...,
    compeft_alpha: Optional[float] = ...,
    target_ratio: Optional[float] = ...,
    target_size: Optional[int] = ...,
    no_quant: Optional[bool] = ...,
    positions: Optional[Literal["golomb", "seeded"]] = ...,
    values: Optional[Literal["packed", "entropy"]] = ...,
    codec: Optional[Literal["fixed", "auto"]] = ...,
    seed_trials: Optional[int] = ...,
    zstd_level: Optional[int] = ...,
    self_contained: Optional[bool] = ...,
    quant_fit: Optional[Literal["range", "mse", "mse-unbiased"]] = ...,
    lowrank_part: Optional[bool] = ...,
    row_subset: Optional[bool] = ...,
    tngr: Optional[bool] = ...,
    no_tngr: Optional[bool] = ...,
    sparsity: Optional[float] = ...,
    bits: Optional[int] = ...,
    step: Optional[float] = ...,
    seed: Optional[int] = ...,
    gamma: Optional[float] = ...,
    gamma_clamp: Optional[Tuple[float, float]] = ...,
    trace_on: Optional[Literal["compressed", "original"]] = ...,
    nuclear_norm: Optional[Literal["auto", "exact", "estimate"]] = ...,
    rescale_factor: Optional[float] = ...,
    rescale: Optional[Literal["global", "per-tensor"]] = ...,
    no_msa: Optional[bool] = ...,
    allocation: Optional[str] = ...,
    tier_spread: Optional[float] = ...,
    rd_power: Optional[float] = ...,
    no_dac: Optional[bool] = ...,
    compress: Union[str, Sequence[str], None] = ...,
    keep: Union[str, Sequence[str], None] = ...,
    drop: Union[str, Sequence[str], None] = ...,
    family: Optional[str] = ...,
    embeddings: Optional[Literal["compress", "keep", "drop"]] = ...,
    position_embeddings: Optional[Literal["drop", "compress", "keep"]] = ...,
) -> Dict[str, Any]: ...
def compress_many(
    base: PathLike,
    finetuned: Sequence[PathLike],
    output_dir: PathLike,
    *,
    force: bool = ...,
    progress: Optional[ProgressCallback] = ...,
    **options: Any,
) -> Dict[str, Any]: ...
def export_lora(archive: PathLike, output: PathLike, *, force: bool = ...) -> str: ...
def evaluate(
    base: PathLike,
    finetuned: PathLike,
    archive: PathLike,
    *,
    progress: Optional[ProgressCallback] = ...,
) -> Dict[str, Any]: ...
def apply(
    base: PathLike,
    archive: PathLike,
    output: PathLike,
    force: bool = ...,
    *,
    max_shard_bytes: Optional[int] = ...,
    progress: Optional[ProgressCallback] = ...,
) -> Dict[str, Any]: ...
def inspect(archive: PathLike) -> Dict[str, Any]: ...
def verify(
    archive: PathLike,
    base: Optional[PathLike] = ...,
    *,
    progress: Optional[ProgressCallback] = ...,
) -> Dict[str, Any]: ...

class Rebuilder:
    bf16: Bf16Mode
    def __init__(self, base: PathLike, archive: PathLike, *, bf16: Bf16Mode = ...) -> None: ...
    def names(self) -> List[str]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object) -> bool: ...
    def info(self, name: str) -> Tuple[str, Tuple[int, ...], int]: ...
    @property
    def metadata(self) -> Dict[str, str]: ...
    def files(self) -> List[str]: ...
    def read_file(self, name: str) -> bytes: ...
    def raw(self, name: str) -> bytearray: ...
    def __getitem__(self, name: str) -> npt.NDArray[Any]: ...
    def __iter__(self) -> Iterator[Tuple[str, npt.NDArray[Any]]]: ...

def iter_tensors(
    base: PathLike, archive: PathLike, *, bf16: Bf16Mode = ...
) -> Iterator[Tuple[str, npt.NDArray[Any]]]: ...
def load(base: PathLike, archive: PathLike, *, bf16: Bf16Mode = ...) -> Dict[str, npt.NDArray[Any]]: ...
def load_torch(base: PathLike, archive: PathLike) -> Dict[str, Any]: ...
