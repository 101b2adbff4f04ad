"""Tensor-core transposed product ``dy @ W`` against a packed 4-bit weight (the input
gradient of 9 to a few hundred rows).

The contraction runs over the weight's rows N, so the decoded weight is the right operand:
program ``(i, c, s)`` owns rows ``i`` of ``dy`` (``block_m``), the column slice ``c`` of K
(``chunks`` chunks, a chunk being one quantization block of at most 64 weights) and walks
the row tiles ``s, s + splits, ...`` of ``block_n`` rows. Per step and chunk it decodes the
tile ``[block_n, 64]`` as the forward tensor-core kernel (:mod:`mma`) does: the exact float32
table value from a warp shuffle times the block scale, rounded once to ``dy``'s 16-bit type,
joined in the row's own order, so that ``dot(dy[:, rows], tile)`` is the product with the
dequantized weight. The splits' float32 partial sums are added afterwards.

Contract: ``matmul_4bit_reference(dy, w, transpose=True)`` (the weight rounded once to
``dy.dtype``, float32 accumulation, one final rounding).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src import common
from pallas_kernels._src import lut_decode
from pallas_kernels._src.lut_matmul import scales as scales_lib
from pallas_kernels._src.lut_matmul.config import LutConfig, row_splits
from pallas_kernels._src.matmul_4bit import layout as layout_lib
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, check_operands

_MATMUL = (((1,), (0,)), ((), ()))  # [BM, BN] x [BN, C] -> [BM, C]
DEFAULT_CONFIG = LutConfig(kind="mma", block_m=64, block_n=64, chunks=2)


def _mma_t_kernel(dy_ref, table_ref, data_ref, *refs, fmt, cfg, m, n, nkb, splits, steps,
                  interpret):
  sc = scales_lib.ScaleRefs(refs[:-1], fmt)
  out_ref = refs[-1]
  bm, bn, t = cfg.block_m, cfg.block_n, cfg.chunks
  nw = scales_lib.chunk_bytes(fmt.blocksize) // 4  # words per chunk
  i, c, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  m0 = i * bm
  tiles = pl.cdiv(n, bn)
  mmask = common.tile_mask(m0, bm, m)
  miota = jax.lax.broadcasted_iota(jnp.int32, (bm, 1), 0)
  niota = jax.lax.broadcasted_iota(jnp.int32, (bn,), 0)
  mul_rn = None if interpret else common.mul_rn
  dtype = dy_ref.dtype
  table = lut_decode.load_table(table_ref, "shfl", (bn, nw), interpret=interpret)

  def tile_rows(step):
    tile = s + step * splits
    return tile, jnp.minimum(tile, tiles - 1) * bn  # clamped: a prefetch past the end

  def load(step):
    """The step's weight words, one [bn, nw] array per chunk (rows past N read as 0)."""
    _, n0 = tile_rows(step)
    rmask = None if n % bn == 0 else (n0 + niota < n)[:, None]
    words = []
    for cc in range(t):
      ref = data_ref.at[pl.ds(n0, bn), pl.ds((c * t + cc) * nw, nw)]
      words.append(common.masked_load(ref, rmask))
    return tuple(words)

  def accumulate(step, words, accs):
    tile, n0 = tile_rows(step)
    # dy's columns of this tile; columns past N and a repeated tile contribute 0.
    cmask = ((n0 + niota < n) & (tile < tiles))[None, :]
    if mmask is not None:
      cmask = cmask & (m0 + miota < m)
    d = plgpu.load(dy_ref.at[pl.ds(m0, bm), pl.ds(n0, bn)], mask=cmask, other=0)
    rows = jnp.minimum(n0 + niota, n - 1)[:, None]
    out = []
    for cc in range(t):
      scale = sc.chunk_scales(rows, jnp.full((1, 1), c * t + cc, jnp.int32), nkb, mul_rn)
      elems = [(lut_decode.shfl_element(words[cc], fmt.lut, e, table=table,
                                        interpret=interpret) * scale).astype(dtype)
               for e in range(8)]
      w = lut_decode.join_natural(elems)  # [bn, 8 nw]: the dequantized tile
      out.append(accs[cc] + jax.lax.dot_general(d, w, _MATMUL,
                                                preferred_element_type=jnp.float32))
    return tuple(out)

  zeros = tuple(jnp.zeros((bm, 8 * nw), jnp.float32) for _ in range(t))
  accs = common.prefetched_loop(steps, int(cfg.prefetch), load, accumulate, zeros)
  for cc in range(t):
    ref = out_ref.at[s, pl.ds(m0, bm), pl.ds((c * t + cc) * 8 * nw, 8 * nw)]
    common.masked_store(ref, accs[cc], None if mmask is None else mmask[:, None])


def mma_t_4bit_triton(
    dy: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    config: LutConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
  """``dy @ W`` on the tensor cores, reading the packed weight once per row tile of ``dy``.

  Args:
    dy: ``[M, N]`` bfloat16 or float16 output gradients.
    w: the packed ``W[N, K]`` (kernel layout).
    fmt: its static format.
    config: an ``"mma"`` config: ``block_m`` rows of ``dy`` per program (>= 16),
      ``block_n`` rows of W per step (>= 16), ``chunks`` chunks per column slice, ``groups``
      programs along N (0: enough for ``TARGET_PROGRAMS``), ``num_warps``, ``prefetch``;
      ``decode`` must be ``"shfl"``. Default: :data:`DEFAULT_CONFIG` (64 rows of ``dy``
      and of W per step, 2 chunks, 4 warps).
    interpret: run in the Pallas interpreter (jnp decode instead of PTX).

  Returns:
    ``[M, K]`` in ``dy.dtype`` (``matmul_4bit_reference(dy, w, transpose=True)``'s contract).

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from pallas_kernels import PackedWeight, WeightFormat
    >>> from pallas_kernels._src.lut_matmul.mma_t import mma_t_4bit_triton
    >>> fmt = WeightFormat(lut=tuple(np.linspace(-1, 1, 16)), blocksize=64)
    >>> w = PackedWeight(jnp.full((32, 2, 32), 0x8F, jnp.uint8), jnp.ones((32, 2)))
    >>> mma_t_4bit_triton(jnp.ones((16, 32), jnp.bfloat16), w, fmt=fmt, interpret=True).shape
    (16, 128)
  """
  check_operands(dy, w, fmt, transpose=True)
  if jnp.dtype(dy.dtype).name not in lut_decode.TABLE_DTYPES:
    raise ValueError(f"The transposed tensor-core kernel needs bfloat16 or float16 `dy`, "
                     f"got {dy.dtype}.")
  m, n = dy.shape
  k = w.shape[1]
  config = fit_config(config or DEFAULT_CONFIG, m, n, k, fmt)
  if config.decode != "shfl":
    raise ValueError(f"The transposed tensor-core kernel decodes with warp shuffles: "
                     f"`config.decode` must be 'shfl', got {config.decode!r}.")
  nc = k // (2 * scales_lib.chunk_bytes(fmt.blocksize))
  slices = nc // config.chunks
  mtiles = -(-m // config.block_m)
  tiles = -(-n // config.block_n)
  splits = row_splits(config.groups, tiles, slices * mtiles)
  steps = -(-tiles // splits)
  table = lut_decode.table_operand(fmt.lut, "shfl", dy.dtype)
  out = _launch(dy, table, w.words(), *scales_lib.scale_operands(w, fmt), fmt=fmt,
                config=config, mtiles=mtiles, slices=slices, splits=splits, steps=steps,
                interpret=interpret)
  # Columns come out in the weight's stored K order; XLA fuses the reorder with the sum.
  return layout_lib.to_real_order(out.sum(axis=0), fmt.layout).astype(dy.dtype)


def fit_config(config: LutConfig, m: int, n: int, k: int, fmt: WeightFormat) -> LutConfig:
  """``config`` with whole column slices along K, ``block_m`` no wider than M needs but 64
  where the config allows (a warpgroup MMA: narrower tiles compiled to ``mma.sync`` with
  about 1.4 more instructions per weight of layout arithmetic, offline SASS in
  docs/benchmarks.md) and ``block_n`` no taller than N needs."""
  nc = k // (2 * scales_lib.chunk_bytes(fmt.blocksize))
  chunks = max(1, min(config.chunks, nc & -nc))
  block_m = max(16, min(config.block_m, max(64, 1 << max(0, (m - 1).bit_length()))))
  block_n = max(16, min(config.block_n, 1 << max(0, (n - 1).bit_length())))
  return LutConfig(kind="mma", block_m=block_m, block_n=block_n, chunks=chunks,
                   num_warps=config.num_warps, num_stages=config.num_stages,
                   prefetch=config.prefetch, decode=config.decode, groups=config.groups)


# Jitted so that every call site with the same shapes and options shares one lowered kernel
# (as mma._launch).
@functools.partial(jax.jit, static_argnames=("fmt", "config", "mtiles", "slices", "splits",
                                             "steps", "interpret"))
def _launch(dy, table, words, *scale_ops, fmt, config, mtiles, slices, splits, steps,
            interpret):
  m, n = dy.shape
  k = words.shape[1] * 8
  kernel = functools.partial(
      _mma_t_kernel, fmt=fmt, cfg=config, m=m, n=n, nkb=k // fmt.blocksize, splits=splits,
      steps=steps, interpret=interpret)
  out: Any = pl.pallas_call(
      kernel,
      grid=(mtiles, slices, splits),
      out_shape=jax.ShapeDtypeStruct((splits, m, k), jnp.float32),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_mma_t_4bit",
  )(dy, table, words, *scale_ops)
  return out
