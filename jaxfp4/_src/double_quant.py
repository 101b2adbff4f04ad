"""Double quantization of the float32 absmax (bitsandbytes "nested" state).

bitsandbytes ``quantize_4bit(..., compress_statistics=True)`` subtracts the
mean of the absmax and quantizes the rest blockwise (256 per block) to 8 bits
with the dynamic map; see shared/docs/bnb_format.md §4 for the exact algorithm
(CUDA ``kQuantizeBlockwise<General8bit>`` with ``dQuantize<0>``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._src.numerics import unfused

from jaxfp4._src import formats
import pallas_kernels


def _pad_to_blocks(a: jax.Array, blocksize: int) -> jax.Array:
  nb = -(-a.shape[0] // blocksize)
  return jnp.pad(a, (0, nb * blocksize - a.shape[0])).reshape(nb, blocksize)


def dynamic_map_search(s: jax.Array, table) -> jax.Array:
  """Index into the sorted 256-entry ``code`` chosen by bnb's binary search.

  A transcription of the search in CUDA ``dQuantize<0>``: seven halving steps
  from pivot 127, then a choice between the pivot and the neighbour last
  visited by comparing against the float32 midpoint. Ties therefore depend on
  the side the search ended on, which a plain nearest-value search would miss.
  ``table`` is the sorted code as an array (or a Pallas ref: the kernel gathers
  from it the same way).
  """
  pivot = jnp.full(s.shape, 127, jnp.int32)
  upper_pivot = jnp.full(s.shape, 255, jnp.int32)
  lower_pivot = jnp.zeros(s.shape, jnp.int32)
  lower = jnp.full(s.shape, -1.0, jnp.float32)
  upper = jnp.full(s.shape, 1.0, jnp.float32)
  val = jnp.full(s.shape, table[127], jnp.float32)
  for step in (64, 32, 16, 8, 4, 2, 1):
    gt = s > val
    lower_pivot = jnp.where(gt, pivot, lower_pivot)
    lower = jnp.where(gt, val, lower)
    upper_pivot = jnp.where(gt, upper_pivot, pivot)
    upper = jnp.where(gt, upper, val)
    pivot = jnp.where(gt, pivot + step, pivot - step)
    val = table[pivot]
  upper = jnp.where(upper_pivot == 255, table[255], upper)
  lower = jnp.where(lower_pivot == 0, table[0], lower)
  gt = s > val
  up_choice = jnp.where(s > (upper + val) * 0.5, upper_pivot, pivot)
  down_choice = jnp.where(s < (lower + val) * 0.5, lower_pivot, pivot)
  return jnp.where(gt, up_choice, down_choice)


def quantize_blockwise_8bit(
    a: jax.Array,
    *,
    code: np.ndarray = formats.DYNAMIC_MAP_8BIT,
    blocksize: int = formats.NESTED_BLOCKSIZE,
    implementation: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """8-bit blockwise quantization of a float32 vector.

  Args:
    a: float32 vector.
    code: sorted 256-entry map (default: bnb's dynamic map).
    blocksize: elements per scale (bnb's nested state uses 256).
    implementation: None (the Pallas kernel on a GPU), ``"xla"`` or ``"pallas"``.

  Returns:
    ``(codes uint8 [n], absmax float32 [ceil(n / blocksize)])``.
  """
  n = a.shape[0]
  if n == 0:
    return jnp.zeros((0,), jnp.uint8), jnp.zeros((0,), jnp.float32)
  codes, absmax = pallas_kernels.quantize_8bit_blocks(
      _pad_to_blocks(a, blocksize), table=tuple(float(v) for v in code),
      search=dynamic_map_search, implementation=implementation)
  return codes.reshape(-1)[:n], absmax


def dequantize_blockwise_8bit(
    q: jax.Array, absmax: jax.Array, *, code, blocksize: int
) -> jax.Array:
  """``code[q] * absmax[i // blocksize]`` in float32 (CUDA kDequantizeBlockwise)."""
  n = q.shape[0]
  table = jnp.asarray(np.asarray(code, np.float32))
  values = _pad_to_blocks(table[q.astype(jnp.int32)], blocksize)
  return (values * absmax[:, None]).reshape(-1)[:n]


def _two_sum(a, b):
  """Error-free float32 addition: a + b == s + e exactly (Knuth's TwoSum)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def _compensated_add(x, y):
  (s1, e1), (s2, e2) = x, y
  s, err = _two_sum(s1, s2)
  return s, e1 + e2 + err


def accurate_mean(a: jax.Array, count: jax.Array | None = None) -> jax.Array:
  """float32 mean whose sum is nearly the exact (float64) sum.

  bitsandbytes' offset is torch's float32 ``mean`` on the GPU, whose last bit
  depends on its reduction order. Against 54 golden offsets a correctly rounded
  sum times ``float32(1/n)`` matched 46 (at most 2 ulp off), a plain float32
  ``jnp.mean`` 24. The sum here carries each partial sum's rounding error
  (TwoSum) through one variadic reduction, so it is that correctly rounded sum
  in practice, whatever order the backend reduces in.

  ``count`` (a traced int, default ``a.shape[0]``) divides the sum instead:
  the mean of the finite entries when the others were zeroed.
  """
  n = a.shape[0]
  s, e = jax.lax.reduce((a, jnp.zeros_like(a)), (jnp.float32(0), jnp.float32(0)),
                        _compensated_add, (0,))
  inv = jnp.float32(1.0 / n)
  if count is not None:  # the same constant when nothing was dropped
    inv = jnp.where(count == n, inv, 1.0 / jnp.maximum(count, 1).astype(jnp.float32))
  return unfused((s + e) * inv)


# Above this absmax the statistics are computed at 2**-40 scale: the sum of up
# to 2**31 entries cannot overflow and 1/(nested absmax) stays a normal float.
# Exact powers of two, and never reached by finite weights of real models, so
# ordinary states keep bitsandbytes' bytes.
_BIG_ABSMAX = 2.0 ** 86
_BIG_SCALE = 2.0 ** -40


def compress_absmax(absmax: jax.Array, *, nonfinite: str = "propagate"
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Double-quantizes a float32 absmax vector as bitsandbytes does.

  ``nonfinite="bnb"`` is bitsandbytes' computation, byte for byte: one
  non-finite or very large absmax makes the mean (the offset) non-finite or
  flushes the nested scale, and every block decodes to NaN (or to the offset).
  Otherwise a NaN absmax (a block that held NaN/Inf) is left out of the mean and
  makes only its nested group of 256 blocks NaN: the bitsandbytes layout has no
  NaN code for one block. An absmax above 2**86 is left out of the mean too
  (it would ruin every block's absmax), and the statistics are then computed at
  a scale where the nested reciprocal stays a normal float32. Below that,
  nothing changes: the bytes are bitsandbytes'.

  Returns:
    ``(codes uint8 [nb], offset float32 scalar, nested absmax float32)``; the
    offset is the mean of ``absmax``.
  """
  if nonfinite == "bnb" or not absmax.size:
    offset = accurate_mean(absmax) if absmax.size else jnp.float32(0.0)
    codes, absmax2 = quantize_blockwise_8bit(absmax - offset)
    return codes, offset.astype(jnp.float32), absmax2
  bad = jnp.isnan(absmax) | jnp.isinf(absmax)
  good = jnp.where(bad, 0.0, absmax)
  huge = good > _BIG_ABSMAX
  big = jnp.any(huge)
  good = jnp.where(big, good * jnp.float32(_BIG_SCALE), good)  # exact: a power of two
  # The mean of the ordinary blocks: a huge one would shift the shared offset
  # so far that every other block's absmax is lost in the 8-bit rounding.
  offset = accurate_mean(jnp.where(huge, 0.0, good), jnp.sum(~bad & ~huge))
  codes, absmax2 = quantize_blockwise_8bit(jnp.where(bad, offset, good) - offset)
  offset = jnp.where(big, offset * jnp.float32(1 / _BIG_SCALE), offset)
  absmax2 = jnp.where(big, absmax2 * jnp.float32(1 / _BIG_SCALE), absmax2)
  group_bad = jnp.any(_pad_to_blocks(bad, formats.NESTED_BLOCKSIZE), axis=1)
  absmax2 = jnp.where(group_bad, pallas_kernels.canonical_nan(absmax2.shape), absmax2)
  return codes, offset.astype(jnp.float32), absmax2


def decompress_absmax(codes, offset, absmax2, *, code, blocksize) -> jax.Array:
  """``f32(code[q] * absmax2[j // 256]) + offset``: two roundings, no FMA."""
  scaled = dequantize_blockwise_8bit(codes, absmax2, code=code, blocksize=blocksize)
  return unfused(scaled) + offset

