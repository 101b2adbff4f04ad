"""Launch configuration of the 4-bit matmul kernels: dataclass, heuristic, candidates."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels._src import tuning

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
LOOKUPS = ("select", "gather")
MAX_GEMV_ROWS = 8
# Programs wanted in flight: two per SM of an H100 (132 SMs) keeps HBM busy
# when each program streams its own slice of the weight.
_TARGET_PROGRAMS = 264


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatmulConfig:
  """Launch parameters of the Triton 4-bit matmul kernels.

  Forward (``x @ W.T``): a program owns ``block_m`` rows of x and ``block_n``
  rows of W and walks K in steps of ``block_k``. Transposed (``dy @ W``): a
  program owns ``block_m`` rows of dy and ``block_k`` columns of W and walks N
  in steps of ``block_n``. ``split_k`` splits the walked dimension over that
  many programs whose float32 partial sums are added afterwards.

  Attributes:
    block_m, block_n: tile sizes (powers of two, >= 16).
    block_k: K tile in elements (a power of two, a multiple of the blocksize).
    split_k: programs sharing one output tile.
    num_warps, num_stages: Triton launch parameters.
    lookup: ``"select"`` (a tree of selects on the nibble bits) or
      ``"gather"`` (loads from the 16-entry table).
    gemv: forward with at most 8 rows: multiply-adds on CUDA cores instead of
      tensor-core dots (``block_m`` is unused).
  """

  block_m: int = 16
  block_n: int = 64
  block_k: int = 256
  split_k: int = 1
  num_warps: int = 4
  num_stages: int = 3
  lookup: str = "select"
  gemv: bool = False

  def __post_init__(self):
    if self.lookup not in LOOKUPS:
      raise ValueError(f"`lookup` must be one of {LOOKUPS}, got {self.lookup!r}.")
    tuning.check_powers_of_two(self, ("block_m", "block_n", "block_k", "num_warps"))
    for name in ("block_m", "block_n", "block_k"):
      if getattr(self, name) < 16:
        raise ValueError(f"`{name}` must be >= 16 (tensor-core tile), got {getattr(self, name)}.")
    if self.split_k < 1:
      raise ValueError(f"`split_k` must be >= 1, got {self.split_k}.")

  def name(self) -> str:
    return (f"{'gemv,' if self.gemv else ''}m{self.block_m},n{self.block_n},k{self.block_k},"
            f"s{self.split_k},w{self.num_warps},st{self.num_stages},{self.lookup}")


def can_use_kernel(n: int, k: int, blocksize: int, dtype) -> bool:
  """The kernels need blocks inside rows (``K % blocksize == 0``) and float activations."""
  return (n > 0 and k > 0 and blocksize >= 16 and blocksize & (blocksize - 1) == 0
          and k % blocksize == 0 and jnp.dtype(dtype).name in SUPPORTED_DTYPES)


def _largest_pow2_divisor(n: int) -> int:
  return n & -n


def fit(config: MatmulConfig, m: int, n: int, k: int, blocksize: int,
        transpose: bool) -> MatmulConfig:
  """``config`` adjusted to the shape: the K tile divides K, splits are useful.

  A K tile must hold whole quantization blocks and divide K; the split count is
  capped by the number of steps along the walked dimension.
  """
  nkb = k // blocksize
  # blocksize >= 16 (can_use_kernel), so one block is already a valid tile.
  tkb = max(1, min(config.block_k // blocksize, _largest_pow2_divisor(nkb)))
  block_k = tkb * blocksize
  walked = -(-n // config.block_n) if transpose else nkb // (block_k // blocksize)
  split = max(1, min(config.split_k, walked))
  gemv = config.gemv and not transpose and m <= MAX_GEMV_ROWS
  return dataclasses.replace(config, block_k=block_k, split_k=split, gemv=gemv)


def _m_bucket(m: int) -> int:
  if m <= 4:
    return 4
  return min(256, max(16, 1 << (max(m, 1) - 1).bit_length()))


def heuristic(m: int, n: int, k: int, blocksize: int, transpose: bool) -> MatmulConfig:
  """A reasonable config when no measured one is recorded."""
  bucket = _m_bucket(m)
  if m <= 4 and not transpose:
    base = MatmulConfig(block_n=32, block_k=256, num_warps=4, num_stages=3, gemv=True)
  elif bucket <= 16:
    base = MatmulConfig(block_m=16, block_n=64, block_k=64, num_warps=4, num_stages=3)
  elif bucket <= 64:
    base = MatmulConfig(block_m=bucket, block_n=64, block_k=128, num_warps=4, num_stages=3)
  else:
    base = MatmulConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
  # Split the walked dimension until the grid fills the GPU.
  m_tiles = 1 if base.gemv else -(-m // base.block_m)
  out_tiles = -(-k // base.block_k) if transpose else -(-n // base.block_n)
  tiles = m_tiles * out_tiles
  split = 1
  while tiles * split < 2 * _TARGET_PROGRAMS and split < 16:
    split *= 2
  return fit(dataclasses.replace(base, split_k=split), m, n, k, blocksize, transpose)


def get_config(m: int, n: int, k: int, blocksize: int, dtype, transpose: bool,
               device_kind: str | None = None) -> MatmulConfig:
  """Measured config for this device kind and shape class if recorded, else the heuristic.

  Tuned entries live in ``pallas_kernels/data/matmul_4bit.json`` under
  ``"{fwd|bwd}/{dtype}/{blocksize}/m{bucket}/{n}x{k}"`` (exact shape) or
  ``"{fwd|bwd}/{dtype}/{blocksize}/m{bucket}"``.
  """
  head = f"{'bwd' if transpose else 'fwd'}/{jnp.dtype(dtype).name}/{blocksize}/m{_m_bucket(m)}"
  entry = (tuning.tuned_entry("matmul_4bit", device_kind, f"{head}/{n}x{k}")
           or tuning.tuned_entry("matmul_4bit", device_kind, head))
  if entry:
    return fit(MatmulConfig(**entry), m, n, k, blocksize, transpose)
  return heuristic(m, n, k, blocksize, transpose)


def candidate_configs(m: int, transpose: bool) -> list[MatmulConfig]:
  """The bounded search space swept by ``jaxfp4 bench --sweep``."""
  bucket = _m_bucket(m)
  out = []
  if bucket <= 16:
    gemvs = (False, True) if m <= MAX_GEMV_ROWS and not transpose else (False,)
    for gemv in gemvs:
      for bn in (32, 64, 128):
        for bk in (64, 128, 256):
          for split in (2, 4):
            out.append(MatmulConfig(block_m=16, block_n=bn, block_k=bk, split_k=split,
                                    num_warps=4, num_stages=3, gemv=gemv))
  elif bucket <= 128:
    for bn in (64, 128):
      for bk in (64, 128, 256):
        for split in (1, 2, 4):
          out.append(MatmulConfig(block_m=min(bucket, 64), block_n=bn, block_k=bk,
                                  split_k=split, num_warps=4, num_stages=3))
  else:
    for bm, bn, bk, w in ((128, 128, 64, 8), (128, 128, 128, 8), (128, 256, 64, 8),
                          (64, 128, 64, 4), (128, 64, 64, 4), (256, 128, 64, 8)):
      for stages in (3, 4):
        out.append(MatmulConfig(block_m=bm, block_n=bn, block_k=bk, num_warps=w,
                                num_stages=stages))
  return out


# Largest M for which the fused kernel beats dequantize + cuBLAS when nothing
# is recorded for the device (docs/benchmarks.md has the measured crossover).
_DEFAULT_MAX_FUSED_M = 128


def prefer_fused(m: int, transpose: bool, device_kind: str | None = None) -> bool:
  """Whether the fused kernel is expected to beat dequantize-then-dot at this M.

  Above the crossover the work is compute-bound and cuBLAS' tensor-core GEMM
  on a dequantized copy wins; the recorded crossover per device kind is the
  ``"max_fused_m/{fwd|bwd}"`` entry of ``matmul_4bit.json``.
  """
  entry = tuning.tuned_entry("matmul_4bit", device_kind, "max_fused_m")
  limit = _DEFAULT_MAX_FUSED_M
  if entry:
    limit = entry.get("bwd" if transpose else "fwd", limit)
  return m <= limit
