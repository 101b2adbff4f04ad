"""One suite for the block quantize/dequantize kernels and their references.

Every case runs the pure-jnp reference and the Triton kernel (in the Pallas
interpreter on the CPU, compiled on a GPU) on fresh random inputs and demands
identical bytes: the kernel and the reference do the same float32 arithmetic.
Row counts that do not divide ``block_rows`` exercise the masked last tile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from jaxfp4._src import codec as codec_lib
from jaxfp4._src import formats
from jaxfp4._src import quantize as quantize_lib
from pallas_kernels import DequantizeConfig, QuantizeConfig
from tests.conftest import on_gpu

DTYPES = ("float32", "bfloat16", "float16")
INTERPRET = not on_gpu()


def _blocks(nb, bs, dtype, seed):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((nb, bs)).astype(np.float32)
  x *= np.exp2(rng.integers(-10, 10, size=(nb, 1))).astype(np.float32)
  x[0, :] = 0.0  # a zero block
  return jnp.asarray(x).astype(jnp.dtype(dtype))


def _scalars(quant_type, blocks):
  if formats.get_format(quant_type).scale_kind != "e4m3":
    return ()
  return codec_lib.nvfp4_global_scales(jnp.max(jnp.abs(blocks.astype(jnp.float32))))


def _same(a, b):
  np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


_SHAPES = [(1, 4), (37, 8), (64, 16)]
# The whole cross product where the kernel compiles (GPU). In the CPU interpreter
# (CI) each shape goes with one dtype, so every quant type still meets every
# shape and every dtype at a third of the interpreter time.
_SHAPE_DTYPES = ([(nb, rows, dt) for nb, rows in _SHAPES for dt in DTYPES] if not INTERPRET
                 else [(nb, rows, dt) for (nb, rows), dt in zip(_SHAPES, DTYPES)])


@pytest.mark.parametrize("quant_type", formats.QUANT_TYPES)
@pytest.mark.parametrize("nb,rows,dtype", _SHAPE_DTYPES)
def test_quantize_kernel_equals_reference(quant_type, dtype, nb, rows):
  fmt = formats.get_format(quant_type)
  bs = fmt.default_blocksize
  blocks = _blocks(nb, bs, dtype, seed=nb * 7 + len(dtype))
  codec = codec_lib.codec_for(quant_type)
  scalars = _scalars(quant_type, blocks)
  want = pallas_kernels.quantize_blocks_reference(blocks, codec=codec, scalars=scalars)
  got = pallas_kernels.quantize_blocks_triton(
      blocks, codec=codec, scalars=scalars, config=QuantizeConfig(block_rows=rows),
      interpret=INTERPRET)
  _same(got[0], want[0])
  _same(got[1], want[1])


@pytest.mark.parametrize("bs", [32, 256, 4096])
def test_quantize_kernel_block_sizes(bs):
  blocks = _blocks(5, bs, "bfloat16", seed=bs)
  codec = codec_lib.codec_for("nf4")
  want = pallas_kernels.quantize_blocks_reference(blocks, codec=codec)
  got = pallas_kernels.quantize_blocks_triton(
      blocks, codec=codec, config=QuantizeConfig(block_rows=2), interpret=INTERPRET)
  _same(got[0], want[0])
  _same(got[1], want[1])


@pytest.mark.parametrize("quant_type", ["fp4", "nf4", "e2m1"])
@pytest.mark.parametrize("nonfinite", codec_lib.NONFINITE_POLICIES)
def test_quantize_kernel_nonfinite_policies(quant_type, nonfinite):
  blocks = np.array(_blocks(6, 64, "float32", seed=1))
  blocks[1, 3], blocks[2, :], blocks[3, 9] = np.nan, np.nan, np.inf
  blocks[4, 7] = -np.nan  # a NaN with the sign bit set
  blocks = jnp.asarray(blocks)
  codec = codec_lib.codec_for(quant_type, nonfinite)
  want = pallas_kernels.quantize_blocks_reference(blocks, codec=codec)
  got = pallas_kernels.quantize_blocks_triton(
      blocks, codec=codec, config=QuantizeConfig(block_rows=4), interpret=INTERPRET)
  _same(got[0], want[0])
  _same(got[1], want[1])


_LOOKUPS = ("select", "gather")
# The whole cross product where the kernel compiles (GPU). In the CPU interpreter (CI)
# every quant type meets every dtype, and the lookup alternates with (i + j) % 2, so
# every quant type and every dtype still meets both lookups, at half the interpreter time.
_DEQUANT_CASES = ([(qt, dt, lk) for qt in formats.QUANT_TYPES for dt in DTYPES for lk in _LOOKUPS]
                  if not INTERPRET else
                  [(qt, dt, _LOOKUPS[(i + j) % 2]) for i, qt in enumerate(formats.QUANT_TYPES)
                   for j, dt in enumerate(DTYPES)])


@pytest.mark.parametrize("quant_type,dtype,lookup", _DEQUANT_CASES)
def test_dequantize_kernel_equals_reference(quant_type, dtype, lookup):
  fmt = formats.get_format(quant_type)
  bs = fmt.default_blocksize
  nb = 37
  x = _blocks(nb, bs, dtype, seed=11).reshape(-1)
  packed, state = quantize_lib.quantize_4bit(x, quant_type=quant_type, implementation="xla")
  data, scales = packed.reshape(-1), quantize_lib.block_scales(state)
  kw = dict(lut=fmt.decode_lut, blocksize=bs, out_dtype=jnp.dtype(dtype))
  want = pallas_kernels.dequantize_blocks_reference(data, scales, numel=x.size, **kw)
  got = pallas_kernels.dequantize_blocks_triton(
      data, scales, config=DequantizeConfig(block_rows=8, lookup=lookup),
      interpret=INTERPRET, **kw)
  assert got.shape == want.shape == (x.size,) and got.dtype == want.dtype
  _same(got, want)


def test_dispatch_and_eligibility():
  blocks = _blocks(4, 64, "bfloat16", seed=0)
  codec = codec_lib.codec_for("nf4")
  with pytest.raises(ValueError, match="`implementation` must be one of"):
    pallas_kernels.quantize_blocks(blocks, codec=codec, implementation="mosaic")
  with pytest.raises(ValueError, match="cannot handle blocks of shape"):
    pallas_kernels.quantize_blocks(blocks.astype(jnp.int32), codec=codec, implementation="pallas")
  with pytest.raises(ValueError, match="needs whole blocks"):
    pallas_kernels.dequantize_blocks(jnp.zeros(40, jnp.uint8), jnp.ones(2), lut=(0.0,) * 16,
                                     numel=80, blocksize=64, out_dtype=jnp.float32,
                                     implementation="pallas")
  # the public entry points reach the same bytes through either implementation
  a = pallas_kernels.quantize_blocks(blocks, codec=codec, implementation="xla")
  b = pallas_kernels.quantize_blocks(blocks, codec=codec, implementation="pallas")
  _same(a[0], b[0])


@pytest.mark.parametrize("cls,kw,match", [
    (QuantizeConfig, dict(block_rows=3), "`block_rows` must be a power of two"),
    (QuantizeConfig, dict(num_warps=6), "`num_warps` must be a power of two"),
    (DequantizeConfig, dict(lookup="shuffle"), "`lookup` must be one of"),
])
def test_config_validation(cls, kw, match):
  with pytest.raises(ValueError, match=match):
    cls(**kw)


def test_kernel_under_jit_and_vmap():
  blocks = _blocks(3 * 16, 64, "bfloat16", seed=5).reshape(3, 16, 64)
  codec = codec_lib.codec_for("nf4")
  f = jax.jit(jax.vmap(functools.partial(
      pallas_kernels.quantize_blocks_triton, codec=codec,
      config=QuantizeConfig(block_rows=8), interpret=INTERPRET)))
  got = f(blocks)
  for i in range(3):
    want = pallas_kernels.quantize_blocks_reference(blocks[i], codec=codec)
    _same(got[0][i], want[0])


@pytest.mark.parametrize("nb,rows", [(1, 8), (37, 8), (64, 16)])
def test_quantize_8bit_kernel_equals_reference(nb, rows):
  from jaxfp4._src import double_quant
  a = np.asarray(_blocks(nb, 256, "float32", seed=nb)) - np.float32(0.3)
  a[min(1, nb - 1), :5] = np.float32(formats.DYNAMIC_MAP_8BIT[120:125])  # on code values
  table = tuple(float(v) for v in formats.DYNAMIC_MAP_8BIT)
  want = pallas_kernels.quantize_8bit_blocks_reference(
      jnp.asarray(a), table=jnp.asarray(table, jnp.float32),
      search=double_quant.dynamic_map_search)
  got = pallas_kernels.quantize_8bit_blocks_triton(
      jnp.asarray(a), table=table, search=double_quant.dynamic_map_search,
      block_rows=rows, interpret=INTERPRET)
  _same(got[0], want[0])
  _same(got[1], want[1])
