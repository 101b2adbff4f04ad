"""A whole QLoRA training step of the Llama: jit-compiled, adapters only, no dense weight copy kept."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxfp4.nnx
from jaxfp4.models import llama


def _model(remat: bool = False):
  cfg = llama.LlamaConfig.tiny()
  model = llama.LlamaForCausalLM(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0),
                                 remat=remat)
  jaxfp4.nnx.quantize_model(model, quant_type="nf4", compress_statistics=True, skip="lm_head",
                            lora_rank=4, rngs=nnx.Rngs(1))
  return model


def _loss(model, ids):
  logits, _ = model(ids[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def test_qlora_step_under_nnx_jit_trains_only_the_adapters():
  model = _model()
  frozen = jax.tree.map(np.asarray, nnx.state(model, jaxfp4.nnx.QuantizedWeight))
  not_lora = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))  # LoRAParam subclasses Param
  dense = jax.tree.map(np.asarray, nnx.state(model, not_lora))
  lora0 = jax.tree.map(np.asarray, nnx.state(model, nnx.LoRAParam))
  # optax's bias correction mixes int32 and float32, which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    opt = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.LoRAParam)

    @nnx.jit
    def step(model, opt, ids):
      loss, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, ids)
      opt.update(model, grads)
      return loss

    ids = jax.random.randint(jax.random.key(0), (2, 17), 0, 512)
    losses = [float(step(model, opt, ids)) for _ in range(8)]
  assert losses[-1] < losses[0] - 0.05, losses
  for a, b in zip(jax.tree_util.tree_leaves(frozen),
                  jax.tree_util.tree_leaves(nnx.state(model, jaxfp4.nnx.QuantizedWeight)), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))
  # Params that are not adapters (embedding, norms, lm_head) are untouched; adapters moved.
  for a, b in zip(jax.tree_util.tree_leaves(dense),
                  jax.tree_util.tree_leaves(nnx.state(model, not_lora)), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))
  moved = [not np.array_equal(a, np.asarray(b)) for a, b in zip(
      jax.tree_util.tree_leaves(lora0), jax.tree_util.tree_leaves(nnx.state(model, nnx.LoRAParam)),
      strict=True)]
  assert all(moved) and len(moved) == 2 * 7 * 2  # A and B of q/k/v/o/gate/up/down, 2 layers


def test_compiled_step_carries_only_packed_weights_adapters_and_optimizer_state():
  """Between steps the state is the 4-bit weights, adapters and AdamW moments: no dense copy."""
  model = _model()
  with jax.numpy_dtype_promotion("standard"):
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.LoRAParam)
    graphdef, state = nnx.split((model, opt))

    def step(state, ids):
      m, o = nnx.merge(graphdef, state)
      loss, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(m, ids)
      o.update(m, grads)
      return nnx.state((m, o)), loss

    ids = jnp.zeros((1, 17), jnp.int32)
    stats = jax.jit(step, donate_argnums=0).lower(state, ids).compile().memory_analysis()
  linear = [n for _, n in nnx.iter_graph(model) if isinstance(n, jaxfp4.nnx.Dense4bit)]
  dense_copy = sum(4 * l.in_features * l.out_features for l in linear)  # float32 W for every layer
  packed = sum(l.nbytes() for l in linear)
  assert packed < dense_copy / 6
  # The arguments are exactly the state (plus the token ids) and all of it is aliased
  # into the outputs, so nothing dense is carried from one step to the next.
  assert stats.argument_size_in_bytes == _nbytes(state) + ids.nbytes
  assert stats.alias_size_in_bytes == _nbytes(state)
  assert stats.output_size_in_bytes - stats.alias_size_in_bytes < 4096


def test_remat_gives_the_same_loss_and_adapter_gradients():
  ids = jax.random.randint(jax.random.key(3), (2, 17), 0, 512)
  grads = []
  for remat in (False, True):
    model = _model(remat)
    nnx.update(model, jax.tree.map(lambda v: v + 0.01, nnx.state(model, nnx.LoRAParam)))

    @nnx.jit
    def loss_and_grad(model, ids):
      return nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, ids)

    grads.append(loss_and_grad(model, ids))
  (l0, g0), (l1, g1) = grads
  # Recomputation runs the same float32 math, but XLA fuses it differently.
  assert abs(float(l0) - float(l1)) <= 4 * 2.0 ** -24 * abs(float(l0))
  worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(a))))
              for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1), strict=True))
  assert worst <= 4e-6  # measured 1.3e-6 (max |diff| / max |grad| per leaf)
  assert any(np.any(np.asarray(a) != 0) for a in jax.tree_util.tree_leaves(g0))
