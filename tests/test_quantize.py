"""quantize_4bit / dequantize_4bit: API behaviour, layouts, transforms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfp4

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _randn(shape, dtype=jnp.float32, seed=0, scale=1.0):
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * np.float32(scale)
  return jnp.asarray(x).astype(dtype)


_SHAPES = [(7,), (3, 5), (2, 3, 67), (128, 64), (1,)]
# A pairwise covering array instead of the 5 x 3 x 5 cross product: every quant type
# meets every shape, and the dtype (i + j) % 3 puts every dtype with every quant type
# and with every shape (each row and column of the 5 x 5 grid sees all three residues).
# No code path depends on the triple beyond its pairs.
_ROUNDTRIP_CASES = [(qt, DTYPES[(i + j) % 3], shape) for i, qt in enumerate(jaxfp4.QUANT_TYPES)
                    for j, shape in enumerate(_SHAPES)]


@pytest.mark.parametrize("quant_type,dtype,shape", _ROUNDTRIP_CASES)
def test_shapes_dtypes_and_roundtrip(quant_type, dtype, shape):
  x = _randn(shape, dtype)
  packed, state = jaxfp4.quantize_4bit(x, quant_type=quant_type)
  n = int(np.prod(shape))
  assert packed.shape == ((n + 1) // 2, 1) and packed.dtype == jnp.uint8
  assert state.shape == shape and state.dtype == jnp.dtype(dtype)
  assert state.absmax.shape == (state.num_blocks,)
  y = jaxfp4.dequantize_4bit(packed, state)
  assert y.shape == shape and y.dtype == dtype
  # 4-bit codes: the error is at most about half the widest step of a block.
  err = np.abs(np.asarray(y, np.float32) - np.asarray(x, np.float32))
  assert np.isfinite(err).all() and err.max() <= 0.6 * float(np.abs(np.asarray(x, np.float32)).max())


def test_packing_layout_first_element_high_nibble():
  # nf4: 1.0 -> 15, -1.0 -> 0, 0 -> 7 (block absmax 1)
  x = jnp.array([1.0, -1.0, 0.0, 1.0, 0.0], jnp.float32)
  packed, _ = jaxfp4.quantize_4bit(x, quant_type="nf4")
  # odd length: the pad element is a zero quantized with the last block's scale
  assert packed.reshape(-1).tolist() == [0xF0, 0x7F, 0x77]
  assert jaxfp4.unpack_nibbles(packed.reshape(-1)).tolist() == [15, 0, 7, 15, 7, 7]
  assert jaxfp4.pack_nibbles(jnp.array([15, 0, 7, 15])).tolist() == [0xF0, 0x7F]


@pytest.mark.parametrize("storage", ["int8", "bfloat16", "float16", "float32", "int32"])
def test_quant_storage_reinterprets_the_same_bytes(storage):
  x = _randn((64, 128), jnp.bfloat16)
  p8, s8 = jaxfp4.quantize_4bit(x, quant_type="nf4")
  p, s = jaxfp4.quantize_4bit(x, quant_type="nf4", quant_storage=jnp.dtype(storage))
  k = jnp.dtype(storage).itemsize
  assert p.dtype == jnp.dtype(storage) and p.shape == (64 * 128 // 2 // k, 1)
  assert np.asarray(p).tobytes() == np.asarray(p8).tobytes()
  np.testing.assert_array_equal(np.asarray(jaxfp4.dequantize_4bit(p, s), np.float32),
                                np.asarray(jaxfp4.dequantize_4bit(p8, s8), np.float32))


@pytest.mark.parametrize("quant_type", jaxfp4.QUANT_TYPES)
def test_jit_equals_eager(quant_type):
  x = _randn((37, 61), jnp.bfloat16, seed=3)
  kw = dict(quant_type=quant_type, compress_statistics=quant_type in ("nf4", "fp4", "e2m1"))
  p1, s1 = jaxfp4.quantize_4bit(x, **kw)
  p2, s2 = jax.jit(functools.partial(jaxfp4.quantize_4bit, **kw))(x)
  np.testing.assert_array_equal(np.asarray(p1), np.asarray(p2))
  for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(a)).view(np.uint8),
                                  np.atleast_1d(np.asarray(b)).view(np.uint8))
  y1 = jaxfp4.dequantize_4bit(p1, s1)
  y2 = jax.jit(jaxfp4.dequantize_4bit)(p2, s2)
  np.testing.assert_array_equal(np.asarray(y1, np.float32), np.asarray(y2, np.float32))


@pytest.mark.parametrize("quant_type", ["nf4", "nvfp4"])
def test_vmap_over_a_stack_of_layers(quant_type):
  w = _randn((3, 16, 64), jnp.bfloat16, seed=4)
  kw = dict(quant_type=quant_type, compress_statistics=quant_type == "nf4")
  packed, state = jax.vmap(functools.partial(jaxfp4.quantize_4bit, **kw))(w)
  assert packed.shape == (3, 512, 1) and state.absmax.shape[0] == 3
  y = jax.vmap(jaxfp4.dequantize_4bit)(packed, state)
  for i in range(3):
    pi, si = jaxfp4.quantize_4bit(w[i], **kw)
    np.testing.assert_array_equal(np.asarray(packed[i]), np.asarray(pi))
    np.testing.assert_array_equal(np.asarray(y[i], np.float32),
                                  np.asarray(jaxfp4.dequantize_4bit(pi, si), np.float32))


def test_state_is_a_pytree_with_static_metadata():
  _, state = jaxfp4.quantize_4bit(_randn((8, 64)), quant_type="nf4", compress_statistics=True)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  assert len(leaves) == 3  # absmax codes, offset, nested absmax
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert again.shape == (8, 64) and again.quant_type == "nf4" and again.code == state.code
  with pytest.raises(AttributeError):
    state.blocksize = 128  # frozen


def test_named_shortcuts():
  x = _randn((4, 64))
  p, s = jaxfp4.quantize_nf4(x)
  assert s.quant_type == "nf4"
  np.testing.assert_array_equal(np.asarray(jaxfp4.dequantize_nf4(p, s)),
                                np.asarray(jaxfp4.dequantize_4bit(p, s)))
  p, s = jaxfp4.quantize_fp4(x, blocksize=128)
  assert s.quant_type == "fp4" and s.blocksize == 128
  with pytest.raises(ValueError, match="dequantize_nf4 expects 'nf4'"):
    jaxfp4.dequantize_nf4(p, s)


@pytest.mark.parametrize("quant_type", jaxfp4.QUANT_TYPES)
def test_empty_input(quant_type):
  packed, state = jaxfp4.quantize_4bit(jnp.zeros((0, 64), jnp.bfloat16), quant_type=quant_type)
  assert packed.shape == (0, 1) and state.absmax.shape == (0,)
  y = jaxfp4.dequantize_4bit(packed, state)
  assert y.shape == (0, 64) and y.dtype == jnp.bfloat16


def test_zero_block_decodes_to_zero():
  x = jnp.zeros((2, 64), jnp.float32).at[1].set(1.0)
  for qt in jaxfp4.QUANT_TYPES:
    y = jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(x, quant_type=qt))
    assert np.all(np.asarray(y)[0] == 0), qt


def test_storage_accounting_matches_the_formula():
  # 0.5 byte per weight + 4 bytes per block; double quant: 1 byte per block
  # + 4 bytes per 256 blocks + the offset (QLoRA: ~0.127 bit per weight).
  n = 4096 * 4096
  x = jnp.ones((4096, 4096), jnp.bfloat16)
  p, s = jaxfp4.quantize_4bit(x, quant_type="nf4")
  assert p.nbytes == n // 2 and s.nbytes() == 4 * n // 64
  p, s = jaxfp4.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
  nb = n // 64
  assert s.nbytes() == nb + 4 * (-(-nb // 256)) + 4
  assert 8 * s.nbytes() / n == pytest.approx(0.127, abs=5e-4)
