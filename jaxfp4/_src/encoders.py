"""Scaled value -> nibble, exactly, with one table lookup and one comparison.

Every 4-bit encoder here is a threshold count: bitsandbytes NF4 is
``#{k : s > T_k}`` over 15 float32 thresholds (``dQuantizeNF4``), bitsandbytes
FP4 the same on |s| over 7 (``dQuantizeFP4``), E2M1 round-to-nearest-even the
same with ties resolved by ``>=`` or ``>`` (OCP MX v1.0 §5.3.3).

Counting 15 thresholds costs ~30 operations per element, which made the
quantize kernel ALU-bound. A :class:`BucketTable` gets the same count from a
uniform grid of buckets, each holding at most one threshold:
``t = v * scale + offset``, ``b = clip(t)``, ``count = base[b] + (v > thr[b])``.
The table is exact as long as no threshold lies within rounding distance of a
bucket edge (``t`` may round across an edge when ``v`` is that close); that is
checked when the table is built, so a table that could be wrong never exists.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats

# A threshold closer than this to a bucket edge (relative) is refused: t has at
# most ~2**-22 relative rounding error, far below it.
_EDGE_MARGIN = 1e-6


@dataclasses.dataclass(frozen=True)
class BucketTable:
  """``#{k : v > thresholds[k]}`` as ``base[b] + (v > thr[b])``.

  Attributes:
    scale, offset: the bucket of ``v`` is ``floor(v * scale + offset)``,
      clamped to ``[0, len(base) - 1]``.
    base: thresholds strictly below each bucket.
    thr: the one threshold inside each bucket (+inf if none).
  """

  scale: float
  offset: float
  base: tuple[int, ...]
  thr: tuple[float, ...]

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(self.base, np.int32), np.asarray(self.thr, np.float32)


def build_table(thresholds: np.ndarray, *, scale: float, offset: float,
                num_buckets: int) -> BucketTable:
  """Buckets for sorted float32 ``thresholds`` (compared with strict ``>``)."""
  t = np.asarray(thresholds, np.float32).astype(np.float64)
  edges = (np.arange(num_buckets + 1) - offset) / scale  # value at bucket edges
  base, thr = [], []
  for b in range(num_buckets):
    lo, hi = edges[b], edges[b + 1]
    inside = t[(t >= lo) & (t < hi)] if b < num_buckets - 1 else t[t >= lo]
    if len(inside) > 1:
      raise ValueError(f"bucket {b} holds {len(inside)} thresholds; use more buckets")
    base.append(int(np.sum(t < lo)) if b else 0)
    thr.append(float(np.float32(inside[0])) if len(inside) else float("inf"))
  gaps = np.abs(t[:, None] - edges[None, 1:-1]) / np.maximum(1.0, np.abs(edges[None, 1:-1]))
  if gaps.size and gaps.min() < _EDGE_MARGIN:
    raise ValueError("a threshold lies on a bucket edge; shift the offset")
  if base[0] != 0 or np.sum(t < edges[0]) != 0:
    raise ValueError("the first bucket must start below every threshold")
  return BucketTable(scale, offset, tuple(base), tuple(thr))


def _inclusive_as_strict(thresholds) -> np.ndarray:
  """``v >= t`` is ``v > nextafter(t, -inf)`` in float32."""
  out = []
  for t, inclusive in thresholds:
    t32 = np.float32(t)
    out.append(np.nextafter(t32, np.float32(-np.inf)) if inclusive else t32)
  return np.asarray(out, np.float32)


# NF4 on s in [-1, 1]: 64 buckets of width 1/32 (thresholds are >= 0.08 apart).
NF4_TABLE = build_table(formats.NF4_THRESHOLDS, scale=32.0, offset=32.0, num_buckets=64)
# FP4 on |s| in [0, 1]: 32 buckets of width 1/32.
FP4_TABLE = build_table(formats.FP4_THRESHOLDS, scale=32.0, offset=0.0, num_buckets=32)
# E2M1 on |q| in [0, 6]: buckets of width 1/2 shifted by 1/8, since the RNE
# thresholds sit on multiples of 1/4.
E2M1_TABLE = build_table(_inclusive_as_strict(formats.E2M1_RNE_THRESHOLDS),
                         scale=2.0, offset=0.25, num_buckets=16)


def count_above(v: jax.Array, table: BucketTable, base, thr) -> jax.Array:
  """``#{k : v > T_k}`` via the bucket table (``base``/``thr`` index like arrays).

  ``base`` and ``thr`` are the table's arrays as jnp constants (XLA path) or as
  Pallas refs (kernel); both index with an int32 array. NaN lands in bucket 0,
  whose count is 0, on every backend (``t > 0`` is false for NaN; a plain clip
  would propagate NaN in XLA but not in Triton).
  """
  t = v * table.scale + table.offset
  t = jnp.minimum(jnp.where(t > 0, t, 0.0), len(table.base) - 1.0)
  b = t.astype(jnp.int32)
  return base[b] + (v > thr[b]).astype(jnp.int32)


def encode_nf4(s: jax.Array, base, thr) -> jax.Array:
  """bitsandbytes ``dQuantizeNF4``: ties go to the lower nibble; NaN gives 0."""
  return count_above(s, NF4_TABLE, base, thr)


def encode_fp4(s: jax.Array, base, thr) -> jax.Array:
  """bitsandbytes ``dQuantizeFP4``: sign bit 3 set for ``s < 0`` (not -0.0)."""
  c = count_above(jnp.abs(s), FP4_TABLE, base, thr)
  code = c ^ ((c & 2) << 1)  # == formats.FP4_MAGNITUDE_ORDER[c] for c in 0..7
  return jnp.where(s < 0, code + 8, code)  # NaN: bucket 0 and not negative -> 0


def encode_e2m1(q: jax.Array, base, thr) -> jax.Array:
  """E2M1 bits by round-to-nearest-even; magnitudes above 6 saturate to 6.

  -0.0 and small negatives keep the sign bit, as ``ml_dtypes.float4_e2m1fn``
  does. NaN lands in bucket 0 and, coming out of ``mul_ftz`` as the positive
  canonical NaN, encodes as 0.
  """
  k = count_above(jnp.abs(q), E2M1_TABLE, base, thr)
  return k | ((jax.lax.bitcast_convert_type(q, jnp.int32) >> 28) & 8)


TABLES = {"nf4": NF4_TABLE, "fp4": FP4_TABLE, "e2m1": E2M1_TABLE}
ENCODERS = {"nf4": encode_nf4, "fp4": encode_fp4, "e2m1": encode_e2m1}
