"""Pure-jnp reference of the 8-bit blockwise quantizer (double quantization).

``blocks[nb, bs]`` float32 -> ``(codes[nb, bs] uint8, absmax[nb] float32)``: per
row the max |a| (subnormals flushed), ``s = mul_ftz(a, 1/absmax)`` and the code
index chosen by ``search(s, table)`` over a sorted 256-entry table
(bitsandbytes' ``kQuantizeBlockwise<General8bit>``, bnb_format.md §4.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._src import numerics


def quantize_8bit_blocks_reference(blocks: jax.Array, *, table, search,
                                   reciprocal=None, multiply=None):
  """Quantizes each row of ``blocks`` to 8-bit codes with its own absmax.

  Args:
    blocks: float32 ``[nb, bs]``.
    table: the sorted 256 code values (array or ref).
    search: ``search(s, table) -> int32`` index of each scaled value.
    reciprocal: ``1/x`` (default ``1.0 / x``).
    multiply: CUDA ``mul.ftz`` (default: its jnp emulation).

  Returns:
    ``(codes uint8 [nb, bs], absmax float32 [nb])``.
  """
  recip = reciprocal or (lambda v: 1.0 / v)
  mul = multiply or numerics.mul_ftz
  a = numerics.flush_subnormals(blocks)
  absmax = jnp.max(jnp.abs(a), axis=1)
  r = recip(numerics.flush_subnormals(absmax))
  s = mul(a, r[:, None])
  return search(s, table).astype(jnp.uint8), absmax
