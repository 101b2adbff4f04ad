"""matmul_4bit_group / apply_shared_input: one launch for weights that share x, same bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4
import jaxfp4.nnx
import pallas_kernels
from jaxfp4._src import product as product_lib
from jaxfp4._src import matmul_group


def _weights(ns, k, *, nested=True, quant_type="nf4"):
  return [jaxfp4.quantize_4bit(jax.random.normal(jax.random.key(i), (n, k)) * 0.1,
                               quant_type=quant_type, compress_statistics=nested)
          for i, n in enumerate(ns)]


def test_group_launch_equals_each_weight_and_meets_the_exact_product():
  # Interpret mode runs the one-launch GEMV path (the same kernel body the GPU
  # compiles); it must give each weight's own kernel result bit for bit.
  ws = _weights((24, 16, 8), 128)  # row counts that leave partial tiles
  biases = [None, jnp.linspace(-1, 1, 16), jnp.full((8,), 0.5)]
  x = jax.random.normal(jax.random.key(7), (3, 128), jnp.float32)
  shared = matmul_group._shared_launch(x, [p for p, _ in ws], [s for _, s in ws], "pallas")
  assert shared is not None  # the test exercises the shared launch, not the fallback
  got = jaxfp4.matmul_4bit_group(x, ws, biases=biases, implementation="pallas")
  for y, (p, s), b in zip(got, ws, biases):
    one = jaxfp4.matmul_4bit(x, p, s, bias=b, implementation="pallas")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(one))
    w = np.asarray(jaxfp4.dequantize_4bit(p, s), np.float64)
    exact = np.asarray(x, np.float64) @ w.T + (0 if b is None else np.asarray(b, np.float64))
    err = np.linalg.norm(np.asarray(y, np.float64) - exact) / np.linalg.norm(exact)
    assert err < 1e-6, err  # float32 sums of the float32 weight (measured 8e-8)


def test_tensor_core_group_kernel_equals_each_weight():
  # The one-launch tensor-core kernel for a group: each weight's result as its
  # own launch with the same config gives it, across partial row tiles.
  ws = _weights((24, 16, 8), 128, quant_type="fp4")
  kws = [product_lib.kernel_weight(jnp.asarray(p), s) for p, s in ws]
  fmt = kws[0][1]
  cfg = pallas_kernels.LutConfig(kind="mma", block_n=16, chunks=1, split_k=2)
  biases = [jnp.linspace(-1, 1, 24), None, jnp.full((8,), 0.5)]
  x = (jax.random.normal(jax.random.key(8), (6, 128)) * 0.5).astype(jnp.bfloat16)
  got = pallas_kernels.matmul_lut_group(x, [w for w, _ in kws], fmt=fmt, biases=biases,
                                        kind="mma", config=cfg, implementation="pallas")
  for y, (w, _), (p, s), b in zip(got, kws, ws, biases):
    one = pallas_kernels.matmul_lut(x, w, fmt=fmt, bias=b, kind="mma", config=cfg,
                                    implementation="pallas")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(one))
    w16 = np.asarray(jaxfp4.dequantize_4bit(p, s).astype(jnp.bfloat16), np.float64)
    exact = np.asarray(x, np.float64) @ w16.T + (0 if b is None else np.asarray(b, np.float64))
    err = np.abs(np.asarray(y, np.float64) - exact).max() / np.abs(exact).max()
    assert err < 2 ** -8, err  # the output's bf16 rounding (unit 2^-8); measured 2.7e-3


def test_group_falls_back_per_weight_when_formats_differ():
  ws = _weights((32,), 256, nested=True) + _weights((16,), 256, nested=False)
  x = jnp.ones((1, 256), jnp.bfloat16)
  assert matmul_group._shared_launch(x, [p for p, _ in ws], [s for _, s in ws], "pallas") is None
  got = jaxfp4.matmul_4bit_group(x, ws)
  for y, (p, s) in zip(got, ws):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jaxfp4.matmul_4bit(x, p, s)))


def test_group_gradient_sums_the_input_gradients():
  ws = _weights((32, 16), 128)
  x = jax.random.normal(jax.random.key(3), (2, 3, 128), jnp.float32)
  cot = [jax.random.normal(jax.random.key(10 + i), (2, 3, s.shape[0])) for i, (_, s) in
         enumerate(ws)]

  def loss_group(x):
    return sum(jnp.sum(y * c) for y, c in zip(jaxfp4.matmul_4bit_group(x, ws), cot))

  def loss_each(x):
    return sum(jnp.sum(jaxfp4.matmul_4bit(x, p, s) * c) for (p, s), c in zip(ws, cot))

  g1, g2 = jax.grad(loss_group)(x), jax.grad(loss_each)(x)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-6, atol=1e-6)


def test_group_bad_input_names_the_argument():
  ws = _weights((32, 16), 256)
  x = jnp.ones((1, 256))
  with pytest.raises(ValueError, match="biases"):
    jaxfp4.matmul_4bit_group(x, ws, biases=[None])
  with pytest.raises(ValueError, match=r"weights\[1\]"):
    jaxfp4.matmul_4bit_group(x, [ws[0], _weights((8,), 128)[0]])
  with pytest.raises(ValueError, match="weights"):
    jaxfp4.matmul_4bit_group(x, [])
  with pytest.raises(ValueError, match=r"biases\[0\]"):
    jaxfp4.matmul_4bit_group(x, ws, biases=[jnp.ones(3), None])
  with pytest.raises(ValueError, match="implementation"):
    jaxfp4.matmul_4bit_group(x, ws, implementation="cuda")


def test_kernel_group_rejects_mismatched_biases():
  (p, s), = _weights((16,), 128)
  w, fmt = product_lib.kernel_weight(jnp.asarray(p), s)
  with pytest.raises(ValueError, match="biases"):
    pallas_kernels.matmul_lut_group(jnp.ones((1, 128)), [w, w], fmt=fmt, biases=[None])


def test_apply_shared_input_matches_each_layer_with_lora_and_falls_back_for_linear():
  rngs = nnx.Rngs(0)
  layers = [jaxfp4.nnx.Dense4bit(128, n, use_bias=True, lora_rank=4, rngs=rngs,
                                 compress_statistics=True) for n in (32, 16)]
  for layer in layers:  # non-zero B so the adapters contribute
    layer.lora_b.set_value(jax.random.normal(jax.random.key(5), layer.lora_b.shape) * 0.1)
  x = jax.random.normal(jax.random.key(1), (2, 128))
  got = jaxfp4.nnx.apply_shared_input(layers, x)
  for y, layer in zip(got, layers):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(layer(x)))
  linears = [nnx.Linear(128, 8, rngs=rngs), nnx.Linear(128, 4, rngs=rngs)]
  got = jaxfp4.nnx.apply_shared_input(linears, x)
  assert [y.shape for y in got] == [(2, 8), (2, 4)]
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(linears[1](x)))
