"""``jaxfp4.training.fake_quantize_learned``: LSQ gradients for per-block scales, and their export."""

from __future__ import annotations

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxfp4
import jaxfp4.training as T
from jaxfp4._src import formats
from jaxfp4._src.training import learned_scale

TYPES = ("nf4", "fp4", "e2m1")


def weights(shape=(8, 64), seed=0):
  return jax.random.t(jax.random.key(seed), 3.0, shape)


@pytest.mark.parametrize("quant_type", TYPES)
def test_forward_is_the_stored_state(quant_type):
  w = weights()
  s = T.init_learned_scales(w, quant_type=quant_type) * jnp.linspace(0.6, 1.3, 8)  # clips some, widens some
  y = T.fake_quantize_learned(w, s, quant_type=quant_type)
  packed, state = T.quantize_4bit_learned(w, s, quant_type=quant_type)
  np.testing.assert_array_equal(y, jaxfp4.dequantize_4bit(packed, state))
  # At the absmax itself it is plain quantize_4bit.
  s0 = T.init_learned_scales(w, quant_type=quant_type)
  np.testing.assert_array_equal(T.fake_quantize_learned(w, s0, quant_type=quant_type),
                                jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(w, quant_type=quant_type)))


@pytest.mark.parametrize("quant_type", TYPES)
def test_gradients_follow_lsq(quant_type):
  w = weights()
  s = T.init_learned_scales(w, quant_type=quant_type) * 0.7  # some values beyond the range
  ct = jax.random.normal(jax.random.key(1), w.shape)
  f = lambda w, s: jnp.sum(ct * T.fake_quantize_learned(w, s, quant_type=quant_type))
  gw, gs = jax.grad(f, argnums=(0, 1))(w, s)
  m = 1 / 6 if quant_type == "e2m1" else 1.0
  qmax = max(formats.get_format(quant_type).decode_lut)
  d = np.asarray(s, np.float64)[:, None] * m
  wb = np.asarray(w, np.float64).reshape(8, 64)
  v = wb / d
  inside = np.abs(v) <= qmax
  assert 0 < (~inside).sum() < inside.sum()
  np.testing.assert_array_equal(np.asarray(gw).reshape(8, 64), np.where(inside, np.asarray(ct).reshape(8, 64), 0))
  q = np.asarray(T.fake_quantize_learned(w, s, quant_type=quant_type), np.float64).reshape(8, 64) / d
  expect = np.sum(np.asarray(ct, np.float64).reshape(8, 64) * m * np.where(inside, q - v, np.sign(v) * qmax), axis=1)
  np.testing.assert_allclose(gs, expect, rtol=2e-5, atol=1e-5)
  # Finite differences of the smooth parts: outside the range w_hat = sign(v) q_max d is linear in s;
  # inside, at fixed nibbles, w_hat = q d changes by m q, which LSQ's -m v corrects for the rounding's slope.
  eps = 1e-3
  fd_parts = np.zeros(8)
  for b in range(8):
    fd_out = np.sign(v[b]) * qmax * m  # d/ds of sign(v) * qmax * s * m
    fd_in = q[b] * m
    fd_parts[b] = np.sum(np.asarray(ct, np.float64).reshape(8, 64)[b] * np.where(inside[b], fd_in - m * v[b], fd_out))
    sp = np.asarray(s).copy(); sp[b] += eps
    # The outside values move exactly as predicted (they stay outside for a small step).
    yp = np.asarray(T.fake_quantize_learned(w, jnp.asarray(sp), quant_type=quant_type), np.float64).reshape(8, 64)
    y0 = np.asarray(T.fake_quantize_learned(w, s, quant_type=quant_type), np.float64).reshape(8, 64)
    out = ~inside[b] & (np.abs(wb[b] / ((sp[b]) * m)) > qmax)
    np.testing.assert_allclose((yp[b] - y0[b])[out] / eps, fd_out[out], rtol=1e-2)
  np.testing.assert_allclose(gs, fd_parts, rtol=2e-5, atol=1e-5)


def test_grad_scale():
  w = weights()
  s = T.init_learned_scales(w) * 0.9
  g1 = jax.grad(lambda s: jnp.sum(T.fake_quantize_learned(w, s) ** 2))(s)
  gl = jax.grad(lambda s: jnp.sum(T.fake_quantize_learned(w, s, grad_scale="lsq") ** 2))(s)
  np.testing.assert_allclose(gl, g1 / math.sqrt(64 * 8), rtol=1e-6)  # nf4: 8 positive levels
  with pytest.raises(ValueError, match="`grad_scale` must be None, 'lsq' or a positive float"):
    T.fake_quantize_learned(w, s, grad_scale="adam")
  with pytest.raises(ValueError, match="`quant_type` must be one of \\('nf4', 'fp4', 'e2m1'\\)"):
    T.fake_quantize_learned(w, s, quant_type="nvfp4")
  with pytest.raises(ValueError, match="`scale` must have shape \\(8,\\)"):
    T.fake_quantize_learned(w, s[:4])


def test_learning_scales_lowers_the_output_error():
  w = weights((32, 256), seed=2)
  x = jax.random.normal(jax.random.key(3), (256, 256))
  y = x @ w.T
  opts = dict(quant_type="nf4", blocksize=256)

  @jax.jit
  def loss(s):
    return jnp.mean((x @ T.fake_quantize_learned(w, s, grad_scale="lsq", **opts).T - y) ** 2)

  s = T.init_learned_scales(w, **opts)
  opt = optax.adam(2e-2)
  state = opt.init(s)
  first = float(loss(s))
  step = jax.jit(lambda s, st: opt.update(jax.grad(loss)(s), st, s))
  with jax.numpy_dtype_promotion("standard"):
    for _ in range(100):
      updates, state = step(s, state)
      s = optax.apply_updates(s, updates)
  last = float(loss(s))
  assert last < 0.95 * first, (first, last)  # measured 0.93
  packed, qs = T.quantize_4bit_learned(w, s, **opts)  # the learned absmax exports as a bitsandbytes state
  stored = jnp.mean((x @ jaxfp4.dequantize_4bit(packed, qs).T - y) ** 2)
  assert float(stored) == pytest.approx(last, rel=1e-5)


def test_docstring_examples_run():
  result = doctest.testmod(learned_scale, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
