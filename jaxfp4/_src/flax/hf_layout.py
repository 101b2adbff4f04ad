"""Moving NNX variables to and from Hugging Face (PyTorch) tensor names.

Modules whose attribute paths mirror the PyTorch module names (as
``jaxfp4.models.llama`` does) map one to one:

| NNX variable                       | Hugging Face tensor                  |
|------------------------------------|--------------------------------------|
| ``P.kernel`` (``nnx.Linear``)      | ``P.weight``, transposed ([out, in]) |
| ``P.embedding`` (``nnx.Embed``)    | ``P.weight``                         |
| ``P.weight`` + ``P.quant_state``   | ``P.weight`` + its bitsandbytes group |
| ``P.weight`` / ``P.bias`` (others) | the same name                        |
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxfp4._src.flax.graph import unique_variables
from jaxfp4._src.flax.nnx_dense import Dense4bit, QuantizedWeight
from jaxfp4._src.io import checkpoint
from jaxfp4._src.flax.model_io import check_array_like, check_state_like
from jaxfp4._src.progress import bar as progress_bar
from jaxfp4._src.sharding import layout
from jaxfp4._src.sharding.layout import WeightSharding, saved_packed, shard_4bit, shard_host_4bit
from jaxfp4._src.state import QuantState

Quantizer = Callable[[str, np.ndarray], tuple[jax.Array, QuantState]]


def _entries(model: nnx.Module) -> Iterator[tuple[str, str, nnx.Variable]]:
  """Yields ``(kind, hf_key, variable)`` for every variable of ``model``."""
  for module, leaf, node in unique_variables(model):
    key = f"{module}.weight" if module else "weight"
    if isinstance(node, nnx.LoRAParam):
      yield "lora", f"{module}.{leaf}", node
    elif isinstance(node, QuantizedWeight) and leaf == "outliers":
      yield "outliers", f"{module}.{leaf}", node
    elif isinstance(node, QuantizedWeight):
      yield ("state" if leaf == "quant_state" else "packed"), key, node
    elif leaf == "kernel":
      yield "kernel", key, node
    elif leaf == "embedding":
      yield "array", key, node
    else:
      yield "array", f"{module}.{leaf}" if module else leaf, node


def load_hf_weights(
    model: nnx.Module,
    ckpt: checkpoint.Checkpoint,
    *,
    quantizer: Quantizer | None = None,
    ignore: Callable[[str], bool] = lambda key: False,
    progress: bool = False,
    targets: dict[int, Any] | None = None,
) -> nnx.Module:
  """Fills ``model`` (which may be abstract, from ``nnx.eval_shape``) from ``ckpt``, in place.

  4-bit layers take the checkpoint's bitsandbytes groups as they are; when the
  checkpoint holds a dense weight for a 4-bit layer, ``quantizer(key, W)``
  quantizes it. Other tensors are cast to the variable's dtype. Every
  variable must be found and every tensor used (unless ``ignore(key)``);
  otherwise ValueError names it. With ``targets`` (``{id(variable):
  NamedSharding | WeightSharding}`` from ``jaxfp4.sharding``'s plan), each
  tensor is read through a memory map and every device gets only its shard.
  """
  used: set[str] = set()
  entries = list(_entries(model))
  targets = targets or {}
  state_vars = {key: var for kind, key, var in entries if kind == "state"}
  for kind, key, var in progress_bar(entries, enabled=progress, desc="load", unit="tensor"):
    like = var.get_value()
    target = targets.get(id(var))
    if kind == "lora":
      raise ValueError(f"The model has LoRA adapters ({key!r}); load the base model first, then "
                       "add adapters with jaxfp4.nnx.add_lora.")
    if kind == "outliers":
      raise ValueError(f"The model keeps outlier columns ({key!r}), which Hugging Face "
                       "bitsandbytes checkpoints cannot hold; use jaxfp4.io.load_model.")
    if kind == "state" and isinstance(target, WeightSharding):
      continue  # placed together with its packed bytes
    if kind == "packed" and isinstance(target, WeightSharding):
      used.update(_load_sharded_4bit(ckpt, key, var, state_vars[key], target, quantizer))
      continue
    if kind in ("packed", "state"):
      if key not in ckpt:
        raise ValueError(f"{ckpt.path}: missing tensor {key!r}.")
      packed: Any
      if checkpoint.group_keys(key, ckpt.keys()):
        packed, state = ckpt.get_4bit(key)
      elif quantizer is not None:
        packed, state = quantizer(key, ckpt.get(key))
      else:
        raise ValueError(f"{ckpt.path}: {key!r} is not a 4-bit tensor group, but the model "
                         "expects one.")
      used.add(key)
      used.update(checkpoint.group_keys(key, ckpt.keys()))
      if kind == "state":
        check_state_like(key, state, like)
        var.set_value(state)
      else:
        check_array_like(key, np.asarray(packed), like)
        var.set_value(jnp.asarray(packed))
      continue
    if key not in ckpt:
      raise ValueError(f"{ckpt.path}: missing tensor {key!r}.")
    group = checkpoint.group_keys(key, ckpt.keys())
    if group:
      raise ValueError(f"{ckpt.path}: {key!r} has quant-state tensors {sorted(group)}, but the "
                       "model expects a dense tensor there (a 4-bit group needs its "
                       "quant_state.bitsandbytes__<type> blob).")
    # A memory map: a sharded variable reads only each device's slice of it.
    array = ckpt.view(key) if isinstance(target, NamedSharding) else ckpt.get(key)
    if kind == "kernel":
      if array.ndim != 2:
        raise ValueError(f"Tensor {key!r} must be 2-D [out, in], got shape {array.shape}.")
      array = array.T
    want = jnp.dtype(like.dtype)
    castable = checkpoint.is_float_dtype(array.dtype) and checkpoint.is_float_dtype(want)
    if array.dtype != want and not castable:
      raise ValueError(f"Tensor {key!r} has dtype {array.dtype}, the model expects {want}.")
    check_array_like(key, jax.ShapeDtypeStruct(array.shape, want), like)
    used.add(key)
    if isinstance(target, NamedSharding):
      # np.array copies each slice, so no device buffer ever aliases the file's memory map.
      def read(idx: Any, a: Any = array, dt: Any = want) -> np.ndarray:
        return np.array(a[idx], dt)
      var.set_value(jax.make_array_from_callback(array.shape, target, read))
    else:
      var.set_value(jnp.asarray(array, want))
  extra = sorted(k for k in set(ckpt.keys()) - used if not ignore(k))
  if extra:
    raise ValueError(f"{ckpt.path}: tensors the model does not have: {extra[:8]}"
                     f"{' ...' if len(extra) > 8 else ''}.")
  return model


def _load_sharded_4bit(ckpt, key: str, packed_var, state_var, ws: WeightSharding,
                       quantizer: Quantizer | None) -> set[str]:
  """Places one 4-bit layer shard by shard; returns the checkpoint keys it used."""
  like = state_var.get_value()
  if key not in ckpt:
    raise ValueError(f"{ckpt.path}: missing tensor {key!r}.")
  group = checkpoint.group_keys(key, ckpt.keys())
  try:
    if group:
      state = ckpt.get_quant_state(key)
      check_state_like(key, state, like)
      packed, state = shard_host_4bit(ckpt.view(key), state, ws)
    elif quantizer is not None:
      # A dense checkpoint quantized on load: the layer is quantized where it is read.
      packed, state = quantizer(key, ckpt.get(key))
      check_state_like(key, state, like)
      packed, state = shard_4bit(packed, state, ws)
    else:
      raise ValueError(f"{ckpt.path}: {key!r} is not a 4-bit tensor group, but the model "
                       "expects one.")
  except ValueError as e:
    if str(e).startswith(("Tensor", str(ckpt.path))):
      raise
    raise ValueError(f"Tensor {key!r}: {e}") from None
  packed_var.set_value(packed)
  state_var.set_value(state)
  return {key, *group}


def hf_tensors(model: nnx.Module, *, denest: bool = False) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``model``'s tensors under Hugging Face names, 4-bit layers as bitsandbytes groups.

  ``denest`` writes double-quantized absmax decoded to float32 (the same weights).
  """
  entries = list(_entries(model))
  states = {key: var.get_value() for kind, key, var in entries if kind == "state"}
  for kind, key, var in entries:
    value = var.get_value()
    if kind == "lora":
      raise ValueError(f"The model has LoRA adapters ({key!r}); fold them in with "
                       "jaxfp4.nnx.merge_lora first (Hugging Face checkpoints have no adapters).")
    if kind == "outliers":
      raise ValueError(f"The model keeps outlier columns ({key!r}), which bitsandbytes "
                       "checkpoints cannot hold; save it with jaxfp4.io.save_model.")
    if kind == "state":
      value = layout.denest(value) if denest else value
      yield from checkpoint.state_tensors(key, value)
    elif kind == "packed":
      yield key, saved_packed(value, states.get(key))
    elif kind == "kernel":
      yield key, np.ascontiguousarray(np.asarray(jax.device_get(value)).T)
    else:
      yield key, np.asarray(jax.device_get(value))


def quantized_layers(model: nnx.Module) -> list[str]:
  """Dotted paths of the model's ``Dense4bit`` layers."""
  return [".".join(str(p) for p in path) for path, node in nnx.iter_graph(model)
          if isinstance(node, Dense4bit)]


