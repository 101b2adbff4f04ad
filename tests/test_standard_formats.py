"""E2M1, MXFP4 and NVFP4 element and scale bits against ml_dtypes conversions.

Each expected value is computed here in NumPy with ml_dtypes' own float4/float8
casts (round-to-nearest-even), independently of jaxfp4's encoders.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxfp4


def _nibbles(packed, n):
  b = np.asarray(packed).reshape(-1)
  return np.stack([b >> 4, b & 15], axis=1).reshape(-1)[:n]


def _e2m1_bits(v: np.ndarray) -> np.ndarray:
  return v.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF


def _backend_reciprocal(a: np.ndarray) -> np.ndarray:
  """1/a as this backend's XLA computes it (correctly rounded on the CPU,
  rcp.approx on a GPU); everything else below is plain NumPy + ml_dtypes."""
  return np.asarray(jax.jit(lambda v: 1.0 / v)(jnp.asarray(a, jnp.float32)))


def _inputs(seed, nb, bs):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((nb, bs)).astype(np.float32)
  x *= np.exp2(rng.integers(-12, 12, size=(nb, 1))).astype(np.float32)
  x[0] = 0.0                       # a zero block
  x[1, :] = -0.0                   # negative zeros keep their sign bit
  x[2, :8] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]  # E2M1 ties once scaled
  return x


@pytest.mark.parametrize("seed", [0, 1])
def test_e2m1_absmax_elements_match_ml_dtypes(seed):
  x = _inputs(seed, 64, 64)
  packed, state = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type="e2m1")
  amax = np.abs(x).max(axis=1)
  np.testing.assert_array_equal(np.asarray(state.absmax), amax)
  with np.errstate(invalid="ignore"):
    mult = _backend_reciprocal(amax) * np.float32(6)
    q = np.clip(x * mult[:, None], -6, 6)
  q = np.where(np.isnan(q), 0, q)  # zero block: 0 * inf
  want = _e2m1_bits(q.astype(np.float32)).reshape(-1)
  np.testing.assert_array_equal(_nibbles(packed, x.size), want)
  y = np.asarray(jaxfp4.dequantize_4bit(packed, state))
  scale = amax * np.float32(1 / 6)
  np.testing.assert_array_equal(
      y, q.astype(ml_dtypes.float4_e2m1fn).astype(np.float32) * scale[:, None])


@pytest.mark.parametrize("seed", [0, 1])
def test_mxfp4_scale_and_elements_match_ml_dtypes(seed):
  x = _inputs(seed, 64, 32)
  packed, state = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type="mxfp4")
  amax = np.abs(x).max(axis=1)
  _, ex = np.frexp(amax)
  shared = np.clip(ex - 1 - 2, -126, 127)  # OCP MX §6.3: floor(log2 amax) - emax(=2)
  scale = np.exp2(shared.astype(np.float64))
  want_scale = scale.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
  want_scale = np.where(amax == 0, 0, want_scale)  # an all-zero block stores 2**-127
  got_scale = np.asarray(state.absmax).view(np.uint8)
  np.testing.assert_array_equal(got_scale, want_scale)
  assert np.asarray(state.absmax).dtype == ml_dtypes.float8_e8m0fnu
  q = np.clip(x.astype(np.float64) / scale[:, None], -6, 6)  # exact: power-of-two scale
  np.testing.assert_array_equal(_nibbles(packed, x.size), _e2m1_bits(q).reshape(-1))
  y = np.asarray(jaxfp4.dequantize_4bit(packed, state), np.float64)
  want = q.astype(ml_dtypes.float4_e2m1fn).astype(np.float64) * scale[:, None]
  want[amax == 0] = 0.0
  np.testing.assert_array_equal(y, want)


def test_mxfp4_saturates_like_the_spec():
  # amax = 7 * 2**k: the floor rule gives X = 2**(k+2-2)... 7/X = 7 -> clamped to 6.
  x = np.zeros((1, 32), np.float32)
  x[0, 0], x[0, 1] = 7.0, -7.0
  packed, state = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type="mxfp4")
  y = np.asarray(jaxfp4.dequantize_4bit(packed, state))
  assert y[0, 0] == 6.0 and y[0, 1] == -6.0
  assert np.asarray(state.absmax).view(np.uint8)[0] == 127  # X = 2**0


@pytest.mark.parametrize("seed", [0, 1])
def test_nvfp4_scales_and_elements_match_ml_dtypes(seed):
  x = _inputs(seed, 128, 16)
  packed, state = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type="nvfp4")
  amax_t = np.float32(np.abs(x).max())
  # arXiv 2509.25149 App. B: encode = 6*448/amax_t, so encode/6 = 448/amax_t;
  # decode = amax_t/(6*448), stored as amax_t * float32(1/2688).
  enc_div6 = np.asarray(jax.jit(lambda a: 448.0 / a)(amax_t))  # the backend's division
  dec = amax_t * np.float32(1 / 2688)
  np.testing.assert_array_equal(np.asarray(state.global_scale), dec)
  amax = np.abs(x).max(axis=1)
  block_dec = np.minimum(amax * enc_div6, np.float32(448))
  e4m3 = block_dec.astype(ml_dtypes.float8_e4m3fn)
  np.testing.assert_array_equal(np.asarray(state.absmax).view(np.uint8), e4m3.view(np.uint8))
  denom = e4m3.astype(np.float32) * dec
  mult = np.where(denom > 0, _backend_reciprocal(np.where(denom > 0, denom, 1)), np.float32(0))
  q = np.clip(x * mult[:, None], -6, 6)
  np.testing.assert_array_equal(_nibbles(packed, x.size), _e2m1_bits(q).reshape(-1))
  y = np.asarray(jaxfp4.dequantize_4bit(packed, state))
  np.testing.assert_array_equal(y, q.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
                                * denom[:, None])


@pytest.mark.parametrize("quant_type", jaxfp4.QUANT_TYPES)
def test_stochastic_rounding_is_unbiased_between_neighbours(quant_type):
  """E[dequantize] = x, using only the two neighbouring code values."""
  bs = {"mxfp4": 32, "nvfp4": 16}.get(quant_type, 64)
  reps = 4000
  x = np.full((reps, bs), 0.3, np.float32)
  x[:, 0] = 1.0  # every block has absmax 1: the same grid for every row
  packed, state = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type=quant_type,
                                       rounding="stochastic", key=jax.random.key(7))
  y = np.asarray(jaxfp4.dequantize_4bit(packed, state))[:, 1:].reshape(-1)
  levels = np.unique(y)
  assert len(levels) == 2 and levels[0] < 0.3 < levels[1], levels
  lo, hi = levels
  p = (0.3 - lo) / (hi - lo)
  sigma = (hi - lo) * np.sqrt(p * (1 - p) / y.size)
  assert abs(y.mean() - 0.3) < 5 * sigma
  # nearest rounding picks one of the two for every element
  yn = np.asarray(jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(jnp.asarray(x),
                                                               quant_type=quant_type)))
  assert len(np.unique(yn[:, 1:])) == 1 and np.unique(yn[:, 1:])[0] in levels


def test_stochastic_rounding_depends_only_on_the_key():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
  q = lambda k: np.asarray(jaxfp4.quantize_4bit(x, quant_type="nvfp4", rounding="stochastic",
                                                key=jax.random.key(k))[0])
  np.testing.assert_array_equal(q(1), q(1))
  assert (q(1) != q(2)).any()
