"""Hugging Face checkpoint directories and bitsandbytes 4-bit tensor groups.

A directory holds ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json`` (``weight_map``: tensor -> file). A
4-bit linear weight ``P.weight`` is stored as bitsandbytes ``Linear4bit`` saves
it (bnb_format.md §5): the packed bytes under ``P.weight`` and the quant state
under ``P.weight.absmax``, ``.quant_map``, ``.nested_absmax``,
``.nested_quant_map`` and the JSON blob ``.quant_state.bitsandbytes__<type>``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxfp4._src.io.safetensors import SafetensorsFile
from jaxfp4._src import repack
from jaxfp4._src.quantize import check_packed
from jaxfp4._src.state import QuantState

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_BLOB = re.compile(r"^(?P<weight>.+)\.quant_state\.(?:bitsandbytes|jaxfp4)__\w+$")
STATE_SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "global_scale")


class Checkpoint:
  """Tensors of a safetensors file or a (possibly sharded) checkpoint directory.

  Args:
    path: a ``.safetensors`` file, or a directory with ``model.safetensors``
      or ``model.safetensors.index.json``.

  Example:
    >>> import tempfile, jax.numpy as jnp, jaxfp4, jaxfp4.io
    >>> packed, state = jaxfp4.quantize_4bit(jnp.ones((64, 64)), quant_type="nf4")
    >>> tensors = {"up_proj.weight": packed, **{"up_proj.weight." + k: v
    ...            for k, v in state.as_dict(packed=True).items()}}   # bitsandbytes' keys
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = jaxfp4.io.write_safetensors(tmp.name + "/model.safetensors", tensors)
    >>> with jaxfp4.io.Checkpoint(path) as ckpt:
    ...   packed2, state2 = ckpt.get_4bit("up_proj.weight")
    >>> state2.quant_type, state2.shape
    ('nf4', (64, 64))
    >>> tmp.cleanup()
  """

  def __init__(self, path: str | os.PathLike):
    self._files: dict[str, SafetensorsFile] = {}
    try:
      self._open(Path(path))
    except BaseException:
      self.close()
      raise

  def _open(self, path: Path) -> None:
    self.path = path
    self.config: dict | None = None
    if path.is_dir():
      cfg = path / "config.json"
      if cfg.is_file():
        self.config = read_json(cfg)
      if (path / INDEX).is_file():
        index = read_json(path / INDEX)
        wmap = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wmap, dict):
          raise ValueError(f"{path / INDEX}: missing a `weight_map` object.")
        files = sorted(set(wmap.values()))
      elif (path / SINGLE).is_file():
        wmap, files = None, [SINGLE]
      else:
        raise FileNotFoundError(f"{str(path)!r} has neither {SINGLE} nor {INDEX}.")
      for f in files:
        self._files[f] = SafetensorsFile(path / f)
    elif path.is_file():
      wmap = None
      self._files[path.name] = SafetensorsFile(path)
    else:
      raise FileNotFoundError(f"No checkpoint at {str(path)!r}.")
    self._where: dict[str, SafetensorsFile] = {}
    for f in self._files.values():
      for k in f.keys():
        if k in self._where:
          raise ValueError(f"Tensor {k!r} appears in both {self._where[k].path.name} and {f.path.name}.")
        self._where[k] = f
    if wmap is not None:
      for k, fname in wmap.items():
        if self._where.get(k) is None or self._where[k].path.name != fname:
          raise ValueError(f"{INDEX} maps {k!r} to {fname}, but that file does not hold it.")
      extra = set(self._where) - set(wmap)
      if extra:
        raise ValueError(f"Tensors missing from {INDEX}'s weight_map: {sorted(extra)[:5]}.")

  def __enter__(self) -> "Checkpoint":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    for f in self._files.values():
      f.close()

  @property
  def files(self) -> list[SafetensorsFile]:
    return list(self._files.values())

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def info(self, name: str):
    return self._file(name).info(name)

  def get(self, name: str) -> np.ndarray:
    return self._file(name).get(name)

  def view(self, name: str) -> np.ndarray:
    """A read-only memory map of ``name`` (see ``SafetensorsFile.view``)."""
    return self._file(name).view(name)

  def _file(self, name: str) -> SafetensorsFile:
    if name not in self._where:
      raise KeyError(f"The checkpoint {str(self.path)!r} has no tensor {name!r}.")
    return self._where[name]

  def quantized_weights(self) -> list[str]:
    """Names of the 4-bit weights (those with a quant-state blob)."""
    return [m["weight"] for k in self._where if (m := _BLOB.match(k))]

  def incomplete_groups(self) -> dict[str, list[str]]:
    """4-bit tensor groups without their quant-state blob: ``{weight: [its state keys]}``.

    A packed weight with ``.absmax`` / ``.quant_map`` but no
    ``.quant_state.bitsandbytes__*`` cannot be decoded; listed as dense
    tensors it would look like an ordinary model.
    """
    done = set(self.quantized_weights())
    out: dict[str, list[str]] = {}
    for k in self._where:
      weight, _, suffix = k.rpartition(".")
      if suffix in ("absmax", "quant_map") and weight in self._where and weight not in done:
        out.setdefault(weight, [])
    for weight in out:
      out[weight] = group_keys(weight, self._where)
    return out

  def get_quant_state(self, weight: str) -> QuantState:
    """Reads the quant state of the 4-bit weight ``weight`` (not its packed bytes)."""
    group = {k: self.get(k) for k in group_keys(weight, self._where)}
    if weight not in self._where:
      raise ValueError(f"The quant state of {weight!r} is present but its packed tensor is missing.")
    try:
      return QuantState.from_dict(group)
    except ValueError as e:
      raise ValueError(f"Tensor {weight!r}: {e}") from None

  def get_4bit(self, weight: str) -> tuple[np.ndarray, QuantState]:
    """Reads the packed bytes and quant state of the 4-bit weight ``weight``."""
    state = self.get_quant_state(weight)
    packed = self.get(weight)
    try:
      check_packed(jnp.asarray(packed), state)
    except ValueError as e:
      raise ValueError(f"Tensor {weight!r}: {e}") from None
    return packed, state


def group_keys(weight: str, names) -> list[str]:
  """The quant-state keys of ``weight`` among ``names`` (without ``weight`` itself)."""
  prefix = weight + "."
  return [k for k in names if k.startswith(prefix)
          and (k[len(prefix):] in STATE_SUFFIXES or _blob_weight(k) == weight)]


def _blob_weight(key: str) -> str | None:
  """The weight name of a quant-state blob key, or None for another key."""
  m = _BLOB.match(key)
  return None if m is None else m["weight"]


def tensor_group_4bit(weight: str, packed, state: QuantState) -> Iterator[tuple[str, np.ndarray]]:
  """The tensors bitsandbytes ``Linear4bit`` saves for one 4-bit weight.

  Args:
    weight: the weight's key, e.g. ``"model.layers.0.mlp.up_proj.weight"``.
    packed: the packed bytes (bitsandbytes layout ``[(n + 1) // 2, 1]``); bytes in
      another K order (``state.layout``) are written in bitsandbytes' order.
    state: its quant state.

  Yields:
    ``(name, array)`` pairs: ``weight`` itself, then ``weight.<state key>``.
  """
  host, state = repack.bnb_bytes(np.asarray(jax.device_get(packed)), state)
  yield weight, host
  yield from state_tensors(weight, state)


def state_tensors(weight: str, state: QuantState) -> Iterator[tuple[str, np.ndarray]]:
  """The ``weight.<state key>`` tensors of :func:`tensor_group_4bit` alone (the bytes are
  written by the caller, in bitsandbytes' K order whatever ``state.layout`` says)."""
  if state.layout != "bnb":
    state = repack.with_layout(state, "bnb")
  for k, v in state.as_dict(packed=True).items():
    yield f"{weight}.{k}", v


def read_config(path: str | os.PathLike) -> dict:
  cfg = Path(path) / "config.json"
  if not cfg.is_file():
    raise FileNotFoundError(f"{str(path)!r} has no config.json.")
  d = read_json(cfg)
  if not isinstance(d, dict):
    raise ValueError(f"{cfg}: must hold a JSON object.")
  return d


def read_json(path: Path) -> Any:
  """The JSON in ``path``; ValueError naming the file and the place of a syntax error."""
  try:
    return json.loads(Path(path).read_text(encoding="utf-8"))
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None


def bnb_quantization(config: Mapping) -> dict | None:
  """Parses a transformers ``quantization_config``; None if the model is not quantized.

  Only bitsandbytes 4-bit is supported; anything else raises ValueError naming
  the offending field.
  """
  qc = config.get("quantization_config")
  if qc is None:
    return None
  if not isinstance(qc, Mapping):
    raise ValueError(f"config.json's `quantization_config` must be a JSON object, got {qc!r}.")
  method = qc.get("quant_method")
  if method != "bitsandbytes":
    raise ValueError(f"Unsupported quantization_config.quant_method {method!r}; jaxfp4 loads "
                     "'bitsandbytes' 4-bit checkpoints only.")
  if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
    raise ValueError("quantization_config.load_in_8bit is set: LLM.int8 checkpoints are not "
                     "supported (only bitsandbytes 4-bit).")
  if not (qc.get("load_in_4bit") or qc.get("_load_in_4bit")):
    raise ValueError("quantization_config.load_in_4bit is not set; nothing to load as 4-bit.")
  qt = qc.get("bnb_4bit_quant_type", "fp4")
  if qt not in ("nf4", "fp4"):
    raise ValueError(f"quantization_config.bnb_4bit_quant_type must be 'nf4' or 'fp4', got {qt!r}.")
  return {
      "quant_type": qt,
      "compress_statistics": bool(qc.get("bnb_4bit_use_double_quant", False)),
      "compute_dtype": qc.get("bnb_4bit_compute_dtype", "float32"),
      "quant_storage": qc.get("bnb_4bit_quant_storage", "uint8"),
      "skip_modules": list(qc.get("llm_int8_skip_modules") or []),
  }


def bnb_quantization_config(*, quant_type: str, compress_statistics: bool, compute_dtype: str,
                            quant_storage: str, skip_modules: list[str]) -> dict:
  """The ``quantization_config`` transformers writes for ``BitsAndBytesConfig(load_in_4bit=True, ...)``."""
  return {
      "_load_in_4bit": True, "_load_in_8bit": False,
      "bnb_4bit_compute_dtype": compute_dtype, "bnb_4bit_quant_storage": quant_storage,
      "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": compress_statistics,
      "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
      "llm_int8_skip_modules": skip_modules or None, "llm_int8_threshold": 6.0,
      "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes",
  }


def is_float_dtype(dt) -> bool:
  """Whether ``dt`` is a floating dtype a checkpoint tensor may be cast between."""
  return np.dtype(dt) in (np.float16, np.float32, np.float64, jnp.bfloat16)


MODEL_DTYPES = ("bfloat16", "float16", "float32")


def model_dtype(name: str, value) -> jnp.dtype:
  """``value`` as the compute or parameter dtype of a loaded model; ValueError naming ``name``."""
  try:
    dt = jnp.dtype(value)
  except (TypeError, ValueError):
    raise ValueError(f"`{name}` must be one of {MODEL_DTYPES}, got {value!r}.") from None
  if dt.name not in MODEL_DTYPES:
    raise ValueError(f"`{name}` must be one of {MODEL_DTYPES}, got {value!r}.")
  return dt
