"""CUDA-core transposed GEMV ``dy @ W`` against a packed 4-bit weight (the input gradient
of a product with a few rows of x).

The forward GEMV (:mod:`gemv`) contracts over K, along the packed bytes. The input
gradient ``dx[m, k] = sum_n dy[m, n] W[n, k]`` contracts over N, across rows, so the
dequantize route wrote a bf16 copy of the whole weight for it and read it back (0.41-0.52x
of JAX bf16 up to M = 256 on an H200, docs/benchmarks.md, run 8). This kernel reads the
weight once, as the forward GEMV does: uint32 words ``[N, K/8]``, 8 codes each.

Program ``(c, s)`` owns the column slice ``c`` (``chunks`` chunks of K, a chunk being one
quantization block of at most 64 weights) and walks the row tiles ``s, s + splits, ...``
of ``block_n`` rows. The block scale varies along the contraction (per row), so it cannot
multiply a partial sum; it multiplies ``dy`` instead: per row and chunk the coefficient
``dy[m, n] * scale[n, chunk]`` is formed once (1/8 multiply per weight and row of dy), and
each code costs one shift and one warp shuffle (the float32 table value, as in the forward
GEMV) plus one FMA per row of dy. Accumulators stay per (row of the tile, word) in
registers; the tile's rows are summed once per program, and the splits' float32 partial
sums afterwards.

The weight enters exactly (``table[nibble] * scale`` in float32, never rounded), so the
contract is ``dy @ W`` in float32 with the float32 weight, rounded once (``reference``).
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
from pallas_kernels._src.lut_matmul.config import LutConfig, MAX_GEMV_ROWS, row_splits
from pallas_kernels._src.matmul_4bit.reference import decode_weight_reference
from pallas_kernels._src.matmul_4bit import layout as layout_lib
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, check_operands


def gemv_t_reference(dy: jax.Array, w: PackedWeight, *, fmt: WeightFormat) -> jax.Array:
  """``dy @ W`` with the exact float32 weight, float32 products and sums, in ``dy.dtype``."""
  wt = decode_weight_reference(w, fmt, jnp.float32)
  acc = jax.lax.dot_general(dy.astype(jnp.float32), wt, (((1,), (0,)), ((), ())),
                            precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
  return acc.astype(dy.dtype)


def _gemv_t_kernel(dy_ref, table_ref, data_ref, *refs, fmt, cfg, m, n, nkb, splits, steps,
                   interpret):
  sc = scales_lib.ScaleRefs(refs[:-1], fmt)
  out_ref = refs[-1]
  bn, t = cfg.block_n, cfg.chunks
  nw = scales_lib.chunk_bytes(fmt.blocksize) // 4  # words per chunk
  kw = t * nw
  c, s = pl.program_id(0), pl.program_id(1)
  tiles = pl.cdiv(n, bn)
  shape = (bn, kw)  # words and sums: the words' own load shape
  riota = jax.lax.broadcasted_iota(jnp.int32, (bn, t), 0)
  cidx = c * t + jax.lax.broadcasted_iota(jnp.int32, (bn, t), 1)
  biota = jax.lax.broadcasted_iota(jnp.int32, (bn,), 0)
  mul_rn = None if interpret else common.mul_rn
  fma = (lambda a, b, acc: a * b + acc) if interpret else common.fma

  def tile_rows(step):
    tile = s + step * splits
    return tile, jnp.minimum(tile, tiles - 1) * bn  # clamped: a prefetch past the end

  def load(step):
    _, n0 = tile_rows(step)
    ref = data_ref.at[pl.ds(n0, bn), pl.ds(c * kw, kw)]
    return ref[...] if n % bn == 0 else plgpu.load(
        ref, mask=(n0 + biota < n)[:, None], other=0)

  def compute(step, words, accs):
    tile, n0 = tile_rows(step)
    valid = (n0 + biota < n) & (tile < tiles)
    scale = sc.chunk_scales(jnp.minimum(n0 + riota, n - 1), cidx, nkb, mul_rn)  # [bn, t]
    coefs = []
    for r in range(m):  # dy of the tile's rows; rows past N or a repeated tile count 0
      d = plgpu.load(dy_ref.at[jnp.int32(r), pl.ds(n0, bn)], mask=valid, other=0)
      coef = d.astype(jnp.float32)[:, None] * scale  # [bn, t]: one per row and chunk
      coefs.append(jnp.broadcast_to(coef[:, :, None], (bn, t, nw)).reshape(shape))
    accs = list(accs)
    # This lane's table entry, from lane ids read in the words' own registers: no layout
    # conversion can then move an entry away from its lane. (Read once before the loop as a
    # tensor of its own, the kernel was wrong on an H100 with 8 words per chunk, run 9, and a
    # conversion of that tensor is the suspect: docs/benchmarks.md, run 10.)
    table = lut_decode.load_table(table_ref, "shfl", shape, like=words, interpret=interpret)
    for e in lut_decode.LOOKUP_ORDER:
      elem = lut_decode.shfl_element(words, fmt.lut, e, table=table, interpret=interpret)
      for r in range(m):
        accs[8 * r + e] = fma(elem, coefs[r], accs[8 * r + e])
    return tuple(accs)

  zeros = tuple(jnp.zeros(shape, jnp.float32) for _ in range(8 * m))
  accs = common.prefetched_loop(steps, int(cfg.prefetch), load, compute, zeros)
  for r in range(m):
    for e in range(8):  # element e of every word: columns 8 w + e of the slice
      col = jnp.sum(accs[8 * r + e], axis=0)
      out_ref[s, r, pl.ds(c * kw, kw), e] = col


def gemv_t_4bit_triton(
    dy: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    config: LutConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
  """``dy @ W`` for a few rows of ``dy`` on CUDA cores, reading the weight once.

  Args:
    dy: ``[M, N]`` float output gradients, ``M <= MAX_GEMV_ROWS``.
    w: the packed ``W[N, K]`` (kernel layout).
    fmt: its static format.
    config: a ``"gemv"`` config: ``block_n`` rows per step, ``chunks`` chunks per column
      slice, ``groups`` programs along N (0: enough for ``TARGET_PROGRAMS``),
      ``num_warps``, ``prefetch``; ``decode`` must be ``"shfl"``. Default:
      :func:`default_config`.
    interpret: run in the Pallas interpreter (jnp decode instead of PTX).

  Returns:
    ``[M, K]`` in ``dy.dtype``: float32 products and sums with the float32 weight,
    rounded once.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from pallas_kernels import PackedWeight, WeightFormat
    >>> from pallas_kernels._src.lut_matmul.gemv_t import gemv_t_4bit_triton
    >>> fmt = WeightFormat(lut=tuple(np.linspace(-1, 1, 16)), blocksize=64)
    >>> w = PackedWeight(jnp.full((32, 2, 32), 0x8F, jnp.uint8), jnp.ones((32, 2)))
    >>> gemv_t_4bit_triton(jnp.ones((1, 32)), w, fmt=fmt, interpret=True).shape
    (1, 128)
  """
  check_operands(dy, w, fmt, transpose=True)
  m, n = dy.shape
  k = w.shape[1]
  if m > MAX_GEMV_ROWS:
    raise ValueError(f"The transposed GEMV handles at most {MAX_GEMV_ROWS} rows of `dy`, "
                     f"got M={m}.")
  config = fit_config(config or default_config(m), n, k, fmt)
  if config.decode != "shfl":
    raise ValueError(f"The transposed GEMV decodes with warp shuffles: `config.decode` must "
                     f"be 'shfl', got {config.decode!r}.")
  nc = k // (2 * scales_lib.chunk_bytes(fmt.blocksize))
  slices = nc // config.chunks
  tiles = -(-n // config.block_n)
  splits = row_splits(config.groups, tiles, slices)
  steps = -(-tiles // splits)
  table = lut_decode.table_operand(fmt.lut, "shfl", jnp.float16)
  out = _launch(dy, table, w.words(), *scales_lib.scale_operands(w, fmt), fmt=fmt,
                config=config, slices=slices, splits=splits, steps=steps,
                interpret=interpret)
  # Columns come out in the weight's stored K order; XLA fuses the reorder with the sum.
  return layout_lib.to_real_order(out.sum(axis=0).reshape(m, k), fmt.layout).astype(dy.dtype)


def default_config(m: int) -> LutConfig:
  """4 chunks, 4 warps, 16 rows per step up to 2 rows of ``dy`` and 8 above (the
  accumulators are 8 tiles per row of ``dy``)."""
  return LutConfig(kind="gemv", block_n=16 if m <= 2 else 8, chunks=4)


def fit_config(config: LutConfig, n: int, k: int, fmt: WeightFormat) -> LutConfig:
  """``config`` with whole column slices along K (``chunks`` a divisor of K's chunk count)
  and at most as many rows per step as N rounded up to a power of two."""
  nc = k // (2 * scales_lib.chunk_bytes(fmt.blocksize))
  chunks = max(1, min(config.chunks, nc & -nc))
  block_n = max(1, min(config.block_n, 1 << max(0, (n - 1).bit_length())))
  return LutConfig(kind="gemv", block_n=block_n, chunks=chunks, num_warps=config.num_warps,
                   num_stages=config.num_stages, prefetch=config.prefetch,
                   decode=config.decode, groups=config.groups)


# Jitted so that every call site with the same shapes and options shares one lowered kernel
# (as gemv._launch).
@functools.partial(jax.jit, static_argnames=("fmt", "config", "slices", "splits", "steps",
                                             "interpret"))
def _launch(dy, table, words, *scale_ops, fmt, config, slices, splits, steps, interpret):
  m, n = dy.shape
  k8 = words.shape[1]
  kernel = functools.partial(
      _gemv_t_kernel, fmt=fmt, cfg=config, m=m, n=n, nkb=k8 * 8 // fmt.blocksize,
      splits=splits, steps=steps, interpret=interpret)
  out: Any = pl.pallas_call(
      kernel,
      grid=(slices, splits),
      out_shape=jax.ShapeDtypeStruct((splits, m, k8, 8), jnp.float32),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_gemv_t_4bit",
  )(dy, table, words, *scale_ops)
  return out
