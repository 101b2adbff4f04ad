"""4-bit weights with input columns kept in high precision (``quantize_4bit_with_outliers``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4
import jaxfp4.io
import jaxfp4.nnx
from jaxfp4.models import llama


def _weight(seed=0, n=48, k=256, spikes=(5, 77, 200)):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
  for j in spikes:  # a few input columns 40x larger, as outlier features are
    w[:, j] *= 40.0
  return w


def test_columns_by_magnitude_are_kept_exactly():
  w = _weight()
  packed, state, cols = jaxfp4.quantize_4bit_with_outliers(jnp.asarray(w), num_columns=3, quant_type="nf4")
  np.testing.assert_array_equal(np.asarray(cols.index), [5, 77, 200])
  np.testing.assert_array_equal(np.asarray(cols.values), w[:, [5, 77, 200]])
  w_hat = np.asarray(jaxfp4.dequantize_4bit_with_outliers(packed, state, cols))
  np.testing.assert_array_equal(w_hat[:, [5, 77, 200]], w[:, [5, 77, 200]])
  # The 4-bit part holds zeros there, so it is an ordinary bitsandbytes weight.
  np.testing.assert_array_equal(np.asarray(jaxfp4.dequantize_4bit(packed, state))[:, [5, 77, 200]], 0)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "e2m1", "mxfp4", "nvfp4"])
def test_error_drops_on_a_weight_with_outlier_columns(quant_type):
  w = jnp.asarray(_weight())
  bs = {"mxfp4": 32, "nvfp4": 16}.get(quant_type, 64)
  plain = jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(w, quant_type=quant_type, blocksize=bs))
  kept = jaxfp4.dequantize_4bit_with_outliers(
      *jaxfp4.quantize_4bit_with_outliers(w, num_columns=3, quant_type=quant_type, blocksize=bs))
  e_plain = float(jnp.linalg.norm(plain - w) / jnp.linalg.norm(w))
  e_kept = float(jnp.linalg.norm(kept - w) / jnp.linalg.norm(w))
  # Measured: the error falls 3.5x (nvfp4) to 6.6x (nf4); the spikes' blocks no longer set the scale.
  assert e_kept < e_plain / 3, (e_plain, e_kept)


def test_activation_aware_selection_finds_the_loud_input_feature():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((32, 128)).astype(np.float32)
  x = rng.standard_normal((64, 128)).astype(np.float32)
  x[:, 42] *= 100.0  # the feature the layer's output depends on most
  by_weight = jaxfp4.select_outlier_columns(jnp.asarray(w), num_columns=1)
  by_output = jaxfp4.select_outlier_columns(jnp.asarray(w), num_columns=1, activations=jnp.asarray(x))
  assert int(by_output[0]) == 42
  assert int(by_weight[0]) == int(np.argmax(np.abs(w).max(axis=0)))


def test_matmul_with_outliers_and_its_gradient():
  w = jnp.asarray(_weight())
  packed, state, cols = jaxfp4.quantize_4bit_with_outliers(w, num_columns=3, quant_type="nf4")
  w_hat = np.asarray(jaxfp4.dequantize_4bit_with_outliers(packed, state, cols), np.float64)
  x = jax.random.normal(jax.random.key(0), (2, 3, 256))
  y = jaxfp4.matmul_4bit(x, packed, state, outliers=cols, implementation="xla")
  exact = np.asarray(x, np.float64) @ w_hat.T
  mag = np.abs(np.asarray(x, np.float64)) @ np.abs(w_hat).T
  # float32 accumulation of both parts, and one extra rounding: measured 0.88 units.
  assert np.all(np.abs(np.asarray(y, np.float64) - exact) <= 2 * 2.0 ** -24 * mag)
  dy = jax.random.normal(jax.random.key(1), (2, 3, 48))
  dx = jax.grad(lambda x: jnp.sum(jaxfp4.matmul_4bit(x, packed, state, outliers=cols,
                                                     implementation="xla") * dy))(x)
  want = np.asarray(dy, np.float64) @ w_hat
  mag = np.abs(np.asarray(dy, np.float64)) @ np.abs(w_hat)
  # the 4-bit part's dy @ W plus the kept columns' product: measured 2.41 units.
  assert np.all(np.abs(np.asarray(dx, np.float64) - want) <= 4 * 2.0 ** -24 * mag)


def test_dense4bit_with_outlier_columns_roundtrips(tmp_path):
  lin = nnx.Linear(256, 48, rngs=nnx.Rngs(0))
  lin.kernel[...] = jnp.asarray(_weight().T)
  x = jax.random.normal(jax.random.key(2), (4, 256))
  plain = jaxfp4.nnx.Dense4bit.from_linear(lin)
  kept = jaxfp4.nnx.Dense4bit.from_linear(lin, outlier_columns=3, calibration=x, lora_rank=2,
                                          rngs=nnx.Rngs(1))
  ref = lin(x)
  e_plain = float(jnp.linalg.norm(plain(x) - ref) / jnp.linalg.norm(ref))
  e_kept = float(jnp.linalg.norm(kept(x) - ref) / jnp.linalg.norm(ref))
  assert e_kept < e_plain / 4, (e_plain, e_kept)  # measured 6.4x lower (0.123 -> 0.019)
  assert kept.nbytes() == plain.nbytes() + 3 * 4 + 48 * 3 * 4
  path = jaxfp4.io.save_model(tmp_path / "m.safetensors", kept, progress=False)
  fresh = nnx.eval_shape(lambda: jaxfp4.nnx.Dense4bit(256, 48, outlier_columns=3, lora_rank=2,
                                                       rngs=nnx.Rngs(5)))
  jaxfp4.io.load_model(path, fresh, progress=False)
  np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(kept(x)))
  # merge_lora keeps the same columns and folds the adapter into both parts.
  kept.lora_b[...] = jnp.full((2, 48), 0.2)
  before = kept(x)
  jaxfp4.nnx.merge_lora(kept)
  np.testing.assert_array_equal(np.asarray(kept.outliers.get_value().index), [5, 77, 200])
  err = float(jnp.linalg.norm(kept(x) - before) / jnp.linalg.norm(before))
  # A re-quantization error (measured 0.024), not a lost adapter: the adapter's
  # part of the output is 0.071 of it (measured), so dropping it would show.
  assert err < 0.04, err


def test_quantize_model_with_outliers_and_hf_export_refuses(tmp_path):
  model = llama.LlamaForCausalLM(llama.LlamaConfig.tiny(), dtype=jnp.float32, param_dtype=jnp.float32,
                                 rngs=nnx.Rngs(0))
  report = jaxfp4.nnx.quantize_model(model, quant_type="nf4", skip="lm_head", outlier_columns=2)
  assert report.num_quantized == 14
  assert model.model.layers[0].mlp.down_proj.outliers.get_value().values.shape == (128, 2)
  with pytest.raises(ValueError, match="outlier columns"):
    llama.save_pretrained(model, tmp_path / "hf", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_columns": 256}, "`num_columns`"),
    ({"num_columns": -1}, "`num_columns`"),
    ({"num_columns": 2, "activations": jnp.ones((4, 7))}, "`activations`"),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxfp4.quantize_4bit_with_outliers(jnp.ones((8, 256)), quant_type="nf4", **kwargs)


def test_calibration_needs_outlier_columns():
  with pytest.raises(ValueError, match="`calibration`"):
    jaxfp4.nnx.Dense4bit.from_linear(nnx.Linear(64, 8, rngs=nnx.Rngs(0)), calibration=jnp.ones((2, 64)))


class _Shared(nnx.Module):
  """One ``nnx.Linear`` reachable at two paths, plus an ordinary one."""

  def __init__(self):
    self.a = nnx.Linear(256, 256, rngs=nnx.Rngs(0))
    self.b = self.a
    self.out = nnx.Linear(256, 48, rngs=nnx.Rngs(1))

  def __call__(self, x):
    return self.out(self.b(self.a(x)))


def test_record_linear_inputs_and_restore():
  model = _Shared()
  layers = (model.a, model.out)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5, 256)), jnp.float32)
  with jaxfp4.nnx.record_linear_inputs(model) as inputs:
    y = model(x)
  assert sorted(inputs) == ["a", "out"]
  assert len(inputs["a"]) == 2 and len(inputs["out"]) == 1  # the shared layer saw both calls
  np.testing.assert_array_equal(np.asarray(inputs["a"][0]), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(inputs["out"][0]), np.asarray(model.a(model.a(x))))
  assert (model.a, model.b, model.out) == (layers[0], layers[0], layers[1])
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(y))
  with pytest.raises(ValueError, match="eagerly"):
    with jaxfp4.nnx.record_linear_inputs(model):
      nnx.jit(lambda m, x: m(x))(model, x)
  assert isinstance(model.a, nnx.Linear) and model.b is model.a and isinstance(model.out, nnx.Linear)


def test_quantize_model_with_per_layer_calibration_and_counts():
  rng = np.random.default_rng(1)
  model = nnx.Sequential(nnx.Linear(256, 64, rngs=nnx.Rngs(0)), nnx.Linear(64, 32, rngs=nnx.Rngs(1)))
  w = np.asarray(model.layers[0].kernel[...])
  x = rng.standard_normal((32, 256)).astype(np.float32)
  x[:, 13] *= 100.0  # a loud input feature, as LLM.int8's outlier features
  magnitude = int(np.argmax(np.abs(w).max(axis=1)))
  assert magnitude != 13
  report = jaxfp4.nnx.quantize_model(
      model, quant_type="nf4", calibration={"layers.0": jnp.asarray(x)},
      outlier_columns=lambda path, layer: layer.in_features // 64)
  assert report.num_quantized == 2
  first, second = (l.outliers.get_value().index for l in model.layers)
  assert 13 in np.asarray(first).tolist() and first.shape == (4,)
  assert second.shape == (1,)  # no calibration for layers.1: ranked by weight magnitude
  w2 = np.asarray(jaxfp4.dequantize_4bit_with_outliers(  # the kept column is exact
      model.layers[0].weight.get_value(), model.layers[0].quant_state.get_value(), model.layers[0].outliers.get_value()))
  np.testing.assert_array_equal(w2[:, 13], w[13, :])


def test_quantize_model_calibration_must_name_linear_layers():
  model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="`calibration`.*'layers.7'"):
    jaxfp4.nnx.quantize_model(model, outlier_columns=2, calibration={"layers.7": jnp.ones((2, 64))})
  with pytest.raises(ValueError, match="`calibration`"):
    jaxfp4.nnx.quantize_model(model, calibration={"layers.0": jnp.ones((2, 64))})  # no outlier_columns
