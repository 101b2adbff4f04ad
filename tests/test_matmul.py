"""``jaxfp4.matmul_4bit``: every format, both implementations, gradients, bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfp4
from jaxfp4._src import product as product_lib
from pallas_kernels._src.lut_matmul import api as lut_api
from pallas_kernels._src.matmul_4bit import config as mcfg
from tests.conftest import on_gpu
from tests.test_matmul_kernels import check_close

FORMATS = [(qt, False) for qt in jaxfp4.QUANT_TYPES] + [
    ("nf4", True), ("fp4", True), ("e2m1", True)]


def _weight(n, k, quant_type, nested, dtype=jnp.bfloat16, seed=0, **kw):
  w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32).astype(dtype)
  return jaxfp4.quantize_4bit(w, quant_type=quant_type, compress_statistics=nested, **kw)


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
@pytest.mark.parametrize("quant_type,nested", FORMATS)
def test_forward_and_input_gradient(quant_type, nested, implementation):
  n, k = 48, 256
  packed, state = _weight(n, k, quant_type, nested, seed=len(quant_type))
  wd = jaxfp4.dequantize_4bit(packed, state)
  x = jax.random.normal(jax.random.key(1), (2, 3, k), jnp.bfloat16)
  bias = jax.random.normal(jax.random.key(2), (n,), jnp.float32)
  dy = jax.random.normal(jax.random.key(3), (2, 3, n), jnp.bfloat16)

  def f(x, bias):
    return jaxfp4.matmul_4bit(x, packed, state, bias=bias, implementation=implementation)

  y, pullback = jax.vjp(jax.jit(f), x, bias)
  assert y.shape == (2, 3, n) and y.dtype == jnp.bfloat16
  check_close(y.reshape(6, n), x.reshape(6, k), wd, "bfloat16", False, bias)
  dx, dbias = pullback(dy)
  check_close(dx.reshape(6, k), dy.reshape(6, n), wd, "bfloat16", True)
  np.testing.assert_allclose(
      np.asarray(dbias), np.asarray(dy, np.float64).reshape(6, n).sum(0), rtol=1e-6, atol=1e-6)


def test_weight_is_frozen_and_transforms_compose():
  packed, state = _weight(32, 128, "nf4", True, dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (4, 128), jnp.float32)
  impl = "pallas"

  def loss(x, state, bias):
    y = jaxfp4.matmul_4bit(x, packed, state, bias=bias, implementation=impl)
    return jnp.sum(jnp.tanh(y) ** 2)

  bias = jnp.zeros((32,), jnp.float32)
  (val, (gx, gstate, gbias)) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), allow_int=True))(
      x, state, bias)
  assert np.isfinite(val)
  for leaf in jax.tree_util.tree_leaves(gstate):  # float0 for the integer codes
    if leaf.dtype != jax.dtypes.float0:
      assert not np.any(np.asarray(leaf, np.float32)), "the 4-bit weight must get zero cotangents"
  assert gbias.shape == (32,) and np.any(np.asarray(gbias))
  # remat recomputes the forward inside the backward: same gradient.
  g_remat = jax.jit(jax.grad(jax.checkpoint(loss)))(x, state, bias)
  np.testing.assert_array_equal(np.asarray(g_remat), np.asarray(gx))
  # the pure-jnp path gives the gradient of dequantize-then-dot
  wd = jaxfp4.dequantize_4bit(packed, state)
  g_ref = jax.grad(lambda x: jnp.sum(jnp.tanh(jnp.dot(x, wd.T, precision="highest")) ** 2))(x)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(g_ref), rtol=1e-4, atol=3e-5)


@pytest.mark.parametrize("storage", [jnp.uint8, jnp.bfloat16, jnp.float32])
def test_bitsandbytes_storage_dtypes(storage):
  packed, state = _weight(16, 128, "nf4", False, quant_storage=storage)
  x = jnp.ones((1, 128), jnp.bfloat16)
  want = jaxfp4.matmul_4bit(x, *_weight(16, 128, "nf4", False), implementation="pallas")
  got = jaxfp4.matmul_4bit(x, packed, state, implementation="pallas")
  # One row of x takes the GEMV, which multiplies the float32 weight (not rounded to bf16).
  exact32 = jaxfp4.dequantize_4bit(packed, dataclasses.replace(state, dtype=jnp.float32))
  check_close(got, x, exact32, "bfloat16", False)
  # The storage dtype only reinterprets the same bytes: the same kernel, the same result.
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_blocks_straddling_rows_fall_back_or_raise():
  # 240 elements: blocks of 64 cross rows
  packed, state = _weight(6, 40, "nf4", False, dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (3, 40), jnp.float32)
  y = jaxfp4.matmul_4bit(x, packed, state)
  check_close(y, x, jaxfp4.dequantize_4bit(packed, state).astype(jnp.float32), "float32", False)
  with pytest.raises(ValueError, match="K=40.*blocksize=64"):
    jaxfp4.matmul_4bit(x, packed, state, implementation="pallas")


def test_route_on_this_backend():
  _, state = _weight(16, 128, "nf4", False)
  route = product_lib.route(1, state, jnp.bfloat16, None, False)
  if on_gpu():  # the recorded crossovers for this device kind decide
    from pallas_kernels._src import common
    assert route == lut_api.choose_kind(1, jnp.bfloat16, common.device_kind())
  else:
    assert route == "xla"
  assert product_lib.route(1, state, jnp.bfloat16, "xla", False) == "xla"
  assert product_lib.route(8192, state, jnp.bfloat16, "pallas", True) == "fused"
  # implementation="pallas" never makes a 16-bit copy: the register-table kernels
  # for 16-bit activations at any M, the tile-decode kernel for float32 past the GEMV.
  assert product_lib.route(1, state, jnp.float32, "pallas", False) == "gemv"
  assert product_lib.route(4096, state, jnp.bfloat16, "pallas", False) == "mma"
  assert product_lib.route(64, state, jnp.float32, "pallas", False) == "fused"


@pytest.mark.parametrize("quant_type,dq", [("nf4", False), ("fp4", True), ("e2m1", False),
                                           ("e2m1", True), ("mxfp4", False)])
def test_kernel_format_is_the_kernel_weights_format(quant_type, dq):
  packed, state = _weight(64, 256, quant_type, dq)
  assert product_lib.kernel_format(state) == product_lib.kernel_weight(packed, state)[1]


def test_mosaic_limits_take_m_from_the_gemv_and_the_dequantize_route(monkeypatch):
  # As if on an H100 with Mosaic GPU: its recorded limits move M = 1-4 (with "wgmma_min_m")
  # and M past "mma_max_m" up to "wgmma_max_m" to the "mma" kind, which runs the Mosaic kernel.
  from pallas_kernels._src import common
  h100 = "nvidia_h100_80gb_hbm3"
  _, state = _weight(128, 256, "nf4", True)  # quantized on this backend, before the patches
  monkeypatch.setattr(common, "on_gpu", lambda: True)
  monkeypatch.setattr(common, "device_kind", lambda: h100)
  monkeypatch.setattr(lut_api.wgmma_lib, "available", lambda: True)
  lim = dict(lut_api.limits(h100), wgmma_min_weights=0)
  monkeypatch.setattr(lut_api, "limits", lambda kind: lim)
  route = lambda m: product_lib.route(m, state, jnp.bfloat16, None, False)
  lim.update(wgmma_min_m=5, wgmma_max_m=128)
  assert [route(m) for m in (1, 4, 5, 128)] == ["gemv", "gemv", "mma", "mma"]
  assert route(129) == "dequantize"
  lim.update(wgmma_min_m=1, wgmma_max_m=256)
  assert [route(m) for m in (1, 4, 200, 256)] == ["mma"] * 4
  assert route(257) == "dequantize"
  assert product_lib.route(1, state, jnp.float32, None, False) == "gemv"  # 16-bit x only
  lim.update(wgmma_min_weights=128 * 256 + 1)  # too small a weight: the recorded crossovers
  assert [route(m) for m in (1, 5, 129)] == ["gemv", "mma", "dequantize"]


def test_register_table_crossovers():
  # Measured on the H100 (docs/benchmarks.md): GEMV up to 4 rows, tensor cores to 128.
  assert lut_api.choose_kind(4, jnp.bfloat16, "nvidia_h100_80gb_hbm3") == "gemv"
  assert lut_api.choose_kind(5, jnp.bfloat16, "nvidia_h100_80gb_hbm3") == "mma"
  assert lut_api.choose_kind(128, jnp.float16, "nvidia_h100_80gb_hbm3") == "mma"
  assert lut_api.choose_kind(129, jnp.bfloat16, "nvidia_h100_80gb_hbm3") is None
  assert lut_api.choose_kind(16, jnp.float32, "nvidia_h100_80gb_hbm3") is None


def test_hopper_gpus_record_the_dequantize_route():
  # docs/benchmarks.md: on the H100 the tile-decode kernel lost to dequantize + GEMM at every M;
  # on the H200 the 8B Llama decoded at 11.15 ms/token that way against 15.42 ms fused.
  for kind in ("nvidia_h100_80gb_hbm3", "nvidia_h200"):
    for transpose in (False, True):
      assert not mcfg.prefer_fused(1, transpose, kind)
  assert mcfg.prefer_fused(128, False, "some_other_gpu")
  assert not mcfg.prefer_fused(129, False, "some_other_gpu")


@pytest.mark.parametrize("make_args,match", [
    (lambda p, s: (jnp.ones((2, 64), jnp.bfloat16), p, s, {}), "K=128"),
    (lambda p, s: (jnp.ones((2, 128), jnp.int8), p, s, {}), "dtype"),
    (lambda p, s: (jnp.ones((2, 128), jnp.bfloat16), p[:10], s, {}), "does not belong"),
    (lambda p, s: (jnp.ones((2, 128), jnp.bfloat16), p, "nf4", {}), "QuantState"),
    (lambda p, s: (jnp.ones((2, 128), jnp.bfloat16), p, s, {"bias": jnp.ones(3)}), "bias"),
    (lambda p, s: (jnp.ones((2, 128), jnp.bfloat16), p, s, {"implementation": "cuda"}),
     "implementation"),
    (lambda p, s: (jnp.ones((128,), jnp.bfloat16), *_weight(1, 16 * 128, "nf4", False)[:1],
                   _weight(16, 128, "nf4", False)[1].__class__(
                       **{**s.__dict__, "shape": (16 * 128,)}), {}), "2-D"),
])
def test_bad_input(make_args, match):
  packed, state = _weight(16, 128, "nf4", False)
  x, p, s, kw = make_args(packed, state)
  with pytest.raises(ValueError, match=match):
    jaxfp4.matmul_4bit(x, p, s, **kw)
