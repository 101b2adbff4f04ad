"""The bucket-table encoders against plain threshold counting.

The oracle here counts thresholds one by one in NumPy (the literal definition
of bitsandbytes' ``dQuantizeNF4``/``dQuantizeFP4`` trees and of E2M1
round-to-nearest-even). Inputs: every threshold and every bucket edge and their
float32 neighbours, specials, and random values far outside the code range.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import jax.numpy as jnp

from jaxfp4._src import encoders
from jaxfp4._src import formats


def _neighbours(points, ulps=4):
  out = []
  for p in np.asarray(points, np.float32):
    v = p
    for _ in range(ulps):
      v = np.nextafter(v, np.float32(-np.inf))
    for _ in range(2 * ulps + 1):
      out.append(v)
      v = np.nextafter(v, np.float32(np.inf))
  return np.asarray(out, np.float32)


def _probe(table, signed):
  edges = (np.arange(len(table.base) + 1) - table.offset) / table.scale
  thr = np.asarray([t for t in table.thr if np.isfinite(t)], np.float32)
  pts = np.concatenate([_neighbours(edges.astype(np.float32)), _neighbours(thr),
                        np.random.default_rng(0).uniform(-8, 8, 20000).astype(np.float32),
                        np.float32([0.0, -0.0, 1e-39, -1e-39, 1.0, -1.0, 6.0, -6.0, 7.0,
                                    -7.0, 1e30, -1e30, np.inf, -np.inf, np.nan])])
  if signed:
    pts = np.concatenate([pts, -pts])
  # Encoders see flushed values (the codec flushes, as bitsandbytes' fast-math
  # build does): subnormals become a zero of the same sign.
  tiny = np.abs(pts) < np.finfo(np.float32).tiny
  return np.where(tiny, np.copysign(np.float32(0), pts), pts).astype(np.float32)


def _run(fn, table, v):
  base, thr = (jnp.asarray(a) for a in table.arrays())
  return np.asarray(fn(jnp.asarray(v), base, thr))


def test_nf4_equals_threshold_count():
  v = _probe(encoders.NF4_TABLE, signed=True)
  want = np.sum(v[:, None] > formats.NF4_THRESHOLDS[None, :], axis=1)  # NaN -> 0
  np.testing.assert_array_equal(_run(encoders.encode_nf4, encoders.NF4_TABLE, v), want)


def test_fp4_equals_threshold_count():
  v = _probe(encoders.FP4_TABLE, signed=True)
  c = np.sum(np.abs(v)[:, None] > formats.FP4_THRESHOLDS[None, :], axis=1)
  want = formats.FP4_MAGNITUDE_ORDER[c] + 8 * (v < 0)
  want[np.isnan(v)] = 0
  np.testing.assert_array_equal(_run(encoders.encode_fp4, encoders.FP4_TABLE, v), want)


def test_e2m1_equals_ml_dtypes_round_to_nearest_even():
  v = _probe(encoders.E2M1_TABLE, signed=True)
  v = v[~np.isnan(v)]
  clipped = np.clip(v, -6, 6)  # the encoder saturates; ml_dtypes gets in-range input
  want = clipped.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF
  np.testing.assert_array_equal(_run(encoders.encode_e2m1, encoders.E2M1_TABLE, v), want)
  assert _run(encoders.encode_e2m1, encoders.E2M1_TABLE, np.float32([np.nan]))[0] == 0


def test_a_table_with_a_threshold_on_an_edge_is_refused():
  with pytest.raises(ValueError, match="on a bucket edge"):
    encoders.build_table(np.float32([0.5]), scale=2.0, offset=0.0, num_buckets=4)
  with pytest.raises(ValueError, match="holds 2 thresholds"):
    encoders.build_table(np.float32([0.1, 0.2]), scale=2.0, offset=0.0, num_buckets=4)
