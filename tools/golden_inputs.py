"""Deterministic test inputs for the bitsandbytes golden data.

The inputs are built from integers only (a SplitMix64 counter hash, an
Irwin-Hall sum of four 24-bit uniforms, exact power-of-two scaling) and one
IEEE float64 multiply, then rounded to float32 / bfloat16 / float16 with
round-to-nearest-even. The bytes are therefore the same on every platform and
NumPy version, so the golden file stores only their SHA-256 and the outputs.

Layout of the ``main`` tensor (n = 24653, odd; every region starts on a
multiple of 4096, so every block size sees the same features):

* [0, 4096)       unit Gaussian
* [4096, 8192)    zeros (an all-zero block for every block size)
* [8192, 12288)   threshold probes: every 32-chunk starts with +-1.0 (so each
                  block's absmax is exactly 1) followed by NF4/FP4 thresholds
                  and their float32 neighbours, both signs
* [12288, 16384)  Gaussian with a per-32 power-of-two scale in [2^-20, 2^14]
* [16384, 20480)  Gaussian * 0.02 (typical weights)
* [20480, 24653)  Gaussian with 1% outliers of 30x, then the odd tail
"""

from __future__ import annotations

import hashlib
import math

import ml_dtypes
import numpy as np

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
DTYPES = ("float32", "bfloat16", "float16")


def splitmix64(counter: np.ndarray) -> np.ndarray:
  """SplitMix64 (Steele, Lea, Flood 2014) of uint64 counters."""
  with np.errstate(over="ignore"):
    z = counter.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_bits(seed: int, n: int, stream: int) -> np.ndarray:
  idx = np.arange(n, dtype=np.uint64) + np.uint64((seed * 1000003 + stream) << 32)
  return splitmix64(idx)


def gaussian(seed: int, n: int) -> np.ndarray:
  """Approximately N(0, 1) float32 from four 24-bit uniforms (Irwin-Hall)."""
  total = np.zeros(n, np.int64)
  for k in range(4):
    total += (uniform_bits(seed, n, k) >> np.uint64(40)).astype(np.int64)
  centered = total - 2 * (1 << 24)
  # Irwin-Hall(4) has variance 4/12; scale the integer sum to unit variance.
  return (centered.astype(np.float64) * (1.0 / ((1 << 24) * math.sqrt(1.0 / 3.0)))).astype(np.float32)


def _threshold_probes() -> np.ndarray:
  from jaxfp4._src import formats  # the exact float32 thresholds
  t = np.concatenate([formats.NF4_THRESHOLDS, formats.FP4_THRESHOLDS,
                      -formats.FP4_THRESHOLDS]).astype(np.float32)
  up = np.nextafter(t, np.float32(np.inf))
  down = np.nextafter(t, np.float32(-np.inf))
  return np.concatenate([t, up, down]).astype(np.float32)


def main_tensor() -> np.ndarray:
  n = 24653
  x = np.zeros(n, np.float32)
  x[0:4096] = gaussian(1, 4096)
  probes = _threshold_probes()
  region = np.empty(4096, np.float32)
  for c in range(128):
    chunk = np.resize(np.roll(probes, -31 * c), 31)
    region[32 * c] = 1.0 if c % 2 == 0 else -1.0
    region[32 * c + 1: 32 * c + 32] = chunk
  x[8192:12288] = region
  exps = (uniform_bits(3, 128, 0) % np.uint64(35)).astype(np.int64) - 20
  x[12288:16384] = gaussian(4, 4096) * np.repeat(np.ldexp(np.float32(1), exps), 32).astype(np.float32)
  x[16384:20480] = gaussian(5, 4096) * np.float32(0.02)
  tail = gaussian(6, n - 20480)
  outlier = (uniform_bits(6, n - 20480, 9) % np.uint64(100)) == 0
  x[20480:] = np.where(outlier, tail * np.float32(30.0), tail)
  return x


def large_tensor() -> np.ndarray:
  """1M weights, N(0, 0.5), for mismatch rates at scale."""
  return gaussian(7, 1 << 20) * np.float32(0.5)


def edge_tensor() -> np.ndarray:
  """Eight 64-blocks of non-finite and subnormal cases (float32 base)."""
  g = gaussian(8, 512)
  x = g.copy()
  x[3] = np.nan                       # block 0: one NaN
  x[64 + 5] = np.inf                  # block 1: +Inf
  x[128:192] = np.nan                 # block 2: all NaN
  x[192:256] = g[192:256] * np.float32(1e-39)   # block 3: float32 subnormals only
  x[256:320:2] = g[256:320:2] * np.float32(1e-39)  # block 4: half subnormal
  x[320 + 1] = -np.inf                # block 5: -Inf and a NaN
  x[320 + 2] = np.nan
  x[384:448] = g[384:448] * np.float32(1e-37)   # block 6: tiny but normal
  x[448:512] = g[448:512] * np.float32(1e-10)   # block 7: products underflow
  x[448] = np.float32(1e30)
  return x


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "bfloat16":
    return x.astype(ml_dtypes.bfloat16)
  with np.errstate(over="ignore"):  # 1e30 in the edge tensor is Inf in float16
    return x.astype(np.dtype(dtype))


def sha256(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


TENSORS = {"main": main_tensor, "large": large_tensor, "edge": edge_tensor}
