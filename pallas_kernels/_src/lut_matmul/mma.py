"""Tensor-core product against a packed 4-bit weight: ``W · xᵀ`` with register decode.

The decoded weight is the left operand (``block_n`` >= 64 rows of W, one
Hopper warpgroup MMA row block), the tokens the narrow right one (``block_m``
>= 16 rows of x), so the decode cost per weight does not grow with M. The
weight is read as bitsandbytes stores it, viewed as ``[N, K/8]`` uint32 words.

Each chunk (one quantization block, at most 64 elements, 8 words per row) is
decoded per element of a word: with ``decode="shfl"`` (default) the exact
float32 table value comes from a warp shuffle, is multiplied by the block
scale and rounded once to the activations' 16-bit type, which is exactly the
dequantized weight (``dequantize_4bit`` up to the flush of subnormals); with
``decode="prmt"`` the 16-bit table value comes from byte permutes and the
chunk's float32 product is multiplied by the scale afterwards. The eight
element arrays are joined in registers in the row's own order
(``lut_decode.join_natural``), so the activations are used as they are; a weight stored
in the Mosaic decoder's K order (``WeightFormat(layout="wgmma")``) moves each chunk of the
activations into that order in registers.
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
from pallas_kernels._src.lut_matmul.config import LutConfig
from pallas_kernels._src.matmul_4bit import layout as layout_lib
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, check_group

_DIMS = (((1,), (1,)), ((), ()))  # contract the last axes: [BN, C] x [BM, C] -> [BN, BM]


def _mma_kernel(x_ref, table_ref, *refs, fmt, cfg, m, ns, tiles, biased, nkb, partial,
                out_dtype, interpret):
  """One launch for every weight of the group: program ``j`` along axis 1 is
  N tile ``j - sum(tiles[:i])`` of weight ``i`` (static ranges, ``pl.when``)."""
  outs = refs[len(refs) - len(ns):]
  i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  table = lut_decode.load_table(table_ref, cfg.decode, (cfg.block_n, scales_lib.chunk_bytes(
      fmt.blocksize) // 4), interpret=interpret)
  count = 1 + scales_lib.ScaleRefs.operand_count(fmt)
  first_ref, first_tile = 0, 0
  for w, (n, nt, has_bias) in enumerate(zip(ns, tiles, biased)):
    wrefs = refs[first_ref:first_ref + count + has_bias]
    run = functools.partial(_mma_tile, x_ref, wrefs, outs[w], table, i, s, fmt=fmt, cfg=cfg,
                            m=m, n=n, nkb=nkb, has_bias=has_bias, partial=partial,
                            out_dtype=out_dtype, interpret=interpret)
    if len(ns) == 1:
      run(j)
    else:
      def run_here(jj: Any = j - first_tile, r: Any = run) -> None:
        r(jj)
      pl.when((j >= first_tile) & (j < first_tile + nt))(run_here)
    first_ref += count + has_bias
    first_tile += nt


def _mma_tile(x_ref, wrefs, out_ref, table, i, s, j, *, fmt, cfg, m, n, nkb, has_bias,
              partial, out_dtype, interpret):
  """Output tile ``(i, j)``, K range ``s`` of one weight."""
  data_ref = wrefs[0]
  sc = scales_lib.ScaleRefs(wrefs[1:], fmt)
  bias_ref = wrefs[1 + sc.count] if has_bias else None
  bm, bn, t = cfg.block_m, cfg.block_n, cfg.chunks
  nw = scales_lib.chunk_bytes(fmt.blocksize) // 4  # words per chunk
  m0, n0 = i * bm, j * bn
  steps = data_ref.shape[1] // (t * nw)
  lo, hi = common.split_range(s, steps, cfg.split_k)
  nmask = common.tile_mask(n0, bn, n)
  mmask = common.tile_mask(m0, bm, m)
  rows = jnp.minimum(n0 + jax.lax.broadcasted_iota(jnp.int32, (bn, 1), 0), n - 1)
  mul_rn = None if interpret else common.mul_rn
  table_dtype = x_ref.dtype

  def load(step):
    """The step's weight words and activation chunks (both prefetched a step ahead)."""
    words, xs = [], []
    for c in range(t):
      chunk = step * t + c
      ref = data_ref.at[pl.ds(n0, bn), pl.ds(chunk * nw, nw)]
      words.append(ref[...] if nmask is None else
                   plgpu.load(ref, mask=nmask[:, None], other=0))
      if fmt.layout == "bnb":
        ref = x_ref.at[pl.ds(m0, bm), pl.ds(chunk * 8 * nw, 8 * nw)]
        xs.append(ref[...] if mmask is None else
                  plgpu.load(ref, mask=mmask[:, None], other=0))
      else:  # the chunk (one 64-weight block) moved into the weight's stored K order
        ref = x_ref.at[pl.ds(m0, bm), pl.ds(chunk * 64, 64)]
        xc = ref[...] if mmask is None else plgpu.load(ref, mask=mmask[:, None], other=0)
        xs.append(layout_lib.blocks_to_stored_order(xc))
    return tuple(words), tuple(xs)

  def accumulate(step, acc, loaded):
    words, xs = loaded
    for c in range(t):
      chunk = step * t + c
      scale = sc.chunk_scales(rows, jnp.full((1, 1), chunk, jnp.int32), nkb, mul_rn)
      if cfg.decode == "shfl":
        # Exact float32 table value times the block scale, rounded once to the
        # 16-bit type: the dequantized weight itself (no post-scaling).
        elems = [(lut_decode.shfl_element(words[c], fmt.lut, e, table=table,
                                          interpret=interpret) * scale).astype(table_dtype)
                 for e in range(8)]
      else:
        elems = [lut_decode.decode_word_element(words[c], fmt.lut, table_dtype, e, table=table,
                                                out16=True, interpret=interpret)
                 for e in range(8)]
      part = jax.lax.dot_general(lut_decode.join_natural(elems), xs[c], _DIMS,
                                 preferred_element_type=jnp.float32)
      acc += part if cfg.decode == "shfl" else part * scale
    return acc

  zeros = jnp.zeros((bn, bm), jnp.float32)
  depth = int(cfg.prefetch)
  if depth:
    # ``depth`` steps of bytes in flight: the loads of step + depth are issued
    # before this step's decode (clamped at the end of the program's range).
    def body(step, carry):
      acc, ahead = carry
      nxt = load(jnp.minimum(step + depth, hi - 1))
      return accumulate(step, acc, ahead[0]), ahead[1:] + (nxt,)
    first = tuple(load(jnp.minimum(lo + j, hi - 1)) for j in range(depth))
    acc, _ = jax.lax.fori_loop(lo, hi, body, (zeros, first))
  else:
    acc = jax.lax.fori_loop(lo, hi, lambda step, a: accumulate(step, a, load(step)), zeros)

  y = acc.T  # [BM, BN]
  omask = None
  if nmask is not None or mmask is not None:
    omask = ((jnp.ones((bm, 1), jnp.bool_) if mmask is None else mmask[:, None])
             & (jnp.ones((1, bn), jnp.bool_) if nmask is None else nmask[None, :]))
  if partial:
    common.masked_store(out_ref.at[s, pl.ds(m0, bm), pl.ds(n0, bn)], y, omask)
  else:
    if bias_ref is not None:
      ref = bias_ref.at[pl.ds(n0, bn)]
      y += (ref[...] if nmask is None else plgpu.load(ref, mask=nmask, other=0.0))[None, :]
    common.masked_store(out_ref.at[pl.ds(m0, bm), pl.ds(n0, bn)], y.astype(out_dtype), omask)


def mma_4bit_triton(
    x: jax.Array,
    w: PackedWeight,
    *,
    fmt: WeightFormat,
    config: LutConfig,
    bias: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
  """``x @ W.T + bias`` on tensor cores, the weight decoded in registers.

  Args:
    x: ``[M, K]`` bfloat16 or float16 activations (tensor-core operands of
      one type: the weight is decoded to ``x.dtype``).
    w: the packed ``W[N, K]`` (kernel layout).
    fmt: its static format.
    config: an ``"mma"`` config fitted to the shape.
    bias: optional ``[N]``, added in float32.
    interpret: run in the Pallas interpreter (jnp decode instead of PTX).

  Returns:
    ``[M, N]`` in ``x.dtype``.
  """
  (out,) = mma_4bit_group_triton(x, (w,), fmt=fmt, config=config, biases=(bias,),
                                 interpret=interpret)
  return out


def mma_4bit_group_triton(
    x: jax.Array,
    ws: Sequence[PackedWeight],
    *,
    fmt: WeightFormat,
    config: LutConfig,
    biases: Sequence[jax.Array | None] | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, ...]:
  """``x @ W_i.T + bias_i`` on tensor cores for every weight of a group, one launch.

  As :func:`mma_4bit_triton` for each weight; the weights share ``x``, ``K``
  and the static format (q/k/v or gate/up of a decoder layer), and one launch
  replaces one per weight.

  Returns:
    One ``[M, N_i]`` array in ``x.dtype`` per weight.
  """
  ws, biases = check_group(x, ws, fmt, biases)
  m, k = x.shape
  ns = tuple(w.shape[0] for w in ws)
  if jnp.dtype(x.dtype).name not in lut_decode.TABLE_DTYPES:
    raise ValueError(f"The tensor-core kernel needs bfloat16 or float16 `x`, got {x.dtype}.")
  c = scales_lib.chunk_bytes(fmt.blocksize)
  nc = k // (2 * c)
  if config.kind != "mma" or nc % config.chunks:
    raise ValueError(f"config {config.name()} does not fit K={k} (chunks of {c} bytes).")
  partial = config.split_k > 1
  biased = tuple(b is not None and not partial for b in biases)
  tiles = tuple(-(-n // config.block_n) for n in ns)
  table = lut_decode.table_operand(fmt.lut, config.decode, x.dtype)
  args = [x, table]
  for w, n, b, has_bias in zip(ws, ns, biases, biased):
    args.append(w.words())
    args += scales_lib.scale_operands(w, fmt)
    if has_bias:
      args.append(b.astype(jnp.float32))
  outs = _launch(*args, fmt=fmt, config=config, ns=ns, tiles=tiles, biased=biased,
                 interpret=interpret)
  if not partial:
    return tuple(outs)
  return common.sum_partials(outs, biases, x.dtype)


# Jitted so that every call site with the same shapes and options shares one traced and
# lowered kernel (as gemv._launch).
@functools.partial(jax.jit, static_argnames=("fmt", "config", "ns", "tiles", "biased",
                                             "interpret"))
def _launch(x, *args, fmt, config, ns, tiles, biased, interpret):
  m, k = x.shape
  partial = config.split_k > 1
  kernel = functools.partial(
      _mma_kernel, fmt=fmt, cfg=config, m=m, ns=ns, tiles=tiles, biased=biased,
      nkb=k // fmt.blocksize, partial=partial, out_dtype=jnp.dtype(x.dtype),
      interpret=interpret)
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(m, config.block_m), sum(tiles), config.split_k),
      out_shape=[jax.ShapeDtypeStruct((config.split_k, m, n) if partial else (m, n),
                                      jnp.float32 if partial else x.dtype) for n in ns],
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_mma_4bit",
  )(x, *args)
