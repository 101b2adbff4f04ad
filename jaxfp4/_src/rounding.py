"""Stochastic rounding onto a 4-bit code.

A scaled value ``s`` between adjacent representable values ``lo <= s <= hi``
rounds up with probability ``(s - lo) / (hi - lo)``, so ``E[decode] = s``: the
unbiased rounding the FP4 training recipes use for gradients (NVFP4, arXiv
2509.25149 §4.3; Tseng et al. 2025; microxcaling's "dither" mode). Sign-magnitude
formats (fp4, E2M1) round the magnitude and keep the sign bit; NF4, whose
table is not symmetric, rounds on the signed table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import codec
from jaxfp4._src import formats

ROUNDINGS = ("nearest", "stochastic")


def check_key(key, *, name: str = "key"):
  """``key`` if it is a PRNG key: typed (``jax.random.key``, shape ``()``) or
  legacy (``jax.random.PRNGKey``, uint32[2]); else ValueError naming ``name``.

  Checked here, before ``jit``, so a wrong key is not JAX's "invalid PRNG key
  data" from deep inside the trace. Tracers are checked by shape and dtype too.
  """
  dt, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
  if dt is not None and shape is not None:
    typed = jax.dtypes.issubdtype(dt, jax.dtypes.prng_key)
    if typed and tuple(shape) == ():
      return key
    if not typed and dt == jnp.uint32 and tuple(shape) == (2,):
      return key
    got = f"an array of {'keys' if typed else jnp.dtype(dt).name}{list(shape)}"
  else:
    got = f"{type(key).__name__} {key!r}"[:80]
  raise ValueError(f"`{name}` must be a PRNG key: jax.random.key(seed) (a typed key of shape ()) or "
                   f"jax.random.PRNGKey(seed) (uint32[2]); got {got}.")


def _ladder(fmt: formats.QuantFormat) -> tuple[np.ndarray, np.ndarray, bool]:
  """(sorted values, their nibbles, sign-magnitude?) for a format."""
  if fmt.name == "nf4":
    return formats.NF4_CODE.copy(), np.arange(16, dtype=np.int32), False
  if fmt.name == "fp4":
    mags = formats.FP4_CODE[:8]
    order = np.argsort(mags, kind="stable")
    return mags[order], order.astype(np.int32), True
  return formats.E2M1_VALUES[:8].copy(), np.arange(8, dtype=np.int32), True


def _round_on_ladder(s: jax.Array, values: np.ndarray, nibbles: np.ndarray,
                     u: jax.Array) -> jax.Array:
  v = jnp.asarray(values)
  s = jnp.clip(s, v[0], v[-1])
  # index of the largest ladder value <= s, kept below the top rung
  rungs = v.reshape((1,) * s.ndim + (-1,))
  lo_idx = jnp.clip(jnp.sum(s[..., None] >= rungs, axis=-1) - 1, 0, len(values) - 2)
  lo, hi = v[lo_idx], v[lo_idx + 1]
  p = (s - lo) / (hi - lo)
  idx = jnp.where(u < p, lo_idx + 1, lo_idx)
  return jnp.asarray(nibbles)[idx]


def stochastic_encode(scaled: jax.Array, fmt: formats.QuantFormat,
                      key: jax.Array) -> jax.Array:
  """Nibbles of ``scaled`` (already divided by the block scale), rounded stochastically.

  Args:
    scaled: float32 values in the format's code domain ([-1, 1] for nf4/fp4,
      [-6, 6] for the E2M1 formats; larger magnitudes saturate).
    fmt: the format.
    key: PRNG key; one uniform draw per element.

  Returns:
    int32 nibbles of the same shape. NaN inputs give nibble 0.
  """
  s = codec.flush_subnormals(scaled)
  u = jax.random.uniform(key, s.shape, jnp.float32)
  values, nibbles, sign_magnitude = _ladder(fmt)
  nan = jnp.isnan(s)
  s = jnp.where(nan, 0.0, s)
  if not sign_magnitude:
    return jnp.where(nan, 0, _round_on_ladder(s, values, nibbles, u))
  mag = _round_on_ladder(jnp.abs(s), values, nibbles, u)
  if fmt.name == "fp4":
    neg = s < 0  # bitsandbytes: -0.0 is not negative
  else:
    neg = (jax.lax.bitcast_convert_type(s, jnp.uint32) >> 31) == 1
  return jnp.where(nan, 0, jnp.where(neg, mag + 8, mag))
