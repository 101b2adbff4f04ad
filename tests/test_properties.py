"""Hypothesis properties of quantize/dequantize.

* error bound: |dequantize(quantize(x)) - x| <= half the widest gap of the
  code times the block scale, plus the saturation of formats whose largest
  code can sit below the block max (MX, NVFP4), plus output rounding;
* idempotence: quantize(dequantize(q)) == q, except that bitsandbytes FP4's
  code 8 decodes to -0.0 and bitsandbytes encodes -0.0 as code 0 (same value);
* serialization: QuantState.from_dict(state.as_dict()) == state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxfp4
from jaxfp4._src import formats

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# Each example has its own shape: jitted, dequantize compiles one program per shape
# instead of each primitive op by op (about 2x faster on a CPU core). Eager dequantize
# runs in tests/test_quantize.py (every quant type, dtype and shape).
_DEQUANTIZE = jax.jit(jaxfp4.dequantize_4bit)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _half_widest_gap(quant_type: str) -> float:
  values = np.unique(np.asarray(formats.get_format(quant_type).decode_lut, np.float64))
  return float(np.max(np.diff(values))) / 2


@st.composite
def inputs(draw):
  quant_type = draw(st.sampled_from(jaxfp4.QUANT_TYPES))
  fmt = formats.get_format(quant_type)
  bs = draw(st.sampled_from(fmt.blocksizes[:4]))
  dtype = draw(st.sampled_from(list(DTYPES)))
  n = draw(st.integers(1, 3 * bs + 5))
  seed = draw(st.integers(0, 2**31 - 1))
  log_scale = draw(st.floats(-6, 6))
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(n) * np.exp2(log_scale)
  if draw(st.booleans()):  # heavy tails: a few outliers per tensor
    x = x * np.where(rng.random(n) < 0.05, 40.0, 1.0)
  x = jnp.asarray(x.astype(np.float32)).astype(DTYPES[dtype])
  nested = fmt.supports_double_quant and draw(st.booleans())
  return x, quant_type, bs, nested


@SETTINGS
@given(inputs())
def test_roundtrip_error_is_bounded_by_the_code_spacing(case):
  x, quant_type, bs, nested = case
  packed, state = jaxfp4.quantize_4bit(x, quant_type=quant_type, blocksize=bs,
                                       compress_statistics=nested)
  y = np.asarray(_DEQUANTIZE(packed, state), np.float64)
  xf = np.asarray(x, np.float64)
  n = xf.size
  nb = state.num_blocks
  # the scale the values were encoded with (exact absmax), and the one decoded
  _, plain = jaxfp4.quantize_4bit(x, quant_type=quant_type, blocksize=bs)
  s_enc = np.asarray(jaxfp4.block_scales(plain), np.float64)
  s_dec = np.asarray(jaxfp4.block_scales(state), np.float64)
  amax = np.pad(np.abs(xf), (0, nb * bs - n)).reshape(nb, bs).max(axis=1)
  vmax = float(np.max(np.abs(formats.get_format(quant_type).decode_lut)))
  # values above the largest code are clamped to it: |x| - vmax * scale
  saturation = np.maximum(amax - vmax * s_enc, 0.0)
  # nested: the decoded absmax is 8-bit, every code is off by |s_dec - s_enc|
  bound = _half_widest_gap(quant_type) * s_enc + saturation + vmax * np.abs(s_dec - s_enc)
  eps = float(jnp.finfo(x.dtype).eps)
  bound = np.repeat(bound, bs)[:n] * (1 + 4e-6) + eps * np.abs(y)
  err = np.abs(y - xf)
  assert np.all(err <= bound), (quant_type, bs, nested, float((err - bound).max()))


@SETTINGS
@given(inputs())
def test_quantize_of_dequantized_values_gives_the_same_codes(case):
  x, quant_type, bs, nested = case
  packed, state = jaxfp4.quantize_4bit(x, quant_type=quant_type, blocksize=bs)
  y = _DEQUANTIZE(packed, state)
  packed2, _ = jaxfp4.quantize_4bit(y, quant_type=quant_type, blocksize=bs)
  codes = jaxfp4.unpack_nibbles(packed.reshape(-1))
  codes2 = jaxfp4.unpack_nibbles(packed2.reshape(-1))
  if quant_type == "fp4":  # -0.0 (code 8) re-encodes as +0.0 (code 0)
    codes = jnp.where(codes == 8, 0, codes)
  np.testing.assert_array_equal(np.asarray(codes2), np.asarray(codes))


@SETTINGS
@given(inputs(), st.booleans())
def test_as_dict_from_dict_round_trip(case, packed_form):
  x, quant_type, bs, nested = case
  _, state = jaxfp4.quantize_4bit(x, quant_type=quant_type, blocksize=bs,
                                  compress_statistics=nested)
  again = jaxfp4.QuantState.from_dict(state.as_dict(packed=packed_form))
  assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(a)).view(np.uint8),
                                  np.atleast_1d(np.asarray(b)).view(np.uint8))
  assert (again.shape, again.dtype, again.blocksize, again.quant_type) == \
      (state.shape, state.dtype, state.blocksize, state.quant_type)
