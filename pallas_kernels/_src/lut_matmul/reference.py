"""Pure-jnp reference of the register-table kernels: the contract they meet.

``"gemv"``: ``y = x @ W.T`` with the exact float32 weight ``lut[nibble] * scale``
(never rounded), products and sums in float32. ``"mma"``: the weight rounded
once to ``x.dtype`` (``matmul_4bit_reference``'s contract), float32
accumulation. Both add the bias in float32 and round once to ``x.dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._src.matmul_4bit.reference import (decode_weight_reference,
                                                       matmul_4bit_reference)
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat


def lut_matmul_reference(x: jax.Array, w: PackedWeight, *, fmt: WeightFormat, kind: str,
                         bias: jax.Array | None = None) -> jax.Array:
  """``x @ W.T + bias`` as the ``kind`` kernel computes it, in ``x.dtype``."""
  if kind == "mma":
    return matmul_4bit_reference(x, w, fmt=fmt, bias=bias)
  wt = decode_weight_reference(w, fmt, jnp.float32)
  acc = jax.lax.dot_general(x.astype(jnp.float32), wt, (((1,), (1,)), ((), ())),
                            precision=jax.lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float32)
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)[None, :]
  return acc.astype(x.dtype)
