"""Clipped absmax scales: ``quantize_4bit_clipped`` (valid bitsandbytes states) and ``search_clip``."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfp4
from jaxfp4._src.calibration import clipping
from jaxfp4._src.calibration.clipping import row_errors, search_clip


@pytest.mark.parametrize("quant_type,dq", (("nf4", False), ("nf4", True), ("fp4", True), ("e2m1", False)))
def test_clipped_state_is_a_valid_bnb_state(quant_type, dq):
  w = jax.random.t(jax.random.key(5), 3.0, (32, 128))
  nb = w.size // 64
  clip = jnp.linspace(0.5, 1.0, nb)
  packed, state = jaxfp4.quantize_4bit_clipped(w, clip=clip, quant_type=quant_type, compress_statistics=dq)
  nibbles = np.asarray(jaxfp4.unpack_nibbles(packed.reshape(-1)))[: w.size]
  scale = np.repeat(np.asarray(jaxfp4.block_scales(state)), 64)
  lut = np.asarray(state.format.decode_lut, np.float32)
  expect = (lut[nibbles] * scale).reshape(w.shape)
  np.testing.assert_array_equal(np.asarray(jaxfp4.dequantize_4bit(packed, state)), expect)
  # Clipped values decode to the code's end: the stored absmax (x 6 for e2m1's block scale) bounds them.
  assert np.all(np.abs(expect).reshape(nb, 64).max(axis=1) <= scale.reshape(nb, 64)[:, 0] * lut.max() * (1 + 1e-6))
  # clip = 1 is quantize_4bit, byte for byte.
  p1, s1 = jaxfp4.quantize_4bit_clipped(w, clip=1.0, quant_type=quant_type, compress_statistics=dq)
  p2, s2 = jaxfp4.quantize_4bit(w, quant_type=quant_type, compress_statistics=dq)
  np.testing.assert_array_equal(p1, p2)
  np.testing.assert_array_equal(s1.absmax, s2.absmax)
  roundtrip = jaxfp4.QuantState.from_dict(state.as_dict(packed=True))
  np.testing.assert_array_equal(jaxfp4.dequantize_4bit(packed, roundtrip), expect)


@pytest.mark.parametrize("quant_type,dq", (("nf4", False), ("nf4", True), ("e2m1", False)))
def test_clip_search_never_worse_and_better_on_heavy_tails(quant_type, dq):
  w = jax.random.t(jax.random.key(6), 2.5, (48, 128))  # heavy-tailed rows
  x = jax.random.normal(jax.random.key(7), (512, 128))
  h = x.T @ x
  opts = dict(quant_type=quant_type, compress_statistics=dq)
  plain = row_errors(jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(w, **opts)), w, h)
  clip = search_clip(w, h, **opts)
  packed, state = jaxfp4.quantize_4bit_clipped(w, clip=np.repeat(clip, 2), **opts)
  found = row_errors(jaxfp4.dequantize_4bit(packed, state), w, h)
  if dq:  # double quantization couples the blocks' scales: the layer total is guaranteed
    assert float(found.sum()) <= float(plain.sum())
  else:  # 1.0 is in the grid and rows are independent: every row is
    assert np.all(np.asarray(found) <= np.asarray(plain) * (1 + 1e-6))
  assert float(found.sum()) < 0.97 * float(plain.sum())  # measured 0.88 (fp4) to 0.95 (nf4)
  assert np.any(clip < 1.0)


def test_clip_bad_input():
  w = jnp.ones((4, 64))
  with pytest.raises(ValueError, match="`quant_type` must be one of \\('nf4', 'fp4', 'e2m1'\\)"):
    jaxfp4.quantize_4bit_clipped(w, clip=0.9, quant_type="mxfp4")
  with pytest.raises(ValueError, match="`clip` must be in \\(0, 1\\]"):
    jaxfp4.quantize_4bit_clipped(w, clip=1.5)
  with pytest.raises(ValueError, match="`clip` must be a scalar or an array \\[4\\]"):
    jaxfp4.quantize_4bit_clipped(w, clip=jnp.ones(3))
  with pytest.raises(ValueError, match="`grid` must hold ratios in \\(0, 1\\] including 1.0"):
    search_clip(w, jnp.eye(64), grid=(0.5, 0.9))


def test_docstring_example_runs():
  result = doctest.testmod(clipping, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
