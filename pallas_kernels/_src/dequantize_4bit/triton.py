"""Triton (``pl.pallas_call``) kernel: packed nibbles -> float blocks in one pass.

Reads 0.5 byte per element plus one float32 scale per block and writes the
output once. 16-bit outputs are assembled as uint32 words (even element in the
low half), so each pair of values is one store; float32 pairs are interleaved
in registers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels._src import common
from pallas_kernels._src.common import masked_load as _load
from pallas_kernels._src.dequantize_4bit.config import DequantizeConfig


def _kernel(packed_ref, scale_ref, lut_ref, out_ref, *, lut, out_dtype, lookup, num_blocks):
  # inputs: packed_ref [R, bs/2] uint8, scale_ref [R] f32, lut_ref [16] f32
  # output: out_ref [R, bs/2] uint32 (16-bit floats) or [R, bs] float32
  rows = packed_ref.shape[0]
  mask, row_mask = common.row_masks(num_blocks, rows)
  b = _load(packed_ref, row_mask).astype(jnp.int32)
  hi, lo = b >> 4, b & 0xF
  if lookup == "gather":
    v_hi, v_lo = lut_ref[hi], lut_ref[lo]
  else:
    v_hi, v_lo = common.select_lut(hi, lut), common.select_lut(lo, lut)
  s = _load(scale_ref, mask)[:, None]
  even = common.flush_subnormals(v_hi * s)
  odd = common.flush_subnormals(v_lo * s)
  if jnp.dtype(out_dtype) == jnp.float32:
    plgpu.store(out_ref, common.interleave(even, odd), mask=row_mask)
  else:
    plgpu.store(out_ref, common.join_pairs(even, odd, out_dtype), mask=row_mask)


def dequantize_blocks_triton(
    data: jax.Array,
    scales: jax.Array,
    *,
    lut,
    blocksize: int,
    out_dtype,
    config: DequantizeConfig,
    interpret: bool = False,
) -> jax.Array:
  """Kernel version of ``dequantize_blocks_reference`` for whole blocks."""
  nb = scales.shape[0]
  half = blocksize // 2
  if data.shape != (nb * half,):
    raise ValueError(f"`data` must have {nb * half} bytes for {nb} blocks of {blocksize}, "
                     f"got shape {data.shape}.")
  rows = config.block_rows
  out_dtype = jnp.dtype(out_dtype)
  wide = out_dtype == jnp.float32
  out_cols, out_store = (blocksize, out_dtype) if wide else (half, jnp.uint32)
  kernel = functools.partial(_kernel, lut=tuple(lut), out_dtype=out_dtype,
                             lookup=config.lookup, num_blocks=nb)
  out = pl.pallas_call(
      kernel,
      grid=(pl.cdiv(nb, rows),),
      in_specs=[pl.BlockSpec((rows, half), lambda i: (i, 0)),
                pl.BlockSpec((rows,), lambda i: (i,)),
                pl.BlockSpec((16,), lambda i: (0,))],
      out_specs=pl.BlockSpec((rows, out_cols), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((nb, out_cols), out_store),
      compiler_params=plgpu.CompilerParams(
          num_warps=config.num_warps, num_stages=config.num_stages),
      interpret=interpret,
      name="jaxfp4_dequantize_4bit",
  )(data.reshape(nb, half), scales, jnp.asarray(lut, jnp.float32))
  if wide:
    return out.reshape(-1)
  return common.from_pairs(out, out_dtype).reshape(-1)
