"""Silent wrong answers and half-done work that a check can catch (issue 15).

Each class of fault has its own tests. Arrays are tiny and shapes shared, so the
file adds few compilations to the suite.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

import jaxfp4

F32_MAX = float(np.finfo(np.float32).max)


def _normal(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- 1. double quantization keeps a NaN/Inf in its own nested group ---------------

def test_double_quant_nan_stays_in_its_nested_group():
  # 512 blocks of 64: two nested groups of 256 blocks (64 rows each).
  w = _normal((128, 256))
  w[3, 5] = np.nan
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4", compress_statistics=True)
  y = np.asarray(jaxfp4.dequantize_4bit(p, s))
  assert np.isnan(y[:64]).all() and np.isfinite(y[64:]).all()
  # The offset is the mean of the finite absmax, and the second group's absmax
  # decodes within the 8-bit map's rounding (half its widest gap).
  plain = np.asarray(jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4")[1].absmax, np.float64)
  assert abs(float(s.offset) - np.nanmean(plain)) <= 2 * np.spacing(np.float32(s.offset))
  code = np.asarray(s.state2.code)
  decoded = code[np.asarray(s.absmax[256:])] * float(s.state2.absmax[1]) + float(s.offset)
  bound = float(s.state2.absmax[1]) * np.max(np.diff(code)) / 2
  assert np.max(np.abs(decoded - plain[256:])) <= bound
  # matmul: only the outputs of the poisoned rows are NaN
  out = np.asarray(jaxfp4.matmul_4bit(jnp.ones((1, 256)), p, s))
  assert np.isnan(out[0, :64]).all() and np.isfinite(out[0, 64:]).all()


def test_double_quant_bnb_policy_still_poisons_everything():
  # bitsandbytes' own behaviour, kept byte for byte under nonfinite="bnb":
  # an Inf makes the offset non-finite and every block NaN.
  w = _normal((128, 256))
  w[3, 5] = np.inf
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4", compress_statistics=True,
                              nonfinite="bnb")
  assert not np.isfinite(float(s.offset))
  assert np.isnan(np.asarray(jaxfp4.dequantize_4bit(p, s))).all()


# --- 2. huge finite values ------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(big=st.floats(2.0 ** 126, F32_MAX, width=32), quant_type=st.sampled_from(["nf4", "fp4", "e2m1"]),
       nested=st.booleans(), where=st.integers(0, 127))
def test_huge_block_max_decodes_to_itself(big, quant_type, nested, where):
  w = _normal((2, 64))
  w.reshape(-1)[where] = -big
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type=quant_type, compress_statistics=nested)
  y = np.asarray(jaxfp4.dequantize_4bit(p, s), np.float64).reshape(-1)
  # measured: at most 1 ulp (e2m1 decodes through absmax * float32(1/6))
  assert abs(y[where] + big) <= 2 * big * 2.0 ** -23, (y[where], big)  # 2 ulp
  other = np.delete(np.arange(128), where)
  blk = where // 64
  same = other[other // 64 == blk]
  assert np.all(np.abs(y[same]) <= 0.1 * big)  # the rest of that block rounds toward 0
  rest = other[other // 64 != blk]
  if not nested:  # the other block is untouched
    w0 = w.copy()
    w0.reshape(-1)[where] = 0
    y0 = np.asarray(jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(
        jnp.asarray(w0), quant_type=quant_type)), np.float64).reshape(-1)
    np.testing.assert_array_equal(y[rest], y0[rest])


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_huge_bnb_policy_is_bitsandbytes(quant_type):
  # bitsandbytes 0.50.2 on an H100 decodes such a block to 0 and, nested with
  # two such blocks, everything to NaN (docs/measurements/lut_2026-12-06b/bnb_huge.txt).
  w = _normal((2, 64))
  w[0, 5], w[1, 6] = 1e38, -3e38
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type=quant_type, nonfinite="bnb")
  assert float(s.absmax[0]) == np.float32(1e38)
  assert (np.asarray(jaxfp4.dequantize_4bit(p, s)) == 0).all()
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type=quant_type, nonfinite="bnb",
                              compress_statistics=True)
  assert np.isnan(np.asarray(jaxfp4.dequantize_4bit(p, s))).all()


def test_huge_stochastic_rounding_keeps_the_value():
  w = _normal((2, 64))
  w[0, 0] = 3e38
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4", rounding="stochastic",
                              key=jax.random.key(0))
  assert float(jaxfp4.dequantize_4bit(p, s)[0, 0]) == np.float32(3e38)


# --- 3. outlier columns are validated where they enter ----------------------------

def _outlier_weight():
  w = _normal((8, 64))
  return jaxfp4.quantize_4bit_with_outliers(jnp.asarray(w), num_columns=2, quant_type="nf4")


@pytest.mark.parametrize("index,match", [
    ([3, 64], r"`outliers.index` must hold input columns in \[0, 64\), got \[64\]"),
    ([-1, 3], r"`outliers.index` must hold input columns in \[0, 64\), got \[-1\]"),
    ([7, 7], r"`outliers.index` must not repeat a column; repeated: \[7\]"),
])
def test_outlier_index_out_of_range_or_repeated(index, match):
  p, s, cols = _outlier_weight()
  bad = jaxfp4.OutlierColumns(index=jnp.asarray(index, jnp.int32), values=cols.values)
  x = jnp.ones((1, 64))
  with pytest.raises(ValueError, match=match):
    jaxfp4.matmul_4bit(x, p, s, outliers=bad)
  with pytest.raises(ValueError, match=match):
    jaxfp4.dequantize_4bit_with_outliers(p, s, bad)
  from jaxfp4 import nnx as jnnx
  from flax import nnx
  with pytest.raises(ValueError, match=match):
    jnnx.Dense4bit(64, 8, quantized=(p, s, bad), rngs=nnx.Rngs(0))


def test_outlier_shapes_are_checked():
  p, s, cols = _outlier_weight()
  with pytest.raises(ValueError, match=r"`outliers.values` must have shape \(8, 2\)"):
    jaxfp4.matmul_4bit(jnp.ones((1, 64)), p, s,
                       outliers=jaxfp4.OutlierColumns(index=cols.index, values=cols.values[:4]))
  with pytest.raises(ValueError, match=r"`outliers.index` must be a 1-D int array"):
    jaxfp4.matmul_4bit(jnp.ones((1, 64)), p, s,
                       outliers=jaxfp4.OutlierColumns(index=cols.index[None], values=cols.values))


def test_outliers_checked_on_checkpoint_restore(tmp_path):
  from flax import nnx
  from jaxfp4 import nnx as jnnx
  import jaxfp4.io
  p, s, cols = _outlier_weight()
  layer = jnnx.Dense4bit(64, 8, quantized=(p, s, cols), rngs=nnx.Rngs(0))
  # corrupt the saved index: a column past the end
  layer.outliers.set_value(jaxfp4.OutlierColumns(index=jnp.asarray([3, 64], jnp.int32),
                                                 values=cols.values))
  jaxfp4.io.save_model(tmp_path / "m.safetensors", layer, progress=False)
  fresh = jnnx.Dense4bit(64, 8, quantized=(p, s, cols), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"m.safetensors: tensor 'outliers.index': `outliers.index` "
                                       r"must hold input columns in \[0, 64\)"):
    jaxfp4.io.load_model(tmp_path / "m.safetensors", fresh, progress=False)
