"""One suite for the 4-bit matmul kernels and their pure-jnp reference.

Each case builds a random packed weight in every scale encoding the kernels
read (float32 absmax, absmax x 1/6, byte-indexed table, bitsandbytes' nested
absmax), runs the reference and the Triton kernel (Pallas interpreter on the
CPU, compiled on a GPU), and checks both against the exact product computed
in float64 from the decoded weight. The bound is the error that float32
accumulation and one final rounding can make, so it fails on a wrong tile, a
missed mask or an unwritten output.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import MatmulConfig, PackedWeight, WeightFormat
from pallas_kernels._src.matmul_4bit import config as mcfg
from pallas_kernels._src.matmul_4bit import layout as k_order
from tests.conftest import on_gpu

INTERPRET = not on_gpu()
_EPS = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 2.0 ** -24}


def make_weight(n, k, bs, encoding, seed):
  """A random packed ``W[n, k]`` with scale ``encoding`` and its format."""
  rng = np.random.default_rng(seed)
  lut = tuple(np.sort(rng.standard_normal(16)).astype(np.float32).tolist())
  nkb = k // bs
  data = jnp.asarray(rng.integers(0, 256, (n, nkb, bs // 2)), jnp.uint8)
  if encoding in ("float", "float*"):
    scales = jnp.asarray(rng.uniform(0.1, 2.0, (n, nkb)), jnp.float32)
    fmt = WeightFormat(lut=lut, blocksize=bs,
                       scale_multiplier=1.0 if encoding == "float" else float(np.float32(1 / 6)))
    return PackedWeight(data, scales), fmt
  codes = jnp.asarray(rng.integers(0, 256, (n, nkb)), jnp.uint8)
  table = jnp.asarray(rng.uniform(-1.0, 1.0, 256), jnp.float32)
  if encoding == "byte":
    return PackedWeight(data, codes, table), WeightFormat(lut=lut, blocksize=bs, scale_kind="byte")
  groups = -(-(n * nkb) // 256)
  group = jnp.asarray(rng.uniform(0.5, 1.5, 1 << (groups - 1).bit_length()), jnp.float32)
  offset = jnp.asarray([1.25], jnp.float32)
  return (PackedWeight(data, codes, table, group, offset),
          WeightFormat(lut=lut, blocksize=bs, scale_kind="byte", nested_blocksize=256))


def repacked(w, fmt):
  """The same weight with its bytes in the Mosaic decoder's K order (``layout="wgmma"``)."""
  n, k = w.shape
  data = k_order.repack_bytes(w.data.reshape(n, k // 2), source="bnb", target="wgmma")
  return w._replace(data=data.reshape(w.data.shape)), dataclasses.replace(fmt, layout="wgmma")


def check_close(got, x, w_decoded, dtype, transpose, bias=None):
  """|got - exact| within one output rounding plus float32 accumulation error."""
  x64 = np.asarray(x.astype(jnp.float32), np.float64)
  w64 = np.asarray(w_decoded.astype(jnp.float32), np.float64)
  wt = w64 if transpose else w64.T
  exact = x64 @ wt + (0.0 if bias is None else np.asarray(bias, np.float64)[None, :])
  mag = np.abs(x64) @ np.abs(wt) + (0.0 if bias is None else np.abs(np.asarray(bias))[None, :])
  k = x.shape[1]
  bound = _EPS[jnp.dtype(dtype).name] * np.abs(exact) + 2 * k * 2.0 ** -24 * mag + 1e-30
  g = np.asarray(got.astype(jnp.float32), np.float64)
  assert g.shape == exact.shape
  assert np.all(np.isfinite(g))
  bad = np.abs(g - exact) > bound
  assert not bad.any(), f"{bad.sum()} of {bad.size} outside the bound; worst " \
      f"{np.max(np.abs(g - exact) - bound):.3g}"
  return float(np.max(np.abs(g - exact) / np.maximum(np.abs(exact), 1e-6)))


CASES = [  # n, k, m, blocksize, encoding, dtype, config
    (64, 512, 1, 64, "float", "bfloat16", MatmulConfig(block_m=16, block_n=32, block_k=128)),
    (48, 256, 5, 64, "float*", "bfloat16", MatmulConfig(block_m=16, block_n=32, block_k=64,
                                                        split_k=2)),
    (40, 512, 17, 32, "byte", "float16", MatmulConfig(block_m=16, block_n=16, block_k=128,
                                                     split_k=3)),
    (72, 384, 3, 64, "nested", "bfloat16", MatmulConfig(block_m=16, block_n=64, block_k=128)),
    (24, 256, 33, 16, "byte", "float32", MatmulConfig(block_m=32, block_n=16, block_k=64)),
    (96, 1024, 8, 128, "nested", "float16", MatmulConfig(block_m=16, block_n=32, block_k=256,
                                                         split_k=2, lookup="gather")),
    (40, 256, 1, 64, "nested", "bfloat16", MatmulConfig(block_n=32, block_k=128, split_k=2,
                                                        gemv=True)),
    (64, 512, 3, 32, "float*", "float16", MatmulConfig(block_n=16, block_k=64, gemv=True,
                                                       lookup="gather")),
    (32, 128, 1, 64, "byte", "float32", MatmulConfig(block_n=32, block_k=64, gemv=True)),
]


@pytest.mark.parametrize("transpose", [False, True], ids=["forward", "transposed"])
@pytest.mark.parametrize("n,k,m,bs,encoding,dtype,config", CASES)
def test_kernel_and_reference_meet_the_exact_product(n, k, m, bs, encoding, dtype, config,
                                                      transpose):
  w, fmt = make_weight(n, k, bs, encoding, seed=n + k + m)
  rng = np.random.default_rng(m)
  x = jnp.asarray(rng.standard_normal((m, n if transpose else k)), jnp.dtype(dtype))
  bias = None if transpose else jnp.asarray(rng.standard_normal(n), jnp.float32)
  wd = pallas_kernels.decode_weight_reference(w, fmt, jnp.dtype(dtype))
  ref = pallas_kernels.matmul_4bit_reference(x, w, fmt=fmt, transpose=transpose, bias=bias)
  check_close(ref, x, wd, dtype, transpose, bias)
  got = pallas_kernels.matmul_packed(x, w, fmt=fmt, transpose=transpose, bias=bias,
                                     implementation="pallas", config=config,
                                     interpret=INTERPRET)
  assert got.dtype == jnp.dtype(dtype)
  check_close(got, x, wd, dtype, transpose, bias)


def test_nested_scales_are_rounded_before_the_offset_is_added():
  # code * group is not exact in float32 here, so an FMA would differ.
  w, fmt = make_weight(32, 256, 64, "nested", seed=3)
  scales = pallas_kernels._src.matmul_4bit.reference.decode_scales_reference(w, fmt)
  table = np.asarray(w.scale_table)[np.asarray(w.scales)].astype(np.float32)
  blk = np.arange(w.scales.size).reshape(w.scales.shape) // 256
  two_roundings = (table * np.asarray(w.group_scales)[blk]).astype(np.float32) + np.float32(1.25)
  np.testing.assert_array_equal(np.asarray(scales), two_roundings)


def test_config_is_fitted_to_the_shape():
  c = mcfg.fit(MatmulConfig(block_k=512, split_k=64), 1, 4096, 14336, 64, transpose=False)
  assert c.block_k == 512 and 224 % (c.block_k // 64) == 0 and c.split_k == 28
  c = mcfg.fit(MatmulConfig(block_k=512), 1, 4096, 64 * 7, 64, transpose=False)
  assert c.block_k == 64
  for m in (1, 16, 64, 512, 8192):
    for transpose in (False, True):
      c = mcfg.heuristic(m, 8192, 8192, 64, transpose)
      assert c.block_k % 64 == 0 and c.split_k >= 1


@pytest.mark.parametrize("kw,match", [
    (dict(block_m=8), "block_m"), (dict(block_n=48), "block_n"), (dict(split_k=0), "split_k")])
def test_config_validation(kw, match):
  with pytest.raises(ValueError, match=match):
    MatmulConfig(**kw)


def test_weight_format_validation():
  with pytest.raises(ValueError, match="lut"):
    WeightFormat(lut=(0.0,) * 15, blocksize=64)
  with pytest.raises(ValueError, match="blocksize"):
    WeightFormat(lut=(0.0,) * 16, blocksize=48)
  with pytest.raises(ValueError, match="nested_blocksize"):
    WeightFormat(lut=(0.0,) * 16, blocksize=64, nested_blocksize=256)
  w, fmt = make_weight(16, 128, 64, "byte", seed=0)
  with pytest.raises(ValueError, match="scale_table"):
    pallas_kernels.matmul_packed(jnp.ones((1, 128), jnp.bfloat16), w._replace(scale_table=None),
                                 fmt=fmt)
  with pytest.raises(ValueError, match="x"):
    pallas_kernels.matmul_packed(jnp.ones((1, 64), jnp.bfloat16), w, fmt=fmt,
                                 implementation="pallas", interpret=INTERPRET)


def test_pallas_refuses_what_the_kernel_cannot_do():
  w, fmt = make_weight(16, 128, 64, "float", seed=0)
  with pytest.raises(ValueError, match="dtype"):
    pallas_kernels.matmul_packed(jnp.ones((1, 128), jnp.int8), w, fmt=fmt,
                                 implementation="pallas")
