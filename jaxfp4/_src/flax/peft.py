"""LoRA adapters in PEFT's on-disk format: ``save_adapters`` / ``load_adapters``.

A PEFT LoRA directory (PEFT's ``save_pretrained``; see its ``LoraConfig`` and
``get_peft_model_state_dict``) holds:

* ``adapter_config.json``: ``peft_type: "LORA"``, ``r``, ``lora_alpha``,
  ``target_modules``, ``lora_dropout``, ``bias``, ``use_rslora``,
  ``base_model_name_or_path``, ``task_type`` and more;
* ``adapter_model.safetensors``: for each adapted linear at module path ``P``
  of the base model, ``base_model.model.P.lora_A.weight`` ``[r, in]`` and
  ``base_model.model.P.lora_B.weight`` ``[out, r]``.

PEFT computes ``W x + scaling * B (A x)`` with ``scaling = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with ``use_rslora``). A ``Dense4bit`` stores
``lora_a = A.T`` ``[in, r]`` and ``lora_b = B.T`` ``[r, out]`` and applies
``lora_scale`` the same way, so the two are the same numbers transposed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.flax.nnx_dense import Dense4bit
from jaxfp4._src.io.files import directory_atomic, refuse_nonempty_dir
from jaxfp4._src.io.safetensors import SafetensorsFile, write_safetensors

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^base_model\.model\.(?P<path>.+)\.lora_(?P<ab>[AB])\.weight$")


def _layers(model: nnx.Module) -> dict[str, Dense4bit]:
  """Every ``Dense4bit`` by dotted path (a shared layer under its first path)."""
  out: dict[str, Dense4bit] = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, Dense4bit) and node not in out.values():
      out[".".join(str(p) for p in path)] = node
  return out


def _target_modules(layers: dict[str, Dense4bit]) -> list[str] | str:
  """PEFT ``target_modules`` that select exactly the adapted layers: their names, else a regex of their paths."""
  adapted = sorted(p for p, l in layers.items() if l.lora_rank)
  names = sorted({p.rsplit(".", 1)[-1] for p in adapted})
  covered = [p for p in layers if p.rsplit(".", 1)[-1] in names]
  if sorted(covered) == adapted:
    return names
  return "^(?:" + "|".join(re.escape(p) for p in adapted) + ")$"


def save_adapters(model: nnx.Module, out_dir: str | os.PathLike, *,
                  base_model_name_or_path: str | None = None, task_type: str = "CAUSAL_LM",
                  overwrite: bool = False) -> Path:
  """Writes ``model``'s LoRA adapters as a PEFT LoRA directory (PEFT and vLLM load it).

  Every adapted layer must share one rank, alpha, dropout and rsLoRA setting
  (one ``LoraConfig``); the adapter names are the layers' paths, which are the
  base model's module names for ``jaxfp4.models`` decoders.

  Args:
    model: a model with ``Dense4bit`` adapters (``add_lora`` / ``quantize_model``).
    out_dir: a new or empty directory; it appears only once complete.
    base_model_name_or_path: recorded for PEFT (the Hub id or path of the base).
    task_type: PEFT's task type.
    overwrite: replace ``out_dir`` if it holds an adapter (an
      ``adapter_config.json``), e.g. saved every N training steps; the old
      directory stays whole until the new one is complete.

  Returns:
    The directory.

  Example:
    >>> import tempfile
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> model = nnx.Sequential(jaxfp4.nnx.Dense4bit(64, 64, lora_rank=4, rngs=nnx.Rngs(0)))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> out = jaxfp4.nnx.save_adapters(model, tmp.name + "/adapter", base_model_name_or_path="org/base")
    >>> sorted(f.name for f in out.iterdir())
    ['adapter_config.json', 'adapter_model.safetensors']
    >>> tmp.cleanup()
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  layers = _layers(model)
  adapted = {p: l for p, l in layers.items() if l.lora_rank}
  if not adapted:
    raise ValueError("`model` has no LoRA adapters to save (jaxfp4.nnx.add_lora adds them).")
  settings = {(l.lora_rank, float(l.lora_alpha if l.lora_alpha is not None else l.lora_rank),
               l.use_rslora, 0.0 if l.lora_dropout is None else float(l.lora_dropout.rate))
              for l in adapted.values()}
  if len(settings) != 1:
    raise ValueError("PEFT's adapter_config.json holds one rank, alpha, rsLoRA and dropout for all layers; "
                     f"the model's adapters have {sorted(settings)}.")
  r, alpha, rslora, dropout = next(iter(settings))
  config = {
      "peft_type": "LORA", "task_type": task_type, "r": r, "lora_alpha": alpha,
      "lora_dropout": dropout, "target_modules": _target_modules(layers), "bias": "none",
      "use_rslora": rslora, "base_model_name_or_path": base_model_name_or_path,
      "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
      "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
      "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "revision": None,
  }

  def tensors():
    for p, l in sorted(adapted.items()):
      assert l.lora_a is not None and l.lora_b is not None  # adapted: layers with lora_rank > 0
      yield f"{PREFIX}{p}.lora_A.weight", np.ascontiguousarray(np.asarray(jax.device_get(l.lora_a.get_value())).T)
      yield f"{PREFIX}{p}.lora_B.weight", np.ascontiguousarray(np.asarray(jax.device_get(l.lora_b.get_value())).T)

  out_dir = Path(out_dir)
  refuse_nonempty_dir(out_dir, overwrite=overwrite, marker=CONFIG)
  with directory_atomic(out_dir, overwrite=overwrite) as tmp:
    write_safetensors(tmp / WEIGHTS, tensors(), metadata={"format": "pt"})
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return out_dir


def _read_config(path: Path) -> dict[str, Any]:
  f = path / CONFIG
  if not f.is_file():
    raise FileNotFoundError(f"{str(path)!r} has no {CONFIG} (a PEFT adapter directory holds one).")
  cfg = json.loads(f.read_text())
  if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
    raise ValueError(f"{f}: `peft_type` must be 'LORA', got {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}.")
  refused = {
      "use_dora": (cfg.get("use_dora"), "DoRA's magnitude vector is not implemented"),
      "bias": (cfg.get("bias", "none") != "none", "trained biases are not LoRA weights jaxfp4 holds"),
      "modules_to_save": (cfg.get("modules_to_save"), "fully trained modules are not adapters"),
      "alpha_pattern": (cfg.get("alpha_pattern"), "per-layer alphas are not implemented"),
      "fan_in_fan_out": (cfg.get("fan_in_fan_out"), "it is for Conv1D (GPT-2) layers"),
      "lora_bias": (cfg.get("lora_bias"), "a bias on lora_B is not implemented"),
      "layer_replication": (cfg.get("layer_replication"), "it rebuilds the base model's layer stack"),
      "trainable_token_indices": (cfg.get("trainable_token_indices"), "embedding deltas are not adapters"),
      "target_parameters": (cfg.get("target_parameters"), "LoRA on raw parameters (MoE experts) is not implemented"),
      "use_qalora": (cfg.get("use_qalora"), "QA-LoRA's pooled input is not implemented"),
  }
  for key, (bad, why) in refused.items():
    if bad:
      raise ValueError(f"{f}: `{key}` = {cfg.get(key)!r} is not supported: {why}.")
  for key in ("r", "lora_alpha"):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
      raise ValueError(f"{f}: `{key}` must be a positive number, got {v!r}.")
  return cfg


def load_adapters(model: nnx.Module, path: str | os.PathLike, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """Loads a PEFT LoRA directory into ``model``'s ``Dense4bit`` layers, in place.

  Each ``base_model.model.P.lora_{A,B}.weight`` pair becomes the adapters of the
  layer at path ``P`` (rank from the tensors, so PEFT's ``rank_pattern`` works),
  scaled as the config says (``lora_alpha / r`` or rsLoRA's ``/ sqrt(r)``).
  Every tensor must find its layer; ValueError names any that does not.

  Args:
    model: the base model (``jaxfp4.models`` decoders use HF module paths).
    path: the adapter directory.
    rngs: random streams for adapter dropout (None: a fixed seed).

  Returns:
    ``model``.

  Example:
    >>> import tempfile
    >>> from flax import nnx
    >>> import jaxfp4.nnx
    >>> model = nnx.Sequential(jaxfp4.nnx.Dense4bit(64, 64, lora_rank=4, rngs=nnx.Rngs(0)))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> out = jaxfp4.nnx.save_adapters(model, tmp.name + "/adapter")
    >>> base = nnx.Sequential(jaxfp4.nnx.Dense4bit(64, 64, rngs=nnx.Rngs(0)))   # no adapters
    >>> jaxfp4.nnx.load_adapters(base, out).layers[0].lora_rank
    4
    >>> tmp.cleanup()
  """
  if not isinstance(model, nnx.Module):
    raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}.")
  path = Path(path)
  cfg = _read_config(path)
  if not (path / WEIGHTS).is_file():
    raise FileNotFoundError(f"{str(path)!r} has no {WEIGHTS}.")
  layers = _layers(model)
  pairs: dict[str, dict[str, np.ndarray]] = {}
  with SafetensorsFile(path / WEIGHTS) as f:
    for key in f.keys():
      m = _KEY.match(key)
      if m is None:
        raise ValueError(f"{path / WEIGHTS}: {key!r} is not a LoRA weight "
                         "('base_model.model.<path>.lora_A.weight' / 'lora_B.weight').")
      pairs.setdefault(m["path"], {})[m["ab"]] = f.get(key)
  unknown = sorted(p for p in pairs if p not in layers)
  if unknown:
    raise ValueError(f"{path / WEIGHTS}: adapters for {unknown[:4]} match no Dense4bit of the model "
                     f"(its 4-bit layers are {list(layers)[:3]} ...).")
  rngs = rngs or nnx.Rngs(0)
  alpha = float(cfg["lora_alpha"])
  for p, ab in sorted(pairs.items()):
    layer = layers[p]
    if set(ab) != {"A", "B"}:
      raise ValueError(f"{path / WEIGHTS}: {p!r} needs both lora_A and lora_B, got only {sorted(ab)}.")
    a, b = ab["A"], ab["B"]
    r = a.shape[0]
    if a.shape != (r, layer.in_features) or b.shape != (layer.out_features, r):
      raise ValueError(f"{path / WEIGHTS}: {p!r} lora_A {a.shape} / lora_B {b.shape} do not fit a layer "
                       f"of [in={layer.in_features}, out={layer.out_features}] (want [r, in] and [out, r]).")
    layer.set_lora(r, alpha=alpha, dropout=float(cfg.get("lora_dropout") or 0.0), rngs=rngs,
                   use_rslora=bool(cfg.get("use_rslora")))
    assert layer.lora_a is not None and layer.lora_b is not None  # set_lora(r > 0) made them
    dt = layer.lora_a.get_value().dtype
    layer.lora_a.set_value(jnp.asarray(a.T, dt))
    layer.lora_b.set_value(jnp.asarray(b.T, dt))
  return model
