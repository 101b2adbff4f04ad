"""Reading and writing the ``config.json`` of each decoder family.

Field names and defaults follow transformers' ``configuration_<type>.py``;
where a family derives a value (the window pattern of Gemma 2/3 and Qwen2
when ``layer_types`` is absent), the rule is transformers' own, cited below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxfp4._src.models.decoder.config import DecoderConfig, check_rope_scaling
from jaxfp4._src.models.decoder.families import family

_GEMMA = ("gemma", "gemma2", "gemma3_text")
_WINDOWED = ("mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")


def _rope(d: Mapping[str, Any], model_type: str) -> dict[str, Any]:
  """``rope_theta``, ``rope_scaling`` and ``rope_local_theta`` from either layout."""
  default_theta = 1e6 if model_type == "gemma3_text" else 10000.0
  rp = d.get("rope_parameters")
  local = None
  scaling: Any
  if rp is not None:
    if not isinstance(rp, Mapping):
      raise ValueError(f"`rope_parameters` must be a dict, got {rp!r}.")
    if "full_attention" in rp or "sliding_attention" in rp:  # per layer type (transformers 5, Gemma 3)
      local_rp = rp.get("sliding_attention")
      rp = rp.get("full_attention", {})
      if local_rp is not None:
        if check_rope_scaling(local_rp, "rope_parameters['sliding_attention']") is not None:
          raise ValueError("`rope_parameters['sliding_attention']` must be plain RoPE (rope_type "
                           f"'default'); jaxfp4 does not scale the local layers' RoPE, got {dict(local_rp)!r}.")
        local = local_rp.get("rope_theta", 10000.0)
    theta = rp.get("rope_theta", d.get("rope_theta", default_theta))
    scaling = dict(rp)
  else:
    theta = d.get("rope_theta", default_theta)
    scaling = d.get("rope_scaling")
  if model_type == "gemma3_text":
    local = d.get("rope_local_base_freq", 10000.0) if local is None else local
  partial = d.get("partial_rotary_factor", 1.0)
  if partial != 1.0:
    raise ValueError(f"`partial_rotary_factor` must be 1.0: jaxfp4 rotates the whole head, got {partial!r} "
                     "(rotating part of it would load the model wrong).")
  return dict(rope_theta=theta, rope_scaling=scaling, rope_local_theta=local)


def _windows(d: Mapping[str, Any], model_type: str, layers: int) -> dict[str, Any]:
  """``sliding_window`` and ``layer_types`` as transformers derives them."""
  if model_type not in _WINDOWED:
    return {}
  window = d.get("sliding_window")
  types = d.get("layer_types")
  if model_type in ("qwen2", "qwen3"):
    # configuration_qwen2.py: the window applies only with use_sliding_window,
    # and then to layers i >= max_window_layers.
    if not d.get("use_sliding_window", False):
      return {"sliding_window": None, "layer_types": None}
    if types is None and isinstance(layers, int):
      first = d.get("max_window_layers", layers)
      types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
  elif model_type == "gemma2" and types is None and isinstance(layers, int):
    # configuration_gemma2.py: even layers are local, odd ones global.
    types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
  elif model_type == "gemma3_text" and types is None and isinstance(layers, int):
    # configuration_gemma3.py: every sliding_window_pattern-th layer is global.
    pattern = d.get("sliding_window_pattern", 6)
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
  if types is not None and window is None:
    types = None  # a window of None disables every sliding layer in transformers' masks
  return {"sliding_window": window, "layer_types": types}


def parse(d: Mapping[str, Any]) -> dict[str, Any]:
  """``DecoderConfig`` keyword arguments from a ``config.json`` dict."""
  if not isinstance(d, Mapping):
    raise ValueError(f"`d` must be a config.json dict, got {type(d).__name__}.")
  model_type: Any = d.get("model_type")  # family() checks it
  fam = family(model_type)
  gemma = model_type in _GEMMA
  # modeling_gemma.py uses hidden_act; Gemma 2 and 3 use hidden_activation.
  act = d.get("hidden_activation") or d.get("hidden_act") if model_type != "gemma" and gemma \
      else d.get("hidden_act")
  if d.get("use_bidirectional_attention"):
    raise ValueError("`use_bidirectional_attention` must be false: jaxfp4's decoder is causal "
                     "(bidirectional Gemma 3 is an embedding model).")
  layers = d.get("num_hidden_layers", 32)
  kw: dict[str, Any] = dict(
      model_type=model_type,
      vocab_size=d.get("vocab_size", 32000),
      hidden_size=d.get("hidden_size", 4096),
      intermediate_size=d.get("intermediate_size", 11008),
      num_hidden_layers=layers,
      num_attention_heads=d.get("num_attention_heads", 32),
      num_key_value_heads=d.get("num_key_value_heads"),
      head_dim=d.get("head_dim", 256 if gemma else None),
      rms_norm_eps=d.get("rms_norm_eps", 1e-6),
      max_position_embeddings=d.get("max_position_embeddings", 2048),
      tie_word_embeddings=d.get("tie_word_embeddings", gemma),
      attention_bias=False if fam.qkv_bias or fam.fused or model_type == "mistral"
      else d.get("attention_bias", False),
      mlp_bias=d.get("mlp_bias", False) if model_type == "llama" else False,
      bos_token_id=d.get("bos_token_id", 1 if model_type == "llama" else None),
      eos_token_id=d.get("eos_token_id", 2 if model_type == "llama" else None),
      hidden_act=act,
      **_rope(d, model_type),
      **_windows(d, model_type, layers),
  )
  if model_type in ("gemma2", "gemma3_text"):
    kw["query_pre_attn_scalar"] = d.get("query_pre_attn_scalar", 256)
    kw["attn_logit_softcapping"] = d.get("attn_logit_softcapping", 50.0 if model_type == "gemma2" else None)
    kw["final_logit_softcapping"] = d.get("final_logit_softcapping", 30.0 if model_type == "gemma2" else None)
  return kw


def write(c: DecoderConfig) -> dict[str, Any]:
  """A ``config.json`` dict of ``c`` in transformers 5's layout."""
  fam = c.family
  rope: dict[str, Any] = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
  if c.rope_scaling is not None:
    rope.update({k: v for k, v in c.rope_scaling.items() if k != "rope_type"})
  eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
  out: dict[str, Any] = {
      "architectures": [fam.architecture],
      "model_type": c.model_type,
      "vocab_size": c.vocab_size,
      "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size,
      "num_hidden_layers": c.num_hidden_layers,
      "num_attention_heads": c.num_attention_heads,
      "num_key_value_heads": c.num_key_value_heads,
      "head_dim": c.head_dim,
      "hidden_act": c.hidden_act,
      "rms_norm_eps": c.rms_norm_eps,
      "rope_parameters": rope,
      "max_position_embeddings": c.max_position_embeddings,
      "tie_word_embeddings": c.tie_word_embeddings,
      "attention_bias": c.attention_bias,
      "attention_dropout": 0.0,
      "bos_token_id": c.bos_token_id,
      "eos_token_id": eos,
      "pad_token_id": None,
      "initializer_range": 0.02,
      "use_cache": True,
  }
  if c.model_type == "llama":
    out.update(mlp_bias=c.mlp_bias, pretraining_tp=1)
  if c.model_type in _GEMMA:
    out["hidden_activation"] = c.hidden_act
  if c.model_type == "gemma3_text":
    out["rope_parameters"] = {"full_attention": rope, "sliding_attention": {
        "rope_type": "default", "rope_theta": c.rope_local_theta}}
  if c.model_type in _WINDOWED:
    out["sliding_window"] = c.sliding_window
    if c.model_type != "mistral" and c.model_type != "phi3":
      out["layer_types"] = [c.layer_type(i) for i in range(c.num_hidden_layers)]
  if c.model_type in ("qwen2", "qwen3"):
    out["use_sliding_window"] = c.layer_types is not None
    out["max_window_layers"] = c.num_hidden_layers
  if c.model_type in ("gemma2", "gemma3_text"):
    q = c.query_pre_attn_scalar  # transformers 5 types it int
    out.update(query_pre_attn_scalar=int(q) if q is not None and q.is_integer() else q,
               attn_logit_softcapping=c.attn_logit_softcapping,
               final_logit_softcapping=c.final_logit_softcapping)
  return out
