"""``ShardingPlan``: where every variable of an NNX model lives on a mesh.

A plan names, by regular expression on module paths, the linear layers that
are column parallel (split along output features) or row parallel (split
along input features, partial sums reduced), the mesh axis that does this
(tensor parallelism, Shoeybi et al. 2019, "Megatron-LM"), the axis that splits
the batch (data parallelism), and whether the parameters are also split over
the batch axis (FSDP / ZeRO-3, Rajbhandari et al. 2020). ``Dense4bit`` layers
get a :class:`WeightSharding` and their packed bytes are placed shard by
shard; every other variable gets a ``NamedSharding`` (the SPMD partitioner
handles their jnp code). LoRA adapters follow their layer; optimizer state
created from placed parameters follows the parameters.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxfp4._src.flax.graph import unique_variables
from jaxfp4._src.flax.nnx_dense import Dense4bit
from jaxfp4._src.sharding import layout

SPLITS = ("column", "row")


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  """How a model's layers are split over a mesh.

  Attributes:
    rules: ``(pattern, split)`` pairs; ``pattern`` is a regular expression
      searched in a layer's dotted path, ``split`` is ``"column"`` or ``"row"``.
      The first match wins; unmatched layers are not split by ``model_axis``.
    model_axis: the tensor-parallel mesh axis (None: no tensor parallelism).
    data_axis: the mesh axis splitting the batch (None: no data parallelism).
    fsdp: also split every parameter over ``data_axis`` (FSDP); each layer
      all-gathers its weights just before use.

  Example:
    >>> import jaxfp4.sharding
    >>> plan = jaxfp4.sharding.ShardingPlan(rules=((r"up$", "column"), (r"down$", "row")),
    ...                                     model_axis="tp")
  """

  rules: tuple[tuple[str, str], ...] = ()
  model_axis: str | None = None
  data_axis: str | None = None
  fsdp: bool = False

  def __post_init__(self):
    rules = tuple(tuple(r) for r in self.rules)
    for r in rules:
      if len(r) != 2 or not isinstance(r[0], str) or r[1] not in SPLITS:
        raise ValueError(f"`rules` entries must be (pattern, split) with split in {SPLITS}, got {r!r}.")
      re.compile(r[0])
    object.__setattr__(self, "rules", rules)
    if self.fsdp and self.data_axis is None:
      raise ValueError("`fsdp=True` needs a `data_axis` to split the parameters over.")
    if self.model_axis is not None and self.model_axis == self.data_axis:
      raise ValueError(f"`model_axis` and `data_axis` must differ, both are {self.model_axis!r}.")

  def split(self, path: str) -> str | None:
    """``"column"``, ``"row"`` or None for the layer at ``path``."""
    for pattern, split in self.rules:
      if re.search(pattern, path):
        return split
    return None

  def check_mesh(self, mesh: Mesh) -> None:
    if not isinstance(mesh, Mesh):
      raise ValueError(f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    for name in ("model_axis", "data_axis"):
      axis = getattr(self, name)
      if axis is not None and axis not in mesh.axis_names:
        raise ValueError(f"The plan's `{name}` {axis!r} is not an axis of the mesh {tuple(mesh.axis_names)}.")
    if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
      raise ValueError(
          "Model sharding plans need a mesh with AxisType.Auto axes (the SPMD partitioner places "
          "the model's jnp code); make it with jax.make_mesh(shape, names, "
          "axis_types=(jax.sharding.AxisType.Auto,) * len(names)).")

  def weight_sharding(self, path: str, mesh: Mesh, state) -> layout.WeightSharding:
    """The :class:`WeightSharding` of the 4-bit layer at ``path`` with ``state``.

    The tensor-parallel split is required (an error if it splits blocks); the
    FSDP split takes whichever dimension is left and divides into whole rows
    or blocks, and otherwise leaves the layer unsplit over the data axis.
    """
    split, tp, dp = self.split(path), self.model_axis, self.data_axis
    out_axis = tp if split == "column" and tp else None
    in_axis = tp if split == "row" and tp else None
    if self.fsdp:
      n, k = state.shape
      blocks = k // state.blocksize if k % state.blocksize == 0 else 0
      size = mesh.shape[dp]
      if out_axis is None and n % size == 0:
        out_axis = dp
      elif in_axis is None and blocks and blocks % size == 0:
        in_axis = dp
    return layout.WeightSharding(mesh, out_axis=out_axis, in_axis=in_axis, batch_axis=dp)

  def dense_spec(self, path: str, leaf: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec of a plain variable ``leaf`` (kernel, bias, lora_a, ...) of ``path``."""
    split, tp = self.split(path), self.model_axis
    fsdp = self.data_axis if self.fsdp else None
    if len(shape) == 0:
      return P()
    dims: tuple[str | None, ...]
    if leaf == "kernel" and len(shape) == 2:
      dims = {"column": (fsdp, tp), "row": (tp, fsdp)}.get(split or "", (fsdp, None))  # Flax: [in, out]
    elif leaf == "lora_a" and len(shape) == 2:  # A [in, r]: split like the layer's input
      dims = (tp if split == "row" else fsdp, None)
    elif leaf == "lora_b" and len(shape) == 2:  # B [r, out]: split like the layer's output
      dims = (None, tp if split == "column" else fsdp)
    elif leaf == "embedding" and len(shape) == 2:
      dims = (tp, fsdp)  # vocab over the model axis, for lookups and tied logits alike
    elif leaf == "bias" and split == "column":
      dims = (tp,)
    else:
      dims = (fsdp,) + (None,) * (len(shape) - 1) if len(shape) == 1 or fsdp else (None,) * len(shape)
    dims = tuple(d if d and shape[i] % mesh.shape[d] == 0 else None for i, d in enumerate(dims))
    return P(*dims)


def _walk(model: nnx.Module):
  """``(module_path, leaf, variable, owner)`` once per variable; owner is a Dense4bit or None."""
  owners = {".".join(map(str, path)): node for path, node in nnx.iter_graph(model)
            if isinstance(node, Dense4bit)}
  for module, leaf, var in unique_variables(model):
    yield module, leaf, var, owners.get(module)


def assign(model: nnx.Module, mesh: Mesh, plan: ShardingPlan) -> dict[int, Any]:
  """Sets each ``Dense4bit``'s ``sharding`` and returns ``{id(variable): target}``.

  A target is a ``NamedSharding``, or for a 4-bit layer's ``weight`` and
  ``quant_state`` its :class:`WeightSharding`. Works on abstract models
  (``nnx.eval_shape``), so loaders can place tensors as they read them.
  """
  plan.check_mesh(mesh)
  targets: dict[int, Any] = {}
  for module, leaf, var, owner in _walk(model):
    if owner is not None and leaf in ("weight", "quant_state"):
      state = owner.quant_state.get_value()
      try:
        ws = plan.weight_sharding(module, mesh, state)
        layout.check_shardable(state, ws)
      except ValueError as e:
        raise ValueError(f"Layer {module!r}: {e}") from None
      if owner.outliers is not None:
        raise ValueError(f"Layer {module!r} keeps outlier columns, which cannot be sharded.")
      owner.sharding = ws
      targets[id(var)] = ws
    elif owner is not None and leaf == "outliers":
      continue
    else:
      shape = tuple(getattr(var.get_value(), "shape", ()))  # also abstract (eval_shape) values
      targets[id(var)] = NamedSharding(mesh, plan.dense_spec(module, leaf, shape, mesh))
  return targets


def shard_model(model: nnx.Module, mesh: Mesh, plan: ShardingPlan) -> nnx.Module:
  """Places every variable of ``model`` on ``mesh`` as ``plan`` says, in place.

  Args:
    model: an NNX model (``Dense4bit`` layers are split with
      :func:`shard_4bit`; other variables are ``device_put``).
    mesh: a mesh with ``AxisType.Auto`` axes.
    plan: the :class:`ShardingPlan`.

  Returns:
    ``model``. Use it under ``nnx.jit`` as before; build optimizers after
    sharding so that their state is placed like the parameters.

  Example:
    >>> import jax
    >>> from flax import nnx
    >>> import jaxfp4.nnx, jaxfp4.sharding
    >>> mesh = jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> layer = jaxfp4.nnx.Dense4bit(128, 64, rngs=nnx.Rngs(0))
    >>> plan = jaxfp4.sharding.ShardingPlan(rules=((".*", "column"),), model_axis="tp")
    >>> _ = jaxfp4.sharding.shard_model(layer, mesh, plan)
  """
  targets = assign(model, mesh, plan)
  layers = {}
  for module, leaf, var, owner in _walk(model):
    target = targets.get(id(var))
    if isinstance(target, layout.WeightSharding):
      layers[id(owner)] = (owner, target)
    elif target is not None:
      var.set_value(jax.device_put(var.get_value(), target))
  for owner, ws in layers.values():
    packed, state = layout.shard_4bit(owner.weight.get_value(), owner.quant_state.get_value(), ws)
    owner.weight.set_value(packed)
    owner.quant_state.set_value(state)
  return model
