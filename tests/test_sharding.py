"""matmul_4bit on sharded 4-bit weights: equal to one device, kernels per shard, no weight gather."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxfp4
from jaxfp4._src.sharding.layout import row_view
from jaxfp4.sharding import WeightSharding, flat_view, shard_4bit
from tests.conftest import auto_mesh

# The kernels (Pallas: interpret mode on the CPU) and the jnp route.
IMPLS = ["pallas", "xla"]
# Two axes of the 8 virtual CPU devices; on a 2-GPU machine, each axis in turn.
MESHES = [(2, 4)] if jax.device_count() >= 8 else [(1, 2), (2, 1)]


def _weight(n=256, k=512, *, quant_type="nf4", nested=False, dtype=jnp.float32, seed=0):
  w = jax.random.normal(jax.random.key(seed), (n, k), jnp.float32).astype(dtype)
  return jaxfp4.quantize_4bit(w, quant_type=quant_type, compress_statistics=nested)


def _x(m=12, k=512, dtype=jnp.float32, seed=1):
  return jax.random.normal(jax.random.key(seed), (2, m // 2, k), jnp.float32).astype(dtype)


def _loss(x, packed, state, bias=None, sharding=None, implementation=None):
  # Linear in y: the output gradient is the same fixed array for every layout,
  # so gradients compare the backward products alone.
  y = jaxfp4.matmul_4bit(x, packed, state, bias=bias, sharding=sharding, implementation=implementation)
  r = jax.random.normal(jax.random.key(9), y.shape, jnp.float32)
  return jnp.sum(y.astype(jnp.float32) * r)


COLUMN_FORMATS = [("nf4", False), ("nf4", True), ("fp4", True), ("nvfp4", False), ("mxfp4", False)]
# The row slicing of packed bytes, absmax, nested groups and scale layouts is the same
# code for both implementations (sharding/layout.py; `implementation` only picks the
# per-shard product), so the jnp route checks it for every format. The interpreted
# kernels (slow on the CPU) run the two most different states there: nested NF4 (state2
# groups sliced per shard) and NVFP4 (FP8 scales + a global scale). The Pallas product
# of every format on its own is in tests/test_matmul.py::test_forward_and_input_gradient;
# on a GPU, where the kernels compile, every format runs both routes here.
COLUMN_CASES = ([(qt, nested, impl) for qt, nested in COLUMN_FORMATS for impl in IMPLS]
                if jax.default_backend() == "gpu" else
                [(qt, nested, "xla") for qt, nested in COLUMN_FORMATS]
                + [("nf4", True, "pallas"), ("nvfp4", False, "pallas")])


@pytest.mark.parametrize("quant_type,nested,implementation", COLUMN_CASES)
@pytest.mark.parametrize("tp", [4] if jax.device_count() >= 8 else [2])
def test_column_parallel_output_is_bit_identical_to_one_device(quant_type, nested, implementation, tp):
  mesh = auto_mesh((tp,), ("tp",))
  bs = _weight(n=8, k=256, quant_type=quant_type)[1].blocksize
  packed, state = _weight(n=256, k=8 * bs, quant_type=quant_type, nested=nested)
  x = _x(k=8 * bs)
  bias = jax.random.normal(jax.random.key(5), (256,), jnp.float32)
  ref = jaxfp4.matmul_4bit(x, packed, state, bias=bias, implementation=implementation)
  ws = WeightSharding(mesh, out_axis="tp")
  sp, ss = shard_4bit(packed, state, ws)
  # >= 64 rows x 8 blocks per shard = 512 absmax codes: whole 256-entry nested groups.
  assert ss.nested == nested
  y = jax.jit(lambda x, p, s: jaxfp4.matmul_4bit(x, p, s, bias=bias, sharding=ws,
                                                 implementation=implementation))(x, sp, ss)
  # Each device's columns are bit-identical to the same product on one device with that
  # device's rows of the weight (sliced by hand from the unsharded arrays) ...
  rows = 256 // tp
  full_p, full_s = row_view(packed, state)
  # Jitted once for the tp same-shaped shards (the unsharded `ref` above stays eager):
  # an eager interpreted kernel is traced again on every call.
  one_device = jax.jit(lambda x, p, s, b: jaxfp4.matmul_4bit(x, p, s, bias=b,
                                                             implementation=implementation))
  for i in range(tp):
    part = slice(i * rows, (i + 1) * rows)
    s2 = full_s.state2
    if s2 is not None:
      groups = rows * 8 // s2.blocksize
      s2 = dataclasses.replace(s2, absmax=s2.absmax[i * groups:(i + 1) * groups])
    local = dataclasses.replace(full_s, shape=(rows, 8 * bs), absmax=full_s.absmax[part].reshape(-1),
                                state2=s2)
    want = one_device(x, full_p[part].reshape(-1), local, bias[part])
    np.testing.assert_array_equal(np.asarray(y[..., part]), np.asarray(want))
  # ... and equal to the whole product up to the kernels' shape-dependent launch configs
  # (on the CPU, exactly; measured on the H200 7.6e-6 of outputs up to 31).
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=0,
                             atol=1e-6 * float(jnp.max(jnp.abs(ref))))
  if jax.default_backend() == "cpu":
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))


AXES = [dict(in_axis="tp"), dict(out_axis="tp"), dict(out_axis="data", in_axis="tp"),
        dict(out_axis="tp", batch_axis="data"), dict(out_axis="data", batch_axis="data"),
        dict(in_axis="tp", out_axis="data", batch_axis="data")]
F32, BF16 = (jnp.float32, 2e-6), (jnp.bfloat16, 1.6e-2)
# Every split in float32 with both implementations and in bfloat16 with jnp; the
# interpreted kernels (slow on the CPU) in bfloat16 for the two splits that reduce.
# The split itself (specs, FSDP gather, partial sums) is the same code for both
# implementations (sharding/matmul.py hands `implementation` to the per-shard product
# only), so on the CPU the interpreted kernels run in float32 only on the splits whose
# shards they see differently: AXES[2] (N and K both split: a one-block-per-row shard)
# and AXES[5] (FSDP gather + K split + batch split). With the two bfloat16 cases the
# per-shard kernel still meets what AXES[0], [1], [3] and [4] give it (a K split, an N
# split, a batch split, an FSDP-gathered weight), forward and backward; Pallas column
# shards are also checked bit for bit by test_column_parallel_output_... above.
PALLAS_F32 = range(len(AXES)) if jax.default_backend() == "gpu" else (2, 5)
CASES = ([(a, F32, i) for j, a in enumerate(AXES) for i in IMPLS if i == "xla" or j in PALLAS_F32]
         + [(a, BF16, "xla") for a in AXES]
         + [(AXES[0], BF16, "pallas"), (AXES[5], BF16, "pallas")])


@pytest.mark.parametrize("mesh_shape", MESHES)
@pytest.mark.parametrize("axes,numerics,implementation", CASES)
def test_sharded_products_and_gradients_match_one_device(axes, numerics, implementation, mesh_shape):
  dtype, rtol = numerics
  mesh = auto_mesh(mesh_shape, ("data", "tp"))
  packed, state = _weight(n=128, k=256, nested=True, dtype=dtype)  # 4 blocks per row
  x = _x(m=8, k=256, dtype=dtype)
  bias = jax.random.normal(jax.random.key(5), (128,), jnp.float32).astype(dtype)
  ws = WeightSharding(mesh, **axes)
  sp, ss = shard_4bit(packed, state, ws)
  y_ref = jaxfp4.matmul_4bit(x, packed, state, bias=bias, implementation=implementation)
  y = jax.jit(lambda x, b, p, s: jaxfp4.matmul_4bit(x, p, s, bias=b, sharding=ws,
                                                    implementation=implementation))(x, bias, sp, ss)
  scale = float(jnp.max(jnp.abs(y_ref.astype(jnp.float32))))
  # Row-parallel partial sums are added in another order (and, in bfloat16, each
  # partial is rounded once more). Measured over these splits on 8 CPU devices (jnp
  # route), relative to the largest value: outputs 5.3e-7 (float32) and 4.4e-3
  # (bfloat16), input gradients 4.0e-7 and 6.6e-3.
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=0,
                             atol=rtol * scale)
  grad = jax.grad(_loss, argnums=(0, 3))
  gx_ref, gb_ref = grad(x, packed, state, bias, None, implementation)
  gx, gb = jax.jit(lambda x, b, p, s: grad(x, p, s, b, ws, implementation))(x, bias, sp, ss)
  gscale = float(jnp.max(jnp.abs(gx_ref.astype(jnp.float32))))
  np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(gx_ref, np.float32), rtol=0,
                             atol=rtol * gscale)
  np.testing.assert_allclose(np.asarray(gb, np.float32), np.asarray(gb_ref, np.float32), rtol=0,
                             atol=rtol * float(jnp.max(jnp.abs(gb_ref.astype(jnp.float32)))))


def _collectives(hlo: str) -> list[str]:
  return [l.strip() for l in hlo.splitlines()
          if re.search(r"= \S+ (all-gather|all-reduce|reduce-scatter|all-to-all)\(", l)]


def test_tensor_parallel_hlo_moves_activations_only():
  mesh = auto_mesh((4,), ("tp",))
  packed, state = _weight(nested=True)
  x = _x()
  for axes, want in ((dict(out_axis="tp"), set()), (dict(in_axis="tp"), {"all-reduce"})):
    ws = WeightSharding(mesh, **axes)
    sp, ss = shard_4bit(packed, state, ws)
    fwd = jax.jit(lambda x, p, s: jaxfp4.matmul_4bit(x, p, s, sharding=ws))
    bwd = jax.jit(jax.grad(lambda x, p, s: _loss(x, p, s, sharding=ws)))
    for fn in (fwd, bwd):
      ops = _collectives(fn.lower(x, sp, ss).compile().as_text())
      assert not [o for o in ops if "all-gather" in o], ops
      # Whatever is reduced is an activation [rows, features] in float32, never the weight.
      for o in ops:
        assert re.search(r"= f32\[(12,(256|512)|6,(256|512))\]", o) or "f32[1" in o, o
    if not axes.get("in_axis"):
      assert not _collectives(fwd.lower(x, sp, ss).compile().as_text())


def test_fsdp_gathers_packed_bytes_not_a_widened_weight():
  mesh = auto_mesh((4,), ("data",))
  packed, state = _weight()
  ws = WeightSharding(mesh, out_axis="data", batch_axis="data")
  sp, ss = shard_4bit(packed, state, ws)
  hlo = jax.jit(lambda x, p, s: jaxfp4.matmul_4bit(x, p, s, sharding=ws)).lower(_x(), sp, ss).compile().as_text()
  gathers = [o for o in _collectives(hlo) if "all-gather" in o]
  # The packed uint8 bytes [256, 256] and the float32 absmax [256, 8] are gathered ...
  assert any(re.match(r"%\S+ = u8\[256,256\]", o) for o in gathers), gathers
  assert any(re.match(r"%\S+ = f32\[256,8\]", o) for o in gathers), gathers
  # ... and never a decoded weight (256 x 512 floats in any shape).
  for o in gathers:
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", o.split("all-gather(")[0]):
      numel = int(np.prod([int(d) for d in dims.split(",") if d]))
      assert dtype == "u8" or numel < 256 * 512, o


def test_shard_4bit_puts_only_its_shard_on_each_device():
  mesh = auto_mesh((2, 4), ("data", "tp"))
  packed, state = _weight(nested=True)
  ws = WeightSharding(mesh, out_axis="data", in_axis="tp")
  sp, ss = shard_4bit(packed, state, ws)
  assert sp.shape == (256, 256) and sp.dtype == jnp.uint8 and ss.absmax.shape == (256, 8)
  assert {s.data.shape for s in sp.addressable_shards} == {(128, 64)}
  assert {s.data.shape for s in ss.absmax.addressable_shards} == {(128, 2)}
  # Row-parallel shards cut across nested groups: stored as the float32 absmax they decode to.
  assert not ss.nested and ss.absmax.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(jaxfp4.dequantize_4bit(sp, ss)),
                                np.asarray(jaxfp4.dequantize_4bit(packed, state)))
  fp, fs = flat_view(sp, ss)
  assert fp.shape == (256 * 512 // 2, 1) and fs.absmax.shape == (256 * 8,)
  np.testing.assert_array_equal(np.asarray(fp), np.asarray(packed))


def test_explicit_axes_mesh_is_resharded_for_the_kernels():
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices")
  mesh = jax.make_mesh((2,), ("tp",), axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:2])
  packed, state = _weight()
  x = _x()
  for axes in (dict(out_axis="tp"), dict(in_axis="tp")):
    ws = WeightSharding(mesh, **axes)
    sp, ss = shard_4bit(packed, state, ws)
    y = jax.jit(lambda x, p, s: jaxfp4.matmul_4bit(x, p, s, sharding=ws))(x, sp, ss)
    np.testing.assert_allclose(np.asarray(y), np.asarray(jaxfp4.matmul_4bit(x, packed, state)),
                               rtol=0, atol=2e-6 * float(jnp.max(jnp.abs(y))))


def test_bad_shardings_raise_errors_that_name_the_problem():
  mesh = auto_mesh((2, 4), ("data", "tp"))
  packed, state = _weight(n=96, k=192)  # 3 blocks per row
  with pytest.raises(ValueError, match=r"`in_axis` \('tp',\) splits the weight's K=192 .* splits its blocksize-64 blocks"):
    shard_4bit(packed, state, WeightSharding(mesh, in_axis="tp"))
  with pytest.raises(ValueError, match=r"`out_axis` \('tp',\) splits the weight's N=98 .* multiple of 4"):
    shard_4bit(*_weight(n=98, k=128), WeightSharding(mesh, out_axis="tp"))
  with pytest.raises(ValueError, match=r"K=100 is not a multiple of its blocksize=64: blocks straddle rows"):
    shard_4bit(*_weight(n=8, k=100), WeightSharding(mesh, out_axis="data"))
  with pytest.raises(ValueError, match=r"`out_axis` names mesh axis 'model', but the mesh's axes are \('data', 'tp'\)"):
    WeightSharding(mesh, out_axis="model")
  with pytest.raises(ValueError, match=r"share a mesh axis"):
    WeightSharding(mesh, out_axis="tp", in_axis="tp")
  packed, state = _weight()
  ws = WeightSharding(mesh, out_axis="tp")
  with pytest.raises(ValueError, match=r"must be in the row view.*shard_4bit"):
    jaxfp4.matmul_4bit(_x(), packed, state, sharding=ws)
  # Bytes placed by hand with a split that is not the plan's: an error, not a silent gather.
  sp, ss = shard_4bit(packed, state, ws)
  wrong = jax.device_put(sp, NamedSharding(mesh, P(None, "tp")))
  with pytest.raises(ValueError, match=r"`packed` is placed with .* but the WeightSharding needs"):
    jaxfp4.matmul_4bit(_x(), wrong, ss, sharding=ws)
  # A nested state whose groups a row split would cut, not stored by shard_4bit.
  np_, ns = _weight(nested=True)
  rp, rs = row_view(np_, ns)
  with pytest.raises(ValueError, match=r"256-entry absmax groups split"):
    jaxfp4.matmul_4bit(_x(), rp, rs, sharding=WeightSharding(mesh, in_axis="tp"))
  with pytest.raises(ValueError, match=r"`batch_axis` \('data',\) splits the 3 input rows"):
    jaxfp4.matmul_4bit(jnp.ones((3, 512)), sp, ss, sharding=WeightSharding(mesh, out_axis="tp",
                                                                           batch_axis="data"))
  outliers = jaxfp4.quantize_4bit_with_outliers(jnp.ones((256, 512)), num_columns=4)[2]
  with pytest.raises(ValueError, match=r"`outliers` cannot be combined with `sharding`"):
    jaxfp4.matmul_4bit(_x(), sp, ss, sharding=ws, outliers=outliers)
  with pytest.raises(ValueError, match=r"partly a batch axis"):
    WeightSharding(mesh, out_axis=("data", "tp"), batch_axis="data")


@pytest.mark.parametrize("name", ["jaxfp4.sharding", "jaxfp4._src.sharding.layout",
                                  "jaxfp4._src.sharding.plan", "jaxfp4._src.models.llama.parallel"])
def test_docstring_examples_run(name):
  import doctest
  import importlib
  result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


def test_layers_run_sharded_with_a_plan_or_a_sharding_attribute():
  from flax import nnx

  import jaxfp4.linen
  import jaxfp4.nnx
  from jaxfp4.sharding import ShardingPlan, shard_model

  mesh = auto_mesh((2, 2), ("data", "tp"))
  x = jax.random.normal(jax.random.key(3), (4, 128), jnp.float32)

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.up = jaxfp4.nnx.Dense4bit(128, 256, lora_rank=4, rngs=rngs)
      self.down = jaxfp4.nnx.Dense4bit(256, 128, lora_rank=4, rngs=rngs)

    def __call__(self, x):
      return self.down(jax.nn.relu(self.up(x)))

  ref = MLP(nnx.Rngs(0))
  for layer in (ref.up, ref.down):
    layer.lora_b.set_value(jnp.full(layer.lora_b.shape, 0.01))
  want = ref(x)
  plan = ShardingPlan(rules=((r"up$", "column"), (r"down$", "row")), model_axis="tp", data_axis="data")
  model = shard_model(ref, mesh, plan)
  assert model.up.sharding.out_axis == ("tp",) and model.down.sharding.in_axis == ("tp",)
  assert model.up.lora_b.get_value().sharding.spec == P(None, "tp")
  assert model.down.lora_a.get_value().sharding.spec == P("tp", None)
  got = nnx.jit(lambda m, x: m(x))(model, jax.device_put(x, NamedSharding(mesh, P("data"))))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                             atol=2e-6 * float(jnp.max(jnp.abs(want))))

  ws = WeightSharding(mesh, out_axis="tp", batch_axis="data")
  variables = jaxfp4.linen.Dense4bit(256, sharding=ws).init(jax.random.key(0), x)
  packed = variables["quantized"]["weight"]
  assert packed.shape == (256, 64) and packed.sharding.spec == P("tp", None)
  y = jax.jit(jaxfp4.linen.Dense4bit(256, sharding=ws).apply)(variables, x)
  plain = {"params": variables["params"],
           "quantized": dict(zip(("weight", "quant_state"), flat_view(packed, variables["quantized"]["quant_state"])))}
  np.testing.assert_array_equal(np.asarray(y), np.asarray(jaxfp4.linen.Dense4bit(256).apply(plain, x)))
