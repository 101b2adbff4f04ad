"""Elementwise float32 helpers used by the kernels and by jaxfp4 (no Pallas import)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def select_lut(idx: jax.Array, values: tuple[float, ...]) -> jax.Array:
  """``values[idx]`` for a static table, as a binary tree of selects on the bits.

  No gather, so it lowers everywhere (``jnp.take`` does not lower in Triton).
  """
  n = len(values)
  if n == 1:
    return jnp.full(idx.shape, values[0], jnp.float32)
  half = 1 << ((n - 1).bit_length() - 1)
  lo = select_lut(idx, values[:half])
  hi = select_lut(idx - half, values[half:])
  return jnp.where(idx >= half, hi, lo)


def flush_subnormals(x: jax.Array) -> jax.Array:
  """float32 subnormals -> signed zero (the CUDA ``.ftz`` convention)."""
  b = jax.lax.bitcast_convert_type(x, jnp.uint32)
  sub = (b & jnp.uint32(0x7F800000)) == 0
  return jax.lax.bitcast_convert_type(
      jnp.where(sub, b & jnp.uint32(0x80000000), b), jnp.float32)


def canonical_nan(shape=()) -> jax.Array:
  """float32 quiet NaN with the bit pattern 0x7FC00000 on every backend.

  NaN produced by arithmetic has backend-specific payloads (PTX gives
  0x7FFFFFFF); stored scales should not depend on the backend.
  """
  return jax.lax.bitcast_convert_type(jnp.full(shape, 0x7FC00000, jnp.uint32), jnp.float32)


def mul_ftz(a: jax.Array, b: jax.Array) -> jax.Array:
  """CUDA ``mul.ftz.f32`` in plain jnp: flush the inputs, multiply, flush.

  A NaN product is returned as :func:`canonical_nan`, as the PTX instruction
  returns one canonical NaN whatever the operands' payloads or signs.
  """
  p = flush_subnormals(flush_subnormals(a) * b)
  return jnp.where(p == p, p, canonical_nan(p.shape))


def unfused(p: jax.Array) -> jax.Array:
  """``p`` in a form the compiler cannot contract with a following add.

  XLA CPU (and LLVM in general) fuses ``a * b + c`` into one FMA, a single
  rounding where bitsandbytes rounds twice. A select on ``p == p`` (false only
  for NaN, where both branches are NaN) breaks the pattern.
  """
  return jnp.where(p == p, p, p + 1.0)
