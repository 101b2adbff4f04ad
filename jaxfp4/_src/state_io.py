"""Parsing a bitsandbytes quant-state tensor group into a ``QuantState``.

Accepts the packed form written to safetensors by ``Linear4bit`` /
transformers (bnb_format.md §5: ``absmax``, ``quant_map``, ``nested_absmax``,
``nested_quant_map`` and the JSON blob ``quant_state.bitsandbytes__<type>``),
with or without a module-path prefix, and the unpacked ``as_dict()`` form.
Everything is checked; a malformed group raises ValueError naming the key.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jaxfp4._src import formats

_BLOB = re.compile(r"^(?P<prefix>.*?)quant_state\.(?P<tag>bitsandbytes|jaxfp4)__(?P<qt>\w+)$")
_TENSOR_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "global_scale")
_META_KEYS = ("quant_type", "blocksize", "dtype", "shape", "nested_blocksize",
              "nested_dtype", "nested_offset", "scale_dtype")


def _split(d: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """Returns (prefix, fields) with the blob decoded into plain fields."""
  blobs = [(k, m) for k in d if (m := _BLOB.match(k))]
  if len(blobs) > 1:
    raise ValueError(f"Expected one `quant_state.bitsandbytes__*` key, got {[k for k, _ in blobs]}.")
  if not blobs:
    if "quant_type" not in d:
      raise ValueError(
          "Not a quant state: expected a `quant_state.bitsandbytes__<nf4|fp4>` key "
          f"or the unpacked fields of as_dict(); got keys {sorted(d)}.")
    return "", dict(d)
  key, m = blobs[0]
  prefix = m["prefix"]
  raw = np.asarray(d[key])
  if raw.dtype != np.uint8 or raw.ndim != 1:
    raise ValueError(f"`{key}` must be a 1-D uint8 tensor holding JSON, got {raw.dtype}{list(raw.shape)}.")
  try:
    meta = json.loads(raw.tobytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"`{key}` does not hold valid JSON: {e}.") from None
  if not isinstance(meta, dict):
    raise ValueError(f"`{key}` must hold a JSON object, got {type(meta).__name__}.")
  if meta.get("quant_type") != m["qt"]:
    raise ValueError(f"`{key}` names quant_type {m['qt']!r} but its JSON says "
                     f"{meta.get('quant_type')!r}.")
  fields = dict(meta)
  for k, v in d.items():
    if k == key:
      continue
    if not k.startswith(prefix) or k[len(prefix):] not in _TENSOR_KEYS:
      raise ValueError(f"Unexpected key {k!r} in the quant state of {prefix[:-1]!r}; "
                       f"allowed: {[prefix + t for t in _TENSOR_KEYS]}.")
    fields[k[len(prefix):]] = v
  return prefix, fields


def _require(fields, name, prefix):
  if name not in fields:
    raise ValueError(f"Missing `{prefix}{name}` in the quant state.")
  return fields[name]


def _tensor(fields, name, prefix, dtype, shape):
  a = np.asarray(_require(fields, name, prefix))
  if a.dtype != np.dtype(dtype):
    raise ValueError(f"`{prefix}{name}` must be {np.dtype(dtype).name}, got {a.dtype}.")
  if tuple(a.shape) != tuple(shape):
    raise ValueError(f"`{prefix}{name}` must have shape {tuple(shape)}, got {tuple(a.shape)}.")
  return a


def _same_table(a: np.ndarray, b: np.ndarray) -> bool:
  """Equal float32 tables, ignoring the sign of zero."""
  return a.shape == b.shape and bool(np.all((a == b) | ((a == 0) & (b == 0))))


def state_from_dict(state_cls, nested_cls, d: Mapping[str, Any]):
  prefix, f = _split(d)
  for k in f:
    if k not in _META_KEYS and k not in _TENSOR_KEYS:
      raise ValueError(f"Unexpected quant state field {prefix}{k!r}.")
  fmt = formats.get_format(_require(f, "quant_type", prefix))
  blocksize = formats.resolve_blocksize(fmt, _require(f, "blocksize", prefix))
  dtype_name = _require(f, "dtype", prefix)
  if dtype_name not in formats.INPUT_DTYPES:
    raise ValueError(f"`dtype` must be one of {formats.INPUT_DTYPES}, got {dtype_name!r}.")
  shape = _require(f, "shape", prefix)
  if (not isinstance(shape, (list, tuple))
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
    raise ValueError(f"`shape` must be a list of non-negative ints, got {shape!r}.")
  shape = tuple(shape)
  nb = -(-math.prod(shape) // blocksize)
  nested = "nested_absmax" in f or "nested_offset" in f
  if nested and not fmt.supports_double_quant:
    raise ValueError(f"quant_type={fmt.name!r} has no double quantization, but the state is nested.")

  quant_map = _tensor(f, "quant_map", prefix, np.float32, (16,))
  if not _same_table(quant_map, np.asarray(fmt.code, np.float32)):
    # bitsandbytes' CUDA kernels ignore quant_map and use their built-in
    # table, so a different map means the checkpoint is not what it claims.
    raise ValueError(f"`{prefix}quant_map` is not the standard {fmt.name} table: {quant_map}.")

  if fmt.scale_kind == "absmax":
    absmax = _tensor(f, "absmax", prefix, np.uint8 if nested else np.float32, (nb,))
  else:
    raw = _tensor(f, "absmax", prefix, np.uint8, (nb,))
    want = "float8_e8m0fnu" if fmt.scale_kind == "e8m0" else "float8_e4m3fn"
    if f.get("scale_dtype", want) != want:
      raise ValueError(f"`scale_dtype` must be {want!r} for {fmt.name}, got {f['scale_dtype']!r}.")
    absmax = raw.view(jnp.dtype(getattr(jnp, want)))

  kw: dict[str, Any] = {}
  if fmt.scale_kind == "e4m3":
    kw["global_scale"] = jnp.asarray(_tensor(f, "global_scale", prefix, np.float32, (1,))[0])
  if nested:
    nbs = _require(f, "nested_blocksize", prefix)
    if nbs != formats.NESTED_BLOCKSIZE:
      raise ValueError(f"`nested_blocksize` must be {formats.NESTED_BLOCKSIZE}, got {nbs!r}.")
    if f.get("nested_dtype", "float32") != "float32":
      raise ValueError(f"`nested_dtype` must be 'float32', got {f['nested_dtype']!r}.")
    offset = _require(f, "nested_offset", prefix)
    if not isinstance(offset, (int, float)) or isinstance(offset, bool) or not math.isfinite(offset):
      raise ValueError(f"`nested_offset` must be a finite number, got {offset!r}.")
    nb2 = -(-nb // nbs)
    absmax2 = _tensor(f, "nested_absmax", prefix, np.float32, (nb2,))
    code2 = _tensor(f, "nested_quant_map", prefix, np.float32, (256,))
    if np.any(np.diff(code2) <= 0):
      raise ValueError(f"`{prefix}nested_quant_map` must be strictly increasing.")
    kw["offset"] = jnp.asarray(np.float32(offset))
    kw["state2"] = nested_cls(absmax=jnp.asarray(absmax2),
                              code=tuple(float(v) for v in code2), blocksize=nbs)
  state = state_cls(
      absmax=jnp.asarray(absmax), shape=shape, dtype=jnp.dtype(dtype_name),
      blocksize=blocksize, quant_type=fmt.name,
      code=tuple(float(v) for v in quant_map), **kw)
  state.validate()
  return state
