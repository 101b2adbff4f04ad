"""``jaxfp4.calibrate``: exact Gram-based output errors, streaming, bytes, bad input."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4
import jaxfp4.nnx
from jaxfp4._src.calibration import candidates as cands
from jaxfp4._src.calibration.stats import LayerStats

FORMATS = ("nf4", "nf4+dq", "nf4+clip", "fp4", "nvfp4", "nf4+outliers", "bf16")


def mlp() -> nnx.Module:
  return nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(64, 64, rngs=nnx.Rngs(1)))


def batches(n: int, rows: int, seed: int = 0) -> list[jax.Array]:
  x = jax.random.t(jax.random.key(seed), 4.0, (n * rows, 64))
  return [x[i * rows:(i + 1) * rows] for i in range(n)]


@pytest.fixture(scope="module")
def report() -> jaxfp4.CalibrationReport:
  return jaxfp4.calibrate(mlp(), batches(4, 24), formats=FORMATS, progress=False)


def test_gram_error_equals_direct_error(report):
  model = mlp()
  with jaxfp4.nnx.record_linear_inputs(model) as inputs:
    for b in batches(4, 24):
      model(b)
  layers = {".".join(map(str, p)): n for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear) and p}
  assert [l.path for l in report.layers] == ["layers.0", "layers.2"]
  worst = 0.0
  for l in report.layers:
    x = np.concatenate([np.asarray(v, np.float64) for v in inputs[l.path]])
    k = np.asarray(layers[l.path].kernel[...], np.float64)
    assert l.rows == x.shape[0] == 96
    np.testing.assert_allclose(l.input_rms, np.sqrt(np.mean(x ** 2, axis=0)), rtol=1e-5)
    np.testing.assert_allclose(l.input_max_abs, np.max(np.abs(x), axis=0), rtol=1e-6)
    np.testing.assert_allclose(l.input_mean_abs, np.mean(np.abs(x), axis=0), rtol=1e-5)
    for key, r in l.results.items():
      stored = cands.store(cands.parse(key), layers[l.path].kernel[...],
                           input_rms=np.asarray(l.input_rms, np.float32), clip=r.clip)
      d = np.asarray(stored.kernel_hat, np.float64) - k
      direct = np.sum((x @ d) ** 2) / np.sum((x @ k) ** 2)
      worst = max(worst, abs(r.error - direct) / direct)
      assert r.nbytes == stored.nbytes and r.bits == pytest.approx(8 * stored.nbytes / k.size)
  assert worst < 1e-4, worst  # measured 3e-6 (float32 Gram vs float64 inputs)


def test_streaming_equals_one_batch(report):
  one = jaxfp4.calibrate(mlp(), [jnp.concatenate(batches(4, 24))], formats=FORMATS, progress=False)
  assert (one.num_batches, report.num_batches) == (1, 4)
  for a, b in zip(one.layers, report.layers):
    assert a.rows == b.rows
    for key in a.results:
      assert a.results[key].error == pytest.approx(b.results[key].error, rel=1e-4), key
      assert a.results[key].nbytes == b.results[key].nbytes


def test_memory_does_not_grow_with_batches():
  s = LayerStats(64)
  shapes = [(s.gram.shape, s.sum_abs.shape, s.max_abs.shape)]
  for b in batches(4, 24) * 3:
    s.update(b)
    shapes.append((s.gram.shape, s.sum_abs.shape, s.max_abs.shape))
  assert set(shapes) == {((64, 64), (64,), (64,))} and s.rows == 288
  few = jaxfp4.calibrate(mlp(), batches(1, 24), formats=("nf4",), progress=False)
  many = jaxfp4.calibrate(mlp(), batches(4, 24), formats=("nf4",), progress=False)
  size = lambda r: [(len(l.input_rms), len(l.input_max_abs), len(l.results)) for l in r.layers]
  assert size(few) == size(many) == [(64, 64, 1), (64, 64, 1)]


def test_bits_from_stored_bytes(report):
  l = report.layer("layers.0")  # 4096 weights, 64 blocks of 64
  assert l.results["nf4@64"].nbytes == 2048 + 64 * 4
  assert l.results["nf4+dq@64"].nbytes == 2048 + 64 + 4 + 4  # codes, offset, one nested absmax
  assert l.results["bf16"].bits == 16.0
  assert l.results["nvfp4"].nbytes == 2048 + 256 + 4
  assert l.results["nf4+outliers@64"].nbytes == 2048 + 64 * 4 + 64 * 2 + 4  # 1 bf16 column of 64 + its index


def test_report_roundtrip_and_table(report, tmp_path):
  report.save(tmp_path / "r.json")
  assert jaxfp4.CalibrationReport.load(tmp_path / "r.json") == report
  text = str(report)
  assert "nf4+clip@64" in text and "bits/weight" in text and "layers.2" in text


def test_bad_calibration_input():
  with pytest.raises(ValueError, match="`batches` is empty"):
    jaxfp4.calibrate(mlp(), [], progress=False)
  with pytest.raises(ValueError, match="`batches` is empty"):
    jaxfp4.calibrate(mlp(), (b for b in []), progress=False)
  with pytest.raises(ValueError, match="candidate base must be one of"):
    jaxfp4.calibrate(mlp(), batches(1, 4), formats=("nf5",), progress=False)
  with pytest.raises(ValueError, match="'\\+dq' and '\\+clip' apply to nf4, fp4 and e2m1"):
    jaxfp4.calibrate(mlp(), batches(1, 4), formats=("mxfp4+clip",), progress=False)
  with pytest.raises(ValueError, match="`blocksize` must be one of"):
    jaxfp4.calibrate(mlp(), batches(1, 4), formats=("nf4",), blocksizes=(48,), progress=False)
  with pytest.raises(ValueError, match="reached no nnx.Linear"):
    jaxfp4.calibrate(mlp(), batches(1, 4), skip="layers", progress=False)


def test_activation_aware_outliers_win_on_a_huge_channel():
  model = nnx.Sequential(nnx.Linear(128, 64, rngs=nnx.Rngs(3)))
  x = jax.random.normal(jax.random.key(4), (256, 128))
  x = x.at[:, 37].multiply(200.0)  # one input channel dominates every output
  r = jaxfp4.calibrate(model, [x], formats=("nf4", "nf4+dq", "nf4+outliers"), progress=False).layers[0]
  assert r.results["nf4+outliers@64"].error < 0.05 * r.results["nf4@64"].error  # measured 0.5%
  # The same weights without the activation statistics: nothing singles out column 37.
  w = model.layers[0].kernel[...].T
  assert 37 not in np.asarray(jaxfp4.select_outlier_columns(w, num_columns=1)).tolist()
  plan = jaxfp4.plan_precision(jaxfp4.CalibrationReport((r,), ("nf4@64", "nf4+dq@64", "nf4+outliers@64"), 1),
                               bits_per_weight=4.8)
  assert plan.entries[0].candidate == "nf4+outliers@64"
