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

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxfp4._src.flax.nnx_dense import Dense4bit, QuantizedWeight
from jaxfp4._src.io import checkpoint
from jaxfp4._src.io.model_io import check_array_like, check_state_like
from jaxfp4._src.state import QuantState

Quantizer = Callable[[str, np.ndarray], tuple[jax.Array, QuantState]]


def _entries(model: nnx.Module) -> Iterator[tuple[str, str, nnx.Variable]]:
  """Yields ``(kind, hf_key, variable)`` for every variable of ``model``."""
  seen = set()
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Variable) or isinstance(node, nnx.RngState) or id(node) in seen:
      continue
    seen.add(id(node))
    module, leaf = ".".join(str(p) for p in path[:-1]), str(path[-1])
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
    progress: bool = True,
) -> nnx.Module:
  """Fills ``model`` (which may be abstract, from ``nnx.eval_shape``) from ``ckpt``, in place.

  4-bit layers take the checkpoint's bitsandbytes groups as they are; when the
  checkpoint holds a dense weight for a 4-bit layer, ``quantizer(key, W)``
  quantizes it. Other tensors are cast to the variable's dtype. Every
  variable must be found and every tensor used (unless ``ignore(key)``);
  otherwise ValueError names it.
  """
  used: set[str] = set()
  entries = list(_entries(model))
  for kind, key, var in tqdm(entries, desc="load", unit="tensor", disable=not progress):
    like = var.get_value()
    if kind == "lora":
      raise ValueError(f"The model has LoRA adapters ({key!r}); load the base model first, then "
                       "add adapters with jaxfp4.nnx.add_lora.")
    if kind == "outliers":
      raise ValueError(f"The model keeps outlier columns ({key!r}), which Hugging Face "
                       "bitsandbytes checkpoints cannot hold; use jaxfp4.io.load_model.")
    if kind in ("packed", "state"):
      if key not in ckpt:
        raise ValueError(f"{ckpt.path}: missing tensor {key!r}.")
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
    array = ckpt.get(key)
    if kind == "kernel":
      if array.ndim != 2:
        raise ValueError(f"Tensor {key!r} must be 2-D [out, in], got shape {array.shape}.")
      array = array.T
    want = jnp.dtype(like.dtype)
    castable = checkpoint.is_float_dtype(array.dtype) and checkpoint.is_float_dtype(want)
    if array.dtype != want and not castable:
      raise ValueError(f"Tensor {key!r} has dtype {array.dtype}, the model expects {want}.")
    check_array_like(key, array.astype(want), like)
    used.add(key)
    var.set_value(jnp.asarray(array, want))
  extra = sorted(k for k in set(ckpt.keys()) - used if not ignore(k))
  if extra:
    raise ValueError(f"{ckpt.path}: tensors the model does not have: {extra[:8]}"
                     f"{' ...' if len(extra) > 8 else ''}.")
  return model


def hf_tensors(model: nnx.Module) -> Iterator[tuple[str, np.ndarray]]:
  """Yields ``model``'s tensors under Hugging Face names, 4-bit layers as bitsandbytes groups."""
  for kind, key, var in _entries(model):
    value = var.get_value()
    if kind == "lora":
      raise ValueError(f"The model has LoRA adapters ({key!r}); fold them in with "
                       "jaxfp4.nnx.merge_lora first (Hugging Face checkpoints have no adapters).")
    if kind == "outliers":
      raise ValueError(f"The model keeps outlier columns ({key!r}), which bitsandbytes "
                       "checkpoints cannot hold; save it with jaxfp4.io.save_model.")
    if kind == "state":
      yield from ((k, v) for k, v in checkpoint.tensor_group_4bit(key, np.zeros(0), value) if k != key)
    elif kind == "kernel":
      yield key, np.ascontiguousarray(np.asarray(jax.device_get(value)).T)
    else:
      yield key, np.asarray(jax.device_get(value))


def quantized_layers(model: nnx.Module) -> list[str]:
  """Dotted paths of the model's ``Dense4bit`` layers."""
  return [".".join(str(p) for p in path) for path, node in nnx.iter_graph(model)
          if isinstance(node, Dense4bit)]


