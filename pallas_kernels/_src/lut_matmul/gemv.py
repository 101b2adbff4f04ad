"""CUDA-core GEMV against a packed 4-bit weight (decode: a few rows of x).

The product is bound by reading the weight: 0.5 byte per weight plus its block
scale. The weight is read as stored (bitsandbytes' K order, or the Mosaic decoder's:
the activations are then moved to match), viewed as ``[N, K/8]`` uint32 words (8
codes each). Program ``(g, s)`` owns the K slice ``s`` of
``chunks`` quantization chunks and walks the row tiles ``g, g + groups, ...``
of ``block_n`` rows: the slice's activations are loaded once into registers,
so the loop streams only weight words and scales (a per-step activation load
from L2 stalled every warp in an earlier version; docs/benchmarks.md).

Per code: one shift and one warp shuffle that reads the float32 table value
from the lane holding it (:func:`lut_decode.shfl_element`), one FMA per row of
x. Each chunk's sum is multiplied by its block scale once (post-scaling), each
step's row sums go to ``out[s]``, and the slices are summed afterwards with the
bias in float32.
"""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src import common
from pallas_kernels._src import lut_decode
from pallas_kernels._src.lut_matmul import scales as scales_lib
from pallas_kernels._src.lut_matmul.config import LutConfig, MAX_GEMV_ROWS, TARGET_PROGRAMS
from pallas_kernels._src.matmul_4bit import layout as layout_lib
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, check_group


def _gemv_kernel(x_ref, table_ref, *refs, fmt, cfg, m, ns, nkb, groups, table_dtype,
                 interpret):
  """One launch for every weight of the group: program ``g`` along axis 0 works
  on weight ``i`` when ``sum(groups[:i]) <= g < sum(groups[:i + 1])``."""
  count = 1 + scales_lib.ScaleRefs.operand_count(fmt)  # words + scale operands per weight
  outs = refs[count * len(ns):]
  bn, t = cfg.block_n, cfg.chunks
  nw = scales_lib.chunk_bytes(fmt.blocksize) // 4  # words per chunk
  kw = t * nw  # words of the slice
  g, s = pl.program_id(0), pl.program_id(1)
  shape = (bn, kw)
  cidx = s * t + jax.lax.broadcasted_iota(jnp.int32, (bn, t), 1)
  riota = jax.lax.broadcasted_iota(jnp.int32, (bn, t), 0)
  biota = jax.lax.broadcasted_iota(jnp.int32, (bn,), 0)
  mul_rn = None if interpret else common.mul_rn
  fma = (lambda a, b, c: a * b + c) if interpret else common.fma
  table = lut_decode.load_table(table_ref, cfg.decode, shape, interpret=interpret)
  # The slice's activations, loaded once (contiguous) and spread into the tile's layout:
  # element e of word w of the slice is x[8w + e], or for a weight in the Mosaic decoder's K
  # order x[64 (w // 8) + WGMMA_ORDER[8 (w % 8) + e]] (a gathered load instead made the GEMV
  # a third slower on an H100, run 9). Shared by the group.
  xs = []
  for r in range(m):
    x8 = x_ref[jnp.int32(r), pl.ds(s * kw, kw), :]  # [kw, 8]
    if fmt.layout != "bnb":  # moved in registers, 64 weights (8 words) a block
      x8 = layout_lib.blocks_to_stored_order(x8.reshape(kw // 8, 64)).reshape(kw, 8)
    planes = jnp.split(x8.astype(jnp.float32), 8, axis=1)
    xs.append([jnp.broadcast_to(p.reshape(1, kw), shape) for p in planes])

  def decode(words, e):
    if cfg.decode == "shfl":
      return lut_decode.shfl_element(words, fmt.lut, e, table=table, interpret=interpret)
    return lut_decode.decode_word_element(words, fmt.lut, table_dtype, e, table=table,
                                          interpret=interpret)

  def run(i, gi):
    """Program ``gi`` of weight ``i``: its row tiles ``gi, gi + groups[i], ...``."""
    data_ref = refs[count * i]
    sc = scales_lib.ScaleRefs(refs[count * i + 1:count * (i + 1)], fmt)
    out_ref, n = outs[i], ns[i]
    tiles = pl.cdiv(n, bn)
    steps = pl.cdiv(tiles, groups[i])

    def load(step):
      n0 = jnp.minimum(gi + step * groups[i], tiles - 1) * bn  # clamped: a prefetch past the end
      ref = data_ref.at[pl.ds(n0, bn), pl.ds(s * kw, kw)]
      if n % bn == 0:
        return ref[...]
      return plgpu.load(ref, mask=(n0 + biota < n)[:, None], other=0)

    def compute(step, words):
      tile = gi + step * groups[i]
      n0 = jnp.minimum(tile, tiles - 1) * bn
      scale = sc.chunk_scales(jnp.minimum(n0 + riota, n - 1), cidx, nkb, mul_rn)
      parts: list[Any] = [None] * m
      # Elements in lookup order (the prmt decode shares work within a half).
      for e in lut_decode.LOOKUP_ORDER:
        elem = decode(words, e)
        for r in range(m):
          parts[r] = elem * xs[r][e] if parts[r] is None else fma(elem, xs[r][e], parts[r])
      valid = (n0 + biota < n) & (tile < tiles)
      for r in range(m):
        y = jnp.sum(jnp.sum(parts[r].reshape(bn, t, nw), axis=2) * scale, axis=1)
        plgpu.store(out_ref.at[s, jnp.int32(r), pl.ds(n0, bn)], y, mask=valid)

    depth = int(cfg.prefetch)
    if depth:
      def body(step, ahead):
        nxt = load(step + depth)  # issued before this step's decode
        compute(step, ahead[0])
        return ahead[1:] + (nxt,)
      jax.lax.fori_loop(0, steps, body, tuple(load(jnp.int32(j)) for j in range(depth)))
    else:
      def body(step, carry):
        compute(step, load(step))
        return carry
      jax.lax.fori_loop(0, steps, body, jnp.int32(0))

  if len(ns) == 1:
    run(0, g)
    return
  first = 0
  for i, gi in enumerate(groups):
    pl.when((g >= first) & (g < first + gi))(functools.partial(run, i, g - first))
    first += gi


def gemv_4bit_triton(
    x: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    config: LutConfig,
    bias: jax.Array | None = None,
    table_dtype=jnp.float16,
    interpret: bool = False,
) -> jax.Array:
  """``x @ W.T + bias`` for a few rows of x on CUDA cores.

  Args:
    x: ``[M, K]`` float activations, ``M <= MAX_GEMV_ROWS``.
    w: the packed ``W[N, K]`` (kernel layout).
    fmt: its static format.
    config: a ``"gemv"`` config fitted to the shape (``chunks`` is the width of
      a K slice; ``split_k`` is unused: the slice count follows from it).
    bias: optional ``[N]``, added in float32.
    table_dtype: 16-bit type of the table for ``decode="prmt"`` (the default
      ``"shfl"`` decode reads the exact float32 table).
    interpret: run in the Pallas interpreter (jnp decode instead of PTX).

  Returns:
    ``[M, N]`` in ``x.dtype``: float32 products and sums, rounded once.
  """
  (out,) = gemv_4bit_group_triton(x, (w,), fmt=fmt, config=config, biases=(bias,),
                                  table_dtype=table_dtype, interpret=interpret)
  return out


def gemv_4bit_group_triton(
    x: jax.Array,
    ws: Sequence[PackedWeight],
    *,
    fmt: WeightFormat,
    config: LutConfig,
    biases: Sequence[jax.Array | None] | None = None,
    table_dtype=jnp.float16,
    interpret: bool = False,
) -> tuple[jax.Array, ...]:
  """``x @ W_i.T + bias_i`` for every weight of a group, in one launch.

  The weights share ``x``, ``K`` and the static format (q/k/v or gate/up
  projections of a decoder layer); one launch instead of one per weight saves
  the launch gaps of a decode step and loads the activations once per slice.

  Args:
    x: ``[M, K]`` float activations, ``M <= MAX_GEMV_ROWS``.
    ws: the packed ``W_i[N_i, K]`` (kernel layout).
    fmt: their common static format.
    config: a ``"gemv"`` config fitted to ``K``.
    biases: optional, one ``[N_i]`` or None per weight, added in float32.
    table_dtype, interpret: as :func:`gemv_4bit_triton`.

  Returns:
    One ``[M, N_i]`` array in ``x.dtype`` per weight.
  """
  ws, biases = check_group(x, ws, fmt, biases)
  m, k = x.shape
  ns = tuple(w.shape[0] for w in ws)
  if m > MAX_GEMV_ROWS:
    raise ValueError(f"The GEMV kernel handles at most {MAX_GEMV_ROWS} rows of x, got M={m}.")
  c = scales_lib.chunk_bytes(fmt.blocksize)
  nc = k // (2 * c)
  if config.kind != "gemv" or nc % config.chunks:
    raise ValueError(f"config {config.name()} does not fit K={k} (chunks of {c} bytes).")
  slices = nc // config.chunks
  tiles = [-(-n // config.block_n) for n in ns]
  if config.groups:  # programs along N for the whole group, shared in proportion to the rows
    steps = max(1, -(-sum(tiles) // config.groups))
  else:  # as few steps as fill TARGET_PROGRAMS, spread evenly over the tiles
    steps = max(1, -(-sum(tiles) * slices // TARGET_PROGRAMS))
  groups = tuple(-(-tn // steps) for tn in tiles)
  table = lut_decode.table_operand(fmt.lut, config.decode, table_dtype)
  operands = []
  for w, n in zip(ws, ns):
    operands.append(w.words())
    operands += scales_lib.scale_operands(w, fmt)
  outs = _launch(x.reshape(m, k // 8, 8), table, *operands, fmt=fmt, config=config, ns=ns,
                 groups=groups, slices=slices, table_dtype=jnp.dtype(table_dtype),
                 interpret=interpret)
  return common.sum_partials(outs, biases, x.dtype)


# Jitted so that every call site with the same shapes and options shares one traced and
# lowered kernel (a decode step calls the same kernel once per layer; without it each call
# site is traced and its kernel serialized again: docs/benchmarks.md, run 6).
@functools.partial(jax.jit, static_argnames=("fmt", "config", "ns", "groups", "slices",
                                             "table_dtype", "interpret"))
def _launch(x3, table, *operands, fmt, config, ns, groups, slices, table_dtype, interpret):
  m, k8, _ = x3.shape
  kernel = functools.partial(
      _gemv_kernel, fmt=fmt, cfg=config, m=m, ns=ns, nkb=k8 * 8 // fmt.blocksize,
      groups=groups, table_dtype=table_dtype, interpret=interpret)
  return pl.pallas_call(
      kernel,
      grid=(sum(groups), slices),
      out_shape=[jax.ShapeDtypeStruct((slices, m, n), jnp.float32) for n in ns],
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_gemv_4bit",
  )(x3, table, *operands)
