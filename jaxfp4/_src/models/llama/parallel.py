"""Sharding plans for the Llama: tensor parallel decoding and FSDP QLoRA training.

Tensor parallelism follows Megatron-LM (Shoeybi et al. 2019, §3): the query,
key, value, gate and up projections are column parallel, so each device owns
whole attention heads and a slice of the MLP's hidden units; the output and
down projections are row parallel, and one reduction per block joins the
partial sums. The embedding table is split along the vocabulary.

FSDP (Rajbhandari et al. 2020, ZeRO stage 3) splits the batch and every
parameter over the data axis: the 4-bit weights, the LoRA adapters and so
their optimizer state. Each layer all-gathers its packed 4-bit bytes just
before use (a quarter of what a bf16 FSDP gather moves); adapter gradients
come back reduce-scattered by the partitioner.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxfp4._src.models.decoder.config import DecoderConfig
from jaxfp4._src.sharding.plan import ShardingPlan, shard_model

COLUMN = r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj)$"
ROW = r"\.(o_proj|down_proj)$"


def tensor_parallel_plan(*, axis: str = "tp", data_axis: str | None = None) -> ShardingPlan:
  """The Megatron split of a Llama over ``axis`` (and the batch over ``data_axis``).

  Args:
    axis: the tensor-parallel mesh axis.
    data_axis: an optional mesh axis that splits the batch (data parallelism
      beside tensor parallelism).

  Returns:
    A :class:`jaxfp4.sharding.ShardingPlan`.

  Example:
    >>> from jaxfp4.models import llama
    >>> plan = llama.tensor_parallel_plan(axis="tp")
    >>> plan.split("model.layers.0.mlp.down_proj")
    'row'
  """
  return ShardingPlan(rules=((COLUMN, "column"), (ROW, "row"), (r"^lm_head$", "column")),
                      model_axis=axis, data_axis=data_axis)


def fsdp_plan(*, axis: str = "data", model_axis: str | None = None) -> ShardingPlan:
  """Fully sharded data parallelism over ``axis`` (optionally with tensor parallelism).

  Args:
    axis: the mesh axis that splits the batch and every parameter.
    model_axis: an optional tensor-parallel axis (the Megatron split on top).

  Returns:
    A :class:`jaxfp4.sharding.ShardingPlan` with ``fsdp=True``.

  Example:
    >>> from jaxfp4.models import llama
    >>> llama.fsdp_plan(axis="data").fsdp
    True
  """
  rules = ((COLUMN, "column"), (ROW, "row"), (r"^lm_head$", "column")) if model_axis else ()
  return ShardingPlan(rules=rules, model_axis=model_axis, data_axis=axis, fsdp=True)


def check_plan(config: DecoderConfig, mesh: Mesh, plan: ShardingPlan) -> None:
  """Raises ValueError when the tensor-parallel axis does not divide the heads."""
  plan.check_mesh(mesh)
  if plan.model_axis is None:
    return
  tp = mesh.shape[plan.model_axis]
  for name in ("num_attention_heads", "num_key_value_heads"):
    heads = getattr(config, name)
    if heads % tp:
      raise ValueError(f"The mesh axis {plan.model_axis!r} has {tp} devices, which does not divide "
                       f"the model's {name}={heads}; each device must own whole heads.")


def shard_llama(model: nnx.Module, mesh: Mesh, plan: ShardingPlan) -> nnx.Module:
  """Places a :class:`LlamaForCausalLM` on ``mesh`` with ``plan``, in place.

  Args:
    model: the Llama (4-bit layers from ``from_pretrained`` or ``quantize_model``).
    mesh: a mesh with ``AxisType.Auto`` axes.
    plan: from :func:`tensor_parallel_plan` or :func:`fsdp_plan`.

  Returns:
    ``model``.
  """
  check_plan(getattr(model, "config"), mesh, plan)  # a DecoderForCausalLM's config
  return shard_model(model, mesh, plan)


def qlora_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
  """An ``nnx.Optimizer`` over the model's LoRA adapters only.

  Built after :func:`shard_llama`, its moment estimates are created from the
  placed adapters and so are split exactly like them (FSDP's sharded optimizer
  state).
  """
  return nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)


def batch_sharding(mesh: Mesh, plan: ShardingPlan) -> NamedSharding:
  """Where a ``[batch, seq]`` token array goes: rows split over the plan's data axis."""
  return NamedSharding(mesh, P(plan.data_axis))


def causal_lm_loss(model: nnx.Module, input_ids: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy (float32) of ``input_ids [B, T + 1]``."""
  logits, _ = model(input_ids[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1))


def make_qlora_step(model: nnx.Module, optimizer: nnx.Optimizer) -> Callable[[jax.Array], jax.Array]:
  """A jitted QLoRA step for ``model`` and ``optimizer``, which it updates in place.

  The step computes the loss, the gradient of the LoRA adapters and the
  optimizer update in one compiled program. Every variable comes out placed
  exactly as it went in (``out_shardings``), so repeated steps reuse one
  compilation and the model and optimizer state are donated, not copied.

  With a model placed by :func:`shard_llama` (e.g. :func:`fsdp_plan`), an
  optimizer from :func:`qlora_optimizer` built after it, and ``input_ids``
  placed with :func:`batch_sharding`, each device computes its rows of the
  batch, the partitioner reduce-scatters the adapter gradients, and each
  device updates its shard of the adapters and of the optimizer state.

  Args:
    model: the Llama with LoRA adapters (``jaxfp4.nnx.add_lora``).
    optimizer: over ``nnx.LoRAParam`` (:func:`qlora_optimizer`).

  Returns:
    ``step(input_ids) -> loss``: ``input_ids`` is int ``[batch, seq + 1]`` (the
    model reads ``[:, :-1]`` and predicts ``[:, 1:]``); the loss is the mean
    before the update.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> from jaxfp4.models import llama
    >>> config = llama.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
    ...                            num_hidden_layers=1, num_attention_heads=2)
    >>> model = llama.LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    >>> _ = jaxfp4.nnx.quantize_model(model, quant_type="nf4", lora_rank=4, rngs=nnx.Rngs(1))
    >>> step = llama.make_qlora_step(model, llama.qlora_optimizer(model, optax.adamw(1e-3)))
    >>> loss = step(jnp.ones((2, 9), jnp.int32))   # on a mesh: place ids with batch_sharding
    >>> loss.shape
    ()
  """
  graphdef, state = nnx.split((model, optimizer))
  meshes = {a.sharding.mesh for a in jax.tree.leaves(state)
            if isinstance(a, jax.Array) and isinstance(a.sharding, NamedSharding)}
  if len(meshes) > 1:
    raise ValueError("The model and optimizer live on more than one mesh; place them with one plan.")
  mesh = meshes.pop() if meshes else None
  # Leaves created after sharding (the optimizer's step count) sit on one device:
  # replicate them over the mesh. Committing every leaf where it is makes the first
  # step's inputs look like every later step's, so the step compiles once.
  state = jax.tree.map(lambda a: jax.device_put(a, a.sharding if mesh is None or isinstance(
      a.sharding, NamedSharding) else NamedSharding(mesh, P())), state)
  nnx.update((model, optimizer), state)
  placed = jax.tree.map(lambda a: a.sharding, state)

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=(placed, None))
  def train(state, input_ids):
    m, o = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(causal_lm_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(
        m, input_ids)
    # optax's bias correction mixes int32 and float32, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
      o.update(m, grads)
    return nnx.state((m, o)), loss

  def step(input_ids: jax.Array) -> jax.Array:
    new_state, loss = train(nnx.state((model, optimizer)), input_ids)
    nnx.update((model, optimizer), new_state)
    return loss

  return step
