"""``plan_precision``, ``quantize_model(plan=...)`` and ``jaxfp4 plan``."""

from __future__ import annotations

import doctest
import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfp4
import jaxfp4.nnx
from jaxfp4._src.calibration import plan as plan_module
from jaxfp4._src.calibration.plan import solve_knapsack
from jaxfp4._src.cli.main import main
from tests.test_calibration import batches, mlp

FORMATS = ("nf4", "nf4+dq", "nf4+clip", "bf16")


@pytest.fixture(scope="module")
def report() -> jaxfp4.CalibrationReport:
  return jaxfp4.calibrate(mlp(), batches(4, 24), formats=FORMATS, progress=False)



def test_knapsack_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(20):
    cost = rng.integers(1, 12, (5, 3)).astype(float)
    value = rng.random((5, 3))
    budget = float(rng.integers(int(cost.min(1).sum()), int(cost.max(1).sum()) + 1))
    best = min((sum(value[i, c] for i, c in enumerate(a)), a) for a in itertools.product(range(3), repeat=5)
               if sum(cost[i, c] for i, c in enumerate(a)) <= budget)
    room = int(budget - cost.min(1).sum())
    got = solve_knapsack(cost, value, budget, resolution=max(room, 1))  # unit 1: exact
    assert sum(cost[i, c] for i, c in enumerate(got)) <= budget
    assert sum(value[i, c] for i, c in enumerate(got)) == pytest.approx(best[0])


def test_knapsack_uses_the_budget_rounding_leaves():
  rng = np.random.default_rng(1)
  for _ in range(50):
    cost = rng.uniform(4.0, 4.6, (12, 3)) * rng.integers(1, 5, (12, 1))
    value = rng.random((12, 3))
    for j in range(3):  # the budget is exactly the cost of "column j everywhere"
      budget = float(cost[:, j].sum())
      got = solve_knapsack(cost, value, budget, resolution=16)  # coarse: rounding matters
      assert cost[np.arange(12), got].sum() <= budget * (1 + 1e-12)
      slack = budget * (1 + 1e-12) - cost[np.arange(12), got].sum()
      for i in range(12):  # no single swap that fits improves it
        for k in range(3):
          assert not (cost[i, k] - cost[i, got[i]] <= slack and value[i, k] < value[i, got[i]])


def test_plan_respects_budget_and_applies(report, tmp_path):
  keys = ("nf4@64", "nf4+dq@64", "nf4+clip@64", "bf16")
  for bits in (4.2, 4.5, 6.0, 16.0):
    plan = jaxfp4.plan_precision(report, bits_per_weight=bits, candidates=keys)
    assert plan.bits_per_weight <= bits + 1e-9
  assert {e.candidate for e in plan.entries} == {"bf16"}  # 16 bits buys bf16 everywhere
  plan = jaxfp4.plan_precision(report, bits_per_weight=4.5, candidates=keys, keep={"layers.2": "nf4+dq@64"})
  assert plan.entry("layers.2").candidate == "nf4+dq@64"
  # A kept format outside `candidates` still counts against the budget.
  kept = jaxfp4.plan_precision(report, bits_per_weight=10.2, candidates=("nf4@64", "nf4+dq@64"),
                               keep={"layers.0": "bf16"})
  assert kept.entry("layers.0").candidate == "bf16" and kept.bits_per_weight <= 10.2
  assert kept.entry("layers.2").candidate == "nf4+dq@64"  # (16 + 4.5) / 2 > 10.2: only DQ fits
  with pytest.raises(ValueError, match="below the smallest plan"):
    jaxfp4.plan_precision(report, bits_per_weight=10.0, candidates=("nf4@64",), keep={"layers.0": "bf16"})
  plan.save(tmp_path / "plan.json")
  assert jaxfp4.PrecisionPlan.load(tmp_path / "plan.json") == plan

  # Applied, every layer's output error on the calibration data is what the report predicted.
  model = mlp()
  with jaxfp4.nnx.record_linear_inputs(model) as inputs:
    for b in batches(4, 24):
      model(b)
  linears = {".".join(map(str, p)): n for p, n in nnx.iter_graph(model)}
  ref = {p: (np.concatenate([np.asarray(v) for v in xs]), linears[p](jnp.concatenate(xs))) for p, xs in inputs.items()}
  q = jaxfp4.nnx.quantize_model(model, plan=plan)
  assert q.num_quantized == 2
  nodes = {".".join(map(str, p)): n for p, n in nnx.iter_graph(model)}
  for e in plan.entries:
    x, y = ref[e.path]
    y_hat = nodes[e.path](jnp.asarray(x))
    err = float(jnp.sum((y_hat - y) ** 2) / jnp.sum((y - nodes[e.path].bias[...][None]) ** 2))
    assert err == pytest.approx(report.layer(e.path).results[e.candidate].error, rel=1e-3)
    assert 8 * nodes[e.path].nbytes() / e.params == pytest.approx(e.bits)


def test_plan_bf16_layer_is_bf16_linear(report):
  plan = jaxfp4.plan_precision(report, bits_per_weight=16.0, candidates=("nf4@64", "bf16"))
  model = mlp()
  x = batches(1, 8)[0]
  y = model(x)
  jaxfp4.nnx.quantize_model(model, plan=plan)
  assert model.layers[0].kernel[...].dtype == jnp.bfloat16 and isinstance(model.layers[0], nnx.Linear)
  out = model(x)
  assert out.dtype == jnp.float32 and float(jnp.max(jnp.abs(out - y))) < 0.05


def test_plan_bad_input(report):
  with pytest.raises(ValueError, match=r"below the smallest plan these candidates allow: 4\.1\d+ bits"):
    jaxfp4.plan_precision(report, bits_per_weight=4.0)
  with pytest.raises(ValueError, match="`candidates` must be a non-empty subset"):
    jaxfp4.plan_precision(report, bits_per_weight=5.0, candidates=("int8",))
  with pytest.raises(ValueError, match="`keep` must map"):
    jaxfp4.plan_precision(report, bits_per_weight=5.0, keep={"head": "bf16"})
  plan = jaxfp4.plan_precision(report, bits_per_weight=5.0)
  bigger = nnx.Sequential(*mlp().layers, nnx.Linear(64, 8, rngs=nnx.Rngs(2)))
  with pytest.raises(ValueError, match=r"`plan` has no format for 1 linear layer\(s\) of the model: \['layers.3'\]"):
    jaxfp4.nnx.quantize_model(bigger, plan=plan)
  jaxfp4.nnx.quantize_model(bigger, plan=plan, skip="layers.3")  # skipping it is fine
  with pytest.raises(ValueError, match=r"`plan` names 1 layer\(s\) the model does not have"):
    jaxfp4.nnx.quantize_model(nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.relu,
                                             nnx.relu), plan=plan, skip=lambda p, l: False)
  with pytest.raises(ValueError, match=r"`plan` was made for layers.0 with 4096 weights; the model's has 8192"):
    jaxfp4.nnx.quantize_model(nnx.Sequential(nnx.Linear(64, 128, rngs=nnx.Rngs(0)), nnx.relu,
                                             nnx.Linear(64, 64, rngs=nnx.Rngs(1))), plan=plan)
  with pytest.raises(ValueError, match="`plan` must be a jaxfp4.PrecisionPlan"):
    jaxfp4.nnx.quantize_model(mlp(), plan={"layers.0": "nf4"})


# ---------------------------------------------------------------- CLI


def test_cli_plan(report, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    main(["plan", "--help"])
  assert e.value.code == 0 and "--bits" in capsys.readouterr().out
  report.save(tmp_path / "r.json")
  png, js = tmp_path / "plan.png", tmp_path / "plan.json"
  assert main(["plan", str(tmp_path / "r.json"), "--bits", "4.6", "--figure", str(png), "--json", str(js)]) == 0
  out = capsys.readouterr().out
  assert "chosen" in out and "layers.0" in out and "bits/weight (budget 4.6)" in out
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert jaxfp4.PrecisionPlan.load(js).bits_per_weight <= 4.6
  assert json.loads(js.read_text())["format"] == "jaxfp4.PrecisionPlan"
  with pytest.raises(SystemExit) as e:
    main(["plan", str(tmp_path / "r.json"), "--bits", "3.9"])
  assert e.value.code == 2 and "below the smallest plan" in capsys.readouterr().err


def test_docstring_examples_run():
  # calibrate's own example is plan_precision's first half; running both would only recompile.
  result = doctest.testmod(plan_module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


def test_plan_table_fits_the_width(report):
  plan = jaxfp4.plan_precision(report, bits_per_weight=4.6)
  keys = list(next(iter(plan.sensitivities.values())))
  wide = plan.table(width=1000)
  assert all(k in wide.splitlines()[0] for k in keys) and "do not fit" not in wide
  narrow = plan.table(width=60).splitlines()
  header = narrow[0].split()
  assert all(e.candidate in header for e in plan.entries)  # the chosen columns stay
  assert len(header) - 4 < len(keys) and "do not fit 60 columns" in narrow[-1]
  assert max(len(r) for r in narrow[:-1]) <= 60, narrow
