"""A weight in the Mosaic decoder's K order (``layout="wgmma"``): its bytes, every kernel, the
library's routes and writers.

Every product is checked against the exact float64 product of the *original* bitsandbytes
bytes (``exact_weight``/``kernel_weight`` of ``test_lut_kernels`` decode them directly), so a
repack that moved a weight, or a route that ignores the order, fails. Kernels run in the
Pallas interpreter on the CPU and compiled on a GPU; the Mosaic kernel only on an sm_90 GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfp4
import pallas_kernels
from pallas_kernels._src.lut_matmul import wgmma, wgmma_layout
from pallas_kernels._src.matmul_4bit import layout as k_order
from tests.conftest import on_gpu
from tests.test_lut_kernels import kernel_weight
from tests.test_matmul_kernels import check_close, make_weight, repacked

INTERPRET = not on_gpu()


def test_the_order_is_mosaics_and_the_two_reorders_invert():
  assert sorted(k_order.WGMMA_ORDER.tolist()) == list(range(64))
  # wgmma_layout.PERMUTATION is held to Mosaic's own WGMMA layout by test_wgmma_kernel
  np.testing.assert_array_equal(k_order.WGMMA_ORDER, wgmma_layout.PERMUTATION)
  x = np.random.default_rng(0).standard_normal((3, 192)).astype(np.float32)
  want = x.reshape(3, 3, 64)[:, :, k_order.WGMMA_ORDER].reshape(3, 192)  # a gather, by hand
  np.testing.assert_array_equal(k_order.to_stored_order(x, "wgmma"), want)
  np.testing.assert_array_equal(np.asarray(k_order.to_stored_order(jnp.asarray(x), "wgmma")),
                                want)
  np.testing.assert_array_equal(k_order.to_real_order(want, "wgmma"), x)
  assert k_order.to_stored_order(x, "bnb") is x


def test_repacked_bytes_are_each_blocks_transpose_with_nibbles_swapped():
  """The byte form worked out in docs/benchmarks.md: new byte ``8a + b`` of a 32-byte block
  is old byte ``4b + a`` with its two nibbles swapped."""
  d = np.random.default_rng(1).integers(0, 256, (4, 96), dtype=np.uint8)
  moved = d.reshape(4, 3, 8, 4).transpose(0, 1, 3, 2).reshape(4, 96)
  want = ((moved & 0xF) << 4) | (moved >> 4)
  got = k_order.repack_bytes(d, source="bnb", target="wgmma")
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(k_order.repack_bytes(got, source="wgmma", target="bnb"), d)


def test_bad_layouts_are_named():
  lut = tuple(float(v) for v in range(16))
  with pytest.raises(ValueError, match="layout"):
    pallas_kernels.WeightFormat(lut=lut, blocksize=64, layout="tiled")
  with pytest.raises(ValueError, match="blocksize of 64"):
    pallas_kernels.WeightFormat(lut=lut, blocksize=32, layout="wgmma")
  with pytest.raises(ValueError, match="`target`"):
    k_order.repack_bytes(np.zeros((1, 32), np.uint8), source="bnb", target="x")


# The register-table kernels (GEMV, tensor-core, transposed) run repacked weights among the
# cases of tests/test_lut_kernels.py ("/wgmma"); here the tile-decode kernel, both directions.
@pytest.mark.parametrize("transpose,m,encoding,dtype", [(False, 5, "byte", "bfloat16"),
                                                        (True, 5, "float", "float16")])
def test_tile_decode_kernel_multiplies_the_original_weight(transpose, m, encoding, dtype):
  n, k = 48, 256
  w, fmt = make_weight(n, k, 64, encoding, seed=n + k + m)
  w2, fmt2 = repacked(w, fmt)
  assert not np.array_equal(np.asarray(w2.data), np.asarray(w.data))
  x = jnp.asarray(np.random.default_rng(m).standard_normal((m, n if transpose else k)),
                  jnp.dtype(dtype))
  got = pallas_kernels.matmul_packed(x, w2, fmt=fmt2, transpose=transpose,
                                     implementation="pallas", interpret=INTERPRET)
  assert got.shape == (m, k if transpose else n)
  check_close(got, x, kernel_weight(w, fmt, "mma", "shfl", jnp.dtype(dtype)), dtype, transpose)
  # the reference decodes the repacked bytes back into the real K order
  np.testing.assert_array_equal(
      np.asarray(pallas_kernels.decode_weight_reference(w2, fmt2, jnp.float32)),
      np.asarray(pallas_kernels.decode_weight_reference(w, fmt, jnp.float32)))


def test_mosaic_launch_takes_a_repacked_weights_activations_as_they_are():
  """The point of the order: no reversal (the permutation's) in the lowered product."""
  w, fmt = make_weight(128, 512, 64, "float", seed=3)
  w2, fmt2 = repacked(w, fmt)
  x = jax.ShapeDtypeStruct((16, 512), jnp.bfloat16)

  def text(w, fmt):
    f = jax.jit(lambda x, w: wgmma.wgmma_4bit(x, w, fmt=fmt, config=wgmma.WgmmaConfig()))
    return f.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()

  assert "stablehlo.reverse" in text(w, fmt)
  assert "stablehlo.reverse" not in text(w2, fmt2)


MOSAIC_CASES = [  # n, k, m, blocksize, encoding, dtype, config
    (256, 4096, 16, 64, "nested", "bfloat16",
     wgmma.WgmmaConfig(slab=True, coded_slab=True, late_slab=True, reduce=True)),
    (128, 1024, 40, 128, "float", "float16", wgmma.WgmmaConfig(sub=2, transpose_out=True)),
    (128, 512, 16, 64, "float", "bfloat16", wgmma.WgmmaConfig(post_scale=True)),
]


@pytest.mark.skipif(not wgmma.available(), reason="the compiled kernel needs an sm_90 GPU")
@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", MOSAIC_CASES)
def test_compiled_mosaic_kernel_multiplies_the_original_weight(n, k, m, bs, encoding, dtype,
                                                               config):
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  w2, fmt2 = repacked(w, fmt)
  rng = np.random.default_rng(m)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.dtype(dtype))
  bias = jnp.asarray(rng.standard_normal(n), jnp.float32)
  got = pallas_kernels.matmul_lut(x, w2, fmt=fmt2, bias=bias, kind="mma", config=config,
                                  implementation="pallas")
  # post_scale's contract is the "prmt" one (16-bit table values, the scale on each block's
  # float32 sum; test_wgmma_kernel.py): the shfl one failed it by design on an H100 (run 9)
  contract = "prmt" if config.post_scale else "shfl"
  check_close(got, x, kernel_weight(w, fmt, "mma", contract, jnp.dtype(dtype)), dtype, False,
              bias)


# --- the library: QuantState.layout, repack_4bit, routes, writers -----------------------------


def _quantized(shape=(96, 256), **kw):
  w = jax.random.normal(jax.random.key(0), shape, jnp.bfloat16)
  return jaxfp4.quantize_4bit(w, quant_type=kw.pop("quant_type", "nf4"), **kw)


@pytest.mark.parametrize("quant_type,dq,storage", [("nf4", False, jnp.uint8),
                                                   ("fp4", True, jnp.int32),
                                                   ("e2m1", False, jnp.uint16)])
def test_repack_round_trips_bytes_and_keeps_the_weight(quant_type, dq, storage):
  packed, state = _quantized(quant_type=quant_type, compress_statistics=dq,
                             quant_storage=storage)
  p2, s2 = jaxfp4.repack_4bit(packed, state)
  assert s2.layout == "wgmma" and p2.dtype == packed.dtype and p2.shape == packed.shape
  assert s2.absmax is state.absmax  # scales do not move
  np.testing.assert_array_equal(np.asarray(jaxfp4.dequantize_4bit(p2, s2)),
                                np.asarray(jaxfp4.dequantize_4bit(packed, state)))
  back, s3 = jaxfp4.repack_4bit(p2, s2, layout="bnb")
  assert s3.layout == "bnb"
  np.testing.assert_array_equal(np.asarray(back), np.asarray(packed))
  # under jit too (the layout is static metadata)
  p4, s4 = jax.jit(lambda p, s: jaxfp4.repack_4bit(p, s))(packed, state)
  assert s4.layout == "wgmma"
  np.testing.assert_array_equal(np.asarray(p4), np.asarray(p2))


def test_repack_refuses_what_the_order_cannot_hold():
  packed, state = _quantized(quant_type="mxfp4")
  with pytest.raises(ValueError, match="blocksize of 64 or more"):
    jaxfp4.repack_4bit(packed, state)
  packed, state = _quantized(shape=(4, 4, 64))
  with pytest.raises(ValueError, match="2-D"):
    jaxfp4.repack_4bit(packed, state)
  packed, state = _quantized(shape=(64, 96), blocksize=32, quant_type="nf4")
  with pytest.raises(ValueError, match="blocksize of 64"):
    jaxfp4.repack_4bit(packed, state)
  packed, state = _quantized(quant_storage=jnp.bfloat16)
  with pytest.raises(ValueError, match="integer `quant_storage`"):
    jaxfp4.repack_4bit(packed, state)
  same, same_state = jaxfp4.repack_4bit(packed, state, layout="bnb")  # already there: as is
  assert same_state is state
  np.testing.assert_array_equal(np.asarray(same).view(np.uint16),
                                np.asarray(packed).view(np.uint16))
  packed, state = _quantized()
  with pytest.raises(ValueError, match="`layout`"):
    jaxfp4.repack_4bit(packed, state, layout="rows")
  p2, s2 = jaxfp4.repack_4bit(packed, state)
  with pytest.raises(ValueError, match="repack_4bit"):
    s2.as_dict()


@pytest.mark.parametrize("implementation,m", [(None, 3)])
def test_products_and_gradients_are_the_original_weights(implementation, m):
  """The library's routes (off the GPU XLA's, the activations or the input gradient
  reordered; on a GPU the kernels'), the custom VJP and the group call."""
  from jaxfp4._src import product

  packed, state = _quantized(shape=(96, 128), compress_statistics=True)
  p2, s2 = jaxfp4.repack_4bit(packed, state)
  x = jax.random.normal(jax.random.key(1), (m, 128), jnp.bfloat16)
  w16 = jaxfp4.dequantize_4bit(packed, state)  # rounded once to bfloat16
  w32 = pallas_kernels.decode_weight_reference(  # the GEMV kernels' float32 weight
      *product.kernel_weight(packed.reshape(-1), state), jnp.float32)

  def weight(transpose):  # the weight each route's contract multiplies
    route = product.route(m, s2, x.dtype, implementation, transpose)
    return w32 if route in ("gemv", "gemv_t") else w16

  w = weight(False)
  y = jaxfp4.matmul_4bit(x, p2, s2, implementation=implementation)
  check_close(y, x, w, jnp.bfloat16, False)

  def loss(x, p, s):
    return jaxfp4.matmul_4bit(x, p, s, implementation=implementation).astype(jnp.float32).sum()

  dy = jnp.ones((m, 96), jnp.bfloat16)
  check_close(jax.grad(loss)(x, p2, s2), dy, weight(True), jnp.bfloat16, True)
  q, k = jaxfp4.matmul_4bit_group(x, [(p2, s2), (packed, state)],
                                  implementation=implementation)
  np.testing.assert_array_equal(np.asarray(q, np.float32),
                                np.asarray(jaxfp4.matmul_4bit(x, p2, s2,
                                                              implementation=implementation),
                                           np.float32))
  check_close(k, x, w, jnp.bfloat16, False)


def test_writers_write_bitsandbytes_bytes():
  import jaxfp4.io

  packed, state = _quantized(compress_statistics=True)
  p2, s2 = jaxfp4.repack_4bit(packed, state)
  mine = dict(jaxfp4.io.tensor_group_4bit("w", p2, s2))
  want = dict(jaxfp4.io.tensor_group_4bit("w", packed, state))
  assert mine.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(mine[key], want[key])


def test_model_repack_save_and_merge():
  import tempfile
  from flax import nnx
  import jaxfp4.io
  import jaxfp4.nnx

  class Two(nnx.Module):
    def __init__(self, rngs):
      self.a = jaxfp4.nnx.Dense4bit(128, 64, lora_rank=2, rngs=rngs)
      self.b = jaxfp4.nnx.Dense4bit(64, 32, quant_type="mxfp4", rngs=rngs)

    def __call__(self, x):
      return self.b(self.a(x))

  model = Two(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (3, 128))
  before = model(x)
  original = np.asarray(model.a.weight.get_value())
  assert jaxfp4.nnx.repack_model(model) == ["a"]  # b's blocks of 32 keep bitsandbytes' order
  assert model.a.quant_state.get_value().layout == "wgmma"
  assert model.b.quant_state.get_value().layout == "bnb"
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(before), rtol=1e-5, atol=1e-5)
  with tempfile.TemporaryDirectory() as tmp:
    path = jaxfp4.io.save_model(tmp + "/m.safetensors", model, progress=False)
    skeleton = nnx.eval_shape(lambda: Two(nnx.Rngs(1)))
    loaded = jaxfp4.io.load_model(path, skeleton, progress=False)
  np.testing.assert_array_equal(np.asarray(loaded.a.weight.get_value()), original)
  assert loaded.a.quant_state.get_value().layout == "bnb"
  jaxfp4.nnx.merge_lora(model)
  assert model.a.quant_state.get_value().layout == "wgmma"  # re-quantized in the same order


def test_linen_variables_repack_and_apply_the_same():
  import jaxfp4.linen

  layer = jaxfp4.linen.Dense4bit(64)
  x = jax.random.normal(jax.random.key(3), (2, 128))
  v = layer.init(jax.random.key(0), x)
  v2 = jaxfp4.linen.repack_variables(v)
  assert v2["quantized"]["quant_state"].layout == "wgmma"
  assert v["quantized"]["quant_state"].layout == "bnb"  # pure: the input is untouched
  np.testing.assert_allclose(np.asarray(layer.apply(v2, x)), np.asarray(layer.apply(v, x)),
                             rtol=1e-6, atol=1e-6)
  back = jaxfp4.linen.repack_variables(v2, layout="bnb")
  np.testing.assert_array_equal(np.asarray(back["quantized"]["weight"]),
                                np.asarray(v["quantized"]["weight"]))
