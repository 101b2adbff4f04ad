"""Pure-jnp reference of the 4-bit matmul kernels: the contract they meet.

``W = compute_dtype(ftz(f32(lut[nibble] * scale[block])))`` (one rounding, as
``dequantize_4bit``), then ``y = x @ W.T`` (forward) or ``dx = dy @ W``
(transposed) accumulated in float32, plus an optional float32 bias, rounded
once to the activation dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._src import numerics
from pallas_kernels._src.matmul_4bit import layout as layout_lib
from pallas_kernels._src.matmul_4bit.weight import PackedWeight, WeightFormat, combine_scales


def decode_scales_reference(w: PackedWeight, fmt: WeightFormat) -> jax.Array:
  """float32 ``[N, K // blocksize]`` block scales."""
  if fmt.scale_kind == "float":
    base = w.scales
  else:
    assert w.scale_table is not None, "check_weight: byte scales come with their table"
    base = w.scale_table[w.scales.astype(jnp.int32)]
  group = offset = None
  if fmt.nested_blocksize:
    assert w.group_scales is not None and w.offset is not None, "check_weight: nested parts"
    block = jnp.arange(w.scales.size, dtype=jnp.int32).reshape(w.scales.shape)
    group = w.group_scales[block // fmt.nested_blocksize]
    offset = w.offset[0]
  return combine_scales(base, group, offset, fmt)


def decode_weight_reference(w: PackedWeight, fmt: WeightFormat, dtype) -> jax.Array:
  """``W[N, K]`` in ``dtype``, in the real K order whatever ``fmt.layout`` the bytes hold."""
  n, k = w.shape
  b = w.data.astype(jnp.int32)
  lut = jnp.asarray(fmt.lut, jnp.float32)
  s = decode_scales_reference(w, fmt)[:, :, None]
  hi = numerics.flush_subnormals(lut[b >> 4] * s)
  lo = numerics.flush_subnormals(lut[b & 0xF] * s)
  stored = jnp.stack([hi, lo], axis=-1).reshape(n, k).astype(dtype)
  return layout_lib.to_real_order(stored, fmt.layout)


def precision_for(dtype) -> jax.lax.Precision:
  """float32 products in full precision (no TF32); 16-bit products are exact."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def matmul_4bit_reference(x: jax.Array, w: PackedWeight, *, fmt: WeightFormat,
                          transpose: bool = False, bias: jax.Array | None = None) -> jax.Array:
  """``x @ W.T + bias`` (or ``x @ W`` when ``transpose``) in ``x.dtype``.

  Args:
    x: ``[M, K]`` (``[M, N]`` when ``transpose``), float32/bfloat16/float16.
    w: the packed ``W[N, K]``.
    fmt: its static format.
    transpose: compute the input gradient ``dy @ W``.
    bias: optional float32 ``[N]`` added before rounding (forward only).

  Returns:
    ``[M, N]`` (``[M, K]`` when ``transpose``) of ``x.dtype``.
  """
  wt = decode_weight_reference(w, fmt, x.dtype)
  dims = (((1,), (0,)), ((), ())) if transpose else (((1,), (1,)), ((), ()))
  acc = jax.lax.dot_general(x, wt, dims, precision=precision_for(x.dtype),
                            preferred_element_type=jnp.float32)
  if bias is not None:
    acc = acc + bias.astype(jnp.float32)[None, :]
  return acc.astype(x.dtype)
