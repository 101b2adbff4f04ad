"""Launch configuration of the register-table kernels (CUDA-core GEMV and tensor-core)."""

from __future__ import annotations

import dataclasses

from pallas_kernels._src import tuning

KINDS = ("gemv", "mma")
DECODES = ("prmt", "shfl")
# The GEMV kernel multiplies on CUDA cores: M multiply-adds per weight on top of
# ~2.7 instructions of decode and bookkeeping (3.56 in all at M = 1, SASS in
# docs/benchmarks.md). Past a few rows of x the tensor cores are cheaper.
MAX_GEMV_ROWS = 8
# Programs wanted per launch: about four per SM of an H100 or H200 (132 SMs).
TARGET_PROGRAMS = 528


@dataclasses.dataclass(frozen=True, kw_only=True)
class LutConfig:
  """Launch parameters of the register-table 4-bit kernels.

  A chunk is one quantization block of at most 64 weights (8 uint32 words of
  a row). ``"gemv"``: a program owns a K slice of ``chunks`` chunks and walks
  row tiles of ``block_n`` rows (``groups`` programs along N); the slices'
  float32 partial sums are added afterwards. ``"mma"``: a program owns
  ``block_n`` rows of W and ``block_m`` rows of x and walks its share of K,
  ``chunks`` chunks per step; ``split_k`` programs share a tile.

  Attributes:
    kind: ``"gemv"`` (CUDA-core multiply-adds, few rows of x) or ``"mma"``
      (tensor-core dot with the decoded weight as the left operand).
    block_n: rows of W per program (power of two).
    block_m: rows of x per program (``"mma"``; power of two >= 16).
    chunks: ``"gemv"``: chunks per K slice; ``"mma"``: chunks per step.
    split_k: ``"mma"``: programs per output tile along K.
    num_warps, num_stages: Triton launch parameters.
    prefetch: steps of weight bytes loaded ahead of the one being decoded
      (0 to 3; ``True`` counts as 1),
      so ``prefetch + 1`` steps of bytes are in flight per program.
    decode: ``"shfl"`` (float32 table in the lanes of each half-warp, one
      warp shuffle per code) or ``"prmt"`` (16-bit table in byte permutes).
    groups: ``"gemv"``: programs along N (0: enough for ``TARGET_PROGRAMS``).
  """

  kind: str = "gemv"
  block_n: int = 16
  block_m: int = 16
  chunks: int = 16
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 1
  prefetch: int = 1
  decode: str = "shfl"
  groups: int = 0

  def __post_init__(self):
    if self.decode not in DECODES:
      raise ValueError(f"`decode` must be one of {DECODES}, got {self.decode!r}.")
    if self.kind not in KINDS:
      raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")
    tuning.check_powers_of_two(self, ("block_n", "block_m", "chunks", "num_warps"))
    if self.kind == "mma" and (self.block_m < 16 or self.block_n < 16):
      raise ValueError(f"`block_m` and `block_n` must be >= 16 for the tensor-core kernel, "
                       f"got {self.block_m} and {self.block_n}.")
    if self.groups < 0:
      raise ValueError(f"`groups` must be >= 0, got {self.groups}.")
    if not 0 <= int(self.prefetch) <= 3:
      raise ValueError(f"`prefetch` must be 0..3, got {self.prefetch!r}.")
    if self.split_k < 1:
      raise ValueError(f"`split_k` must be >= 1, got {self.split_k}.")

  def name(self) -> str:
    m = f"m{self.block_m}," if self.kind == "mma" else ""
    g = f",g{self.groups}" if self.groups else ""
    return (f"{self.kind},{m}n{self.block_n},c{self.chunks},s{self.split_k}{g},w{self.num_warps},"
            f"st{self.num_stages}{self._prefetch_name()},{self.decode}")

  def _prefetch_name(self) -> str:
    depth = int(self.prefetch)
    return "" if depth == 0 else ",pf" if depth == 1 else f",pf{depth}"


def row_splits(groups: int, tiles: int, other_programs: int) -> int:
  """Programs along N of a kernel that walks row tiles: ``groups`` if set, else enough that
  ``other_programs`` times them reach ``TARGET_PROGRAMS``, at most one per tile."""
  return groups or max(1, min(tiles, -(-TARGET_PROGRAMS // other_programs)))


def _pow2_divisor(n: int) -> int:
  return n & -n


def fit(config: LutConfig, m: int, n: int, num_chunks: int) -> LutConfig:
  """``config`` adjusted to the shape: whole steps along K, no idle splits."""
  chunks = max(1, min(config.chunks, _pow2_divisor(num_chunks)))
  steps = num_chunks // chunks
  split = max(1, min(config.split_k, steps))
  block_m = config.block_m
  if config.kind == "mma":
    block_m = max(16, min(block_m, 1 << max(0, (m - 1).bit_length())))
  return dataclasses.replace(config, chunks=chunks, split_k=split, block_m=block_m)
