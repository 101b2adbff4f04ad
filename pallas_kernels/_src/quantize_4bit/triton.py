"""Triton (``pl.pallas_call``) kernel: one pass from float blocks to packed nibbles.

Each program reads ``block_rows`` quantization blocks once, reduces their max
|x|, computes the scale, encodes every value and writes the packed bytes and
the per-block scale: 0.5 byte written per element and nothing re-read, against
two passes over the input for the unfused XLA graph (a reduction, then the
elementwise encode).

16-bit inputs are read as uint32 words (two elements each, so the even and odd
elements of a pair come out of one vector load); float32 tiles are split into
even and odd columns in registers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src import common
from pallas_kernels._src.common import masked_load as _load
from pallas_kernels._src.quantize_4bit.config import QuantizeConfig


def _kernel(x_ref, *refs, codec, n_scalars, dtype, reciprocal, multiply, num_blocks):
  # inputs: x_ref [R, bs/2] uint32 (16-bit floats) or [R, bs] float32; scalars;
  #         base_ref, thr_ref: the encoder's bucket table (L1-resident gathers)
  # outputs: packed_ref [R, bs/2] uint8, stored_ref [R]
  scalar_refs = refs[:n_scalars]
  base_ref, thr_ref, packed_ref, stored_ref = refs[n_scalars:]
  rows, half = packed_ref.shape
  mask, row_mask = common.row_masks(num_blocks, rows)
  if jnp.dtype(dtype) == jnp.float32:
    even, odd = common.deinterleave(_load(x_ref, row_mask))
  else:
    even, odd = common.split_pairs(_load(x_ref, row_mask), dtype)
  even, odd = codec.prepare(even), codec.prepare(odd)
  amax = codec.amax([even, odd], axis=1)
  scalars = [r[0] for r in scalar_refs]
  stored, mult = codec.scale(amax, reciprocal, *scalars)
  tables = (base_ref, thr_ref)
  hi = codec.encode(even, mult[:, None], tables=tables, multiply=multiply)
  lo = codec.encode(odd, mult[:, None], tables=tables, multiply=multiply)
  plgpu.store(packed_ref, ((hi << 4) | lo).astype(jnp.uint8), mask=row_mask)
  plgpu.store(stored_ref, stored, mask=mask)


def quantize_blocks_triton(
    blocks: jax.Array,
    *,
    codec,
    scalars=(),
    config: QuantizeConfig,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Kernel version of ``quantize_blocks_reference`` (same arguments/results)."""
  nb, bs = blocks.shape
  if bs % 2 or bs & (bs - 1):
    raise ValueError(f"{bs=} must be an even power of two.")
  half = bs // 2
  rows = config.block_rows
  dtype = blocks.dtype
  if dtype == jnp.float32:
    x = blocks
    x_spec = pl.BlockSpec((rows, bs), lambda i: (i, 0))
  else:
    x = common.as_pairs(blocks)
    x_spec = pl.BlockSpec((rows, half), lambda i: (i, 0))
  scalars = [jnp.asarray(s, jnp.float32).reshape(1) for s in scalars]
  tables = codec.tables()
  # Probe the scale rule for the stored dtype (uint8 for E8M0/E4M3 scales).
  stored_dtype = jax.eval_shape(
      lambda a, *s: codec.scale(a, common.exact_reciprocal, *s)[0],
      jax.ShapeDtypeStruct((1,), jnp.float32),
      *[jax.ShapeDtypeStruct((), jnp.float32)] * len(scalars)).dtype
  kernel = functools.partial(
      _kernel, codec=codec, n_scalars=len(scalars), dtype=dtype, num_blocks=nb,
      reciprocal=common.exact_reciprocal if interpret else common.rcp_approx_ftz,
      multiply=None if interpret else common.mul_ftz)  # None: the codec's jnp emulation
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(nb, rows),),
      in_specs=([x_spec] + [pl.BlockSpec((1,), lambda i: (0,))] * len(scalars)
                + [pl.BlockSpec(t.shape, lambda i: (0,)) for t in tables]),
      out_specs=[pl.BlockSpec((rows, half), lambda i: (i, 0)),
                 pl.BlockSpec((rows,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((nb, half), jnp.uint8),
                 jax.ShapeDtypeStruct((nb,), stored_dtype)],
      compiler_params=plgpu.CompilerParams(
          num_warps=config.num_warps, num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_quantize_4bit",
  )(x, *scalars, *tables)
