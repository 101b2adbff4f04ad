"""Triton (``pl.pallas_call``) kernel of the 8-bit blockwise quantizer.

The double quantization of an 8192 x 8192 weight's absmax is 1M floats; as a
chain of XLA ops (one per binary-search step) it cost more than the 4-bit pass
itself. Here each program reads its rows once, runs the whole search with the
256-entry table gathered from L1, and writes codes and absmax.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src import common
from pallas_kernels._src.common import masked_load as _load
from pallas_kernels._src.quantize_8bit.reference import quantize_8bit_blocks_reference


def _kernel(a_ref, table_ref, codes_ref, absmax_ref, *, search, reciprocal, multiply,
            num_blocks):
  # inputs: a_ref [R, bs] f32, table_ref [256] f32
  # outputs: codes_ref [R, bs] uint8, absmax_ref [R] f32
  rows = a_ref.shape[0]
  mask, row_mask = common.row_masks(num_blocks, rows)
  codes, absmax = quantize_8bit_blocks_reference(
      _load(a_ref, row_mask), table=table_ref, search=search, reciprocal=reciprocal,
      multiply=multiply)
  plgpu.store(codes_ref, codes, mask=row_mask)
  plgpu.store(absmax_ref, absmax, mask=mask)


def quantize_8bit_blocks_triton(blocks: jax.Array, *, table, search, block_rows: int = 8,
                                num_warps: int = 4, interpret: bool = False):
  """Kernel version of ``quantize_8bit_blocks_reference`` (same results)."""
  nb, bs = blocks.shape
  if bs & (bs - 1) or block_rows & (block_rows - 1):
    raise ValueError(f"{bs=} and {block_rows=} must be powers of two.")
  kernel = functools.partial(
      _kernel, search=search, num_blocks=nb,
      reciprocal=common.exact_reciprocal if interpret else common.rcp_approx_ftz,
      multiply=None if interpret else common.mul_ftz)
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(nb, block_rows),),
      in_specs=[pl.BlockSpec((block_rows, bs), lambda i: (i, 0)),
                pl.BlockSpec((256,), lambda i: (0,))],
      out_specs=[pl.BlockSpec((block_rows, bs), lambda i: (i, 0)),
                 pl.BlockSpec((block_rows,), lambda i: (i,))],
      out_shape=[jax.ShapeDtypeStruct((nb, bs), jnp.uint8),
                 jax.ShapeDtypeStruct((nb,), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
      interpret=interpret,
      name="jaxfp4_quantize_8bit",
  )(blocks, jnp.asarray(table, jnp.float32))
