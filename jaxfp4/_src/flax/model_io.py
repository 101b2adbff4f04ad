"""Save and restore an NNX model, 4-bit weights and LoRA adapters included.

The file is a plain safetensors file whose keys are the model's dotted variable
paths. A ``Dense4bit`` at ``P`` is written as bitsandbytes writes a
``Linear4bit`` (``P.weight`` plus its quant-state group, bnb_format.md §5), so
tools that read bitsandbytes groups read these too. Random-number state
(``nnx.RngState``) is not saved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.flax.graph import unique_variables
from jaxfp4._src.flax.nnx_dense import QuantizedWeight
from jaxfp4._src.io import checkpoint
from jaxfp4._src.io.safetensors import write_safetensors
from jaxfp4._src.progress import bar as progress_bar
from jaxfp4._src.outlier_columns import OutlierColumns, check_outliers
from jaxfp4._src.sharding.layout import saved_packed
from jaxfp4._src.state import QuantState
from jaxfp4._src.version import __version__

FORMAT = "jaxfp4"


def _entries(model: nnx.Module) -> dict[str, tuple[str, str, nnx.Variable]]:
  """Maps each variable to ``(kind, key, variable)``; a 4-bit (weight, quant_state) pair shares ``P.weight``."""
  out: dict[str, tuple[str, str, nnx.Variable]] = {}
  for module, leaf, var in unique_variables(model):
    name = f"{module}.{leaf}" if module else leaf
    value = var.get_value()
    if isinstance(var, QuantizedWeight) and isinstance(value, QuantState):
      parent = name.rsplit(".", 1)[0] if "." in name else ""
      out[name] = ("state", f"{parent}.weight" if parent else "weight", var)
    elif isinstance(value, OutlierColumns):
      out[name] = ("outliers", name, var)
    else:
      out[name] = ("array", name, var)
  return out


def save_model(path: str | os.PathLike, model: nnx.Module, *,
               metadata: Mapping[str, str] | None = None, progress: bool = False) -> Path:
  """Writes every variable of ``model`` to a new safetensors file.

  Args:
    path: the new file (never overwritten).
    model: an NNX module, e.g. a ``jaxfp4.models.llama`` model with LoRA.
    metadata: extra string metadata.
    progress: show a progress bar.

  Returns:
    The path written.

  Example:
    >>> import tempfile
    >>> from flax import nnx
    >>> import jaxfp4.io, jaxfp4.nnx
    >>> model = jaxfp4.nnx.Dense4bit(64, 32, lora_rank=4, rngs=nnx.Rngs(0))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = jaxfp4.io.save_model(tmp.name + "/adapted.safetensors", model, progress=False)
    >>> skeleton = nnx.eval_shape(lambda: jaxfp4.nnx.Dense4bit(64, 32, lora_rank=4, rngs=nnx.Rngs(1)))
    >>> loaded = jaxfp4.io.load_model(path, skeleton, progress=False)
    >>> bool((loaded.lora_a.get_value() == model.lora_a.get_value()).all())
    True
    >>> tmp.cleanup()
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  entries = _entries(model)

  def tensors():
    for kind, key, var in progress_bar(entries.values(), enabled=progress, desc="save", unit="var"):
      value = var.get_value()
      if kind == "state":
        yield from checkpoint.state_tensors(key, value)
      elif kind == "outliers":
        yield key + ".index", np.asarray(jax.device_get(value.index))
        yield key + ".values", np.asarray(jax.device_get(value.values))
      elif isinstance(var, QuantizedWeight):  # packed bytes, maybe in a sharded row view
        state = entries.get(key.rsplit(".", 1)[0] + ".quant_state" if "." in key else "quant_state")
        yield key, saved_packed(value, None if state is None else state[2].get_value())
      else:
        yield key, np.asarray(jax.device_get(value))

  meta = {"format": FORMAT, "jaxfp4_version": __version__,
          "variables": json.dumps({key: type(var).__name__ for kind, key, var in entries.values()
                                   if kind == "array"})}
  meta.update(metadata or {})
  return write_safetensors(path, tensors(), metadata=meta)


def load_model(path: str | os.PathLike, model: nnx.Module, *, progress: bool = False) -> nnx.Module:
  """Restores ``model``'s variables from a file written by :func:`save_model`, in place.

  ``model`` supplies the structure (build it as you did before saving, or with
  ``nnx.eval_shape`` to avoid initializing). Every variable must be in the
  file with the same shape and dtype, and the file may hold nothing else;
  otherwise ValueError names the tensor.

  Returns:
    ``model``.
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  with checkpoint.Checkpoint(path) as ckpt:
    used: set[str] = set()
    entries = _entries(model)
    for name, (kind, key, var) in progress_bar(entries.items(), enabled=progress, desc="load", unit="var"):
      if kind == "state":
        packed, state = ckpt.get_4bit(key)
        check_state_like(key, state, var.get_value())
        used.update(checkpoint.group_keys(key, ckpt.keys()))
        var.set_value(state)
      elif kind == "outliers":
        parts = {}
        for field in ("index", "values"):
          k = f"{key}.{field}"
          if k not in ckpt:
            raise ValueError(f"{path}: missing tensor {k!r} for the model's variable {name!r}.")
          parts[field] = ckpt.get(k)
          check_array_like(k, parts[field], getattr(var.get_value(), field))
          used.add(k)
        cols = OutlierColumns(index=jnp.asarray(parts["index"]), values=jnp.asarray(parts["values"]))
        state_entry = entries.get(name.rsplit(".", 1)[0] + ".quant_state" if "." in name else "quant_state")
        if state_entry is not None:
          try:
            check_outliers(cols, state_entry[2].get_value())
          except ValueError as e:
            raise ValueError(f"{path}: tensor {key + '.index'!r}: {e}") from None
        var.set_value(cols)
      else:
        if key not in ckpt:
          raise ValueError(f"{path}: missing tensor {key!r} for the model's variable {name!r}.")
        array = ckpt.get(key)
        check_array_like(key, array, var.get_value())
        used.add(key)
        var.set_value(jnp.asarray(array))
    extra = sorted(set(ckpt.keys()) - used)
    if extra:
      raise ValueError(f"{path}: tensors not in the model: {extra[:8]}{' ...' if len(extra) > 8 else ''}.")
  return model


def check_array_like(key: str, array: Any, like: Any) -> None:
  """Raises ValueError naming ``key`` if ``array`` differs from ``like`` in shape or dtype."""
  shape, dtype = tuple(jnp.shape(like)), jnp.dtype(like.dtype)
  if tuple(array.shape) != shape:
    raise ValueError(f"Tensor {key!r} has shape {tuple(array.shape)}, the model expects {shape}.")
  if jnp.dtype(array.dtype) != dtype:
    raise ValueError(f"Tensor {key!r} has dtype {array.dtype}, the model expects {dtype}.")


def check_state_like(key: str, state: QuantState, like: QuantState) -> None:
  """Raises ValueError naming ``key`` if two quant states describe different weights."""
  for field in ("shape", "dtype", "quant_type", "blocksize", "nested"):
    a, b = getattr(state, field), getattr(like, field)
    if field == "shape":
      a, b = tuple(a), tuple(b)
    if a != b:
      raise ValueError(f"Tensor {key!r}: {field} is {a!r} in the file, the model expects {b!r}.")
