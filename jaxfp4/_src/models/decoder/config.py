"""``DecoderConfig``: the shapes and constants of a decoder-only language model.

One frozen dataclass for every family in ``families.FAMILIES``: the fields of
transformers' ``<Family>Config`` that change the forward pass. ``from_hf``
parses ``config.json`` of transformers 4 (``rope_theta`` + ``rope_scaling``,
Gemma 3's ``rope_local_base_freq``) and 5 (``rope_parameters``, per layer type
for Gemma 3); ``to_hf`` writes transformers 5's layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Self

from flax.core import FrozenDict

from jaxfp4._src.models.decoder import families
from jaxfp4._src.models.decoder.families import family

ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  return value


def _positive_float(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
    raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
  return float(value)


def _optional(name: str, value: Any, check) -> Any:
  return None if value is None else check(name, value)


def check_rope_scaling(rope_scaling: Mapping[str, Any] | None, name: str = "rope_scaling") -> FrozenDict | None:
  """Normalizes a RoPE dict to None (plain RoPE) or a hashable linear/llama3 mapping."""
  if rope_scaling is None:
    return None
  if not isinstance(rope_scaling, Mapping):
    raise ValueError(f"`{name}` must be a dict or None, got {rope_scaling!r}.")
  d = dict(rope_scaling)
  # transformers 4 wrote the type under "type"; later versions use "rope_type".
  rope_type = d.pop("rope_type", d.pop("type", "default"))
  d.pop("rope_theta", None)
  if rope_type in families.REFUSED_ROPE:
    raise ValueError(f"`{name}` rope type {rope_type!r} is not supported ({families.REFUSED_ROPE[rope_type]}); "
                     f"jaxfp4 implements {ROPE_TYPES}.")
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"`{name}` rope type must be one of {ROPE_TYPES}, got {rope_type!r}.")
  if rope_type == "default":
    return None
  if rope_type == "linear":
    return FrozenDict({"rope_type": "linear", "factor": _positive_float(f"{name}['factor']", d.get("factor"))})
  missing = [k for k in _LLAMA3_KEYS if k not in d]
  if missing:
    raise ValueError(f"`{name}` of type 'llama3' needs {list(_LLAMA3_KEYS)}; missing {missing}.")
  out: dict[str, Any] = {"rope_type": "llama3"}
  for k in ("factor", "low_freq_factor", "high_freq_factor"):
    out[k] = _positive_float(f"{name}[{k!r}]", d[k])
  if not out["low_freq_factor"] < out["high_freq_factor"]:
    raise ValueError(f"`{name}` needs low_freq_factor < high_freq_factor, got "
                     f"{out['low_freq_factor']} and {out['high_freq_factor']}.")
  out["original_max_position_embeddings"] = _positive_int(
      f"{name}['original_max_position_embeddings']", d["original_max_position_embeddings"])
  return FrozenDict(out)


def _check_token_ids(name: str, value: Any) -> int | tuple[int, ...] | None:
  if value is None:
    return None
  ids = value if isinstance(value, (list, tuple)) else [value]
  for i in ids:
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
      raise ValueError(f"`{name}` must be None, an int >= 0 or a list of them, got {value!r}.")
  return tuple(ids) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Hyperparameters of a decoder of one of ``families.FAMILIES``.

  ``layer_types`` holds ``"full_attention"`` or ``"sliding_attention"`` per
  layer (None: all full); sliding layers see the last ``sliding_window``
  positions and, with ``rope_local_theta`` (Gemma 3), use plain RoPE of that
  base. Dicts and lists are stored hashable so the config is static under ``jit``.

  Example:
    >>> cfg = DecoderConfig(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128,
    ...                     num_hidden_layers=2, num_attention_heads=4, head_dim=16)
    >>> cfg.family.qk_norm
    True
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: Mapping[str, Any] | None = None
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  model_type: str = "llama"
  hidden_act: str | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None
  rope_local_theta: float | None = None
  query_pre_attn_scalar: float | None = None
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None

  def __post_init__(self):
    fam = family(self.model_type)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings"):
      _positive_int(name, getattr(self, name))
    kv = self.num_attention_heads if self.num_key_value_heads is None else self.num_key_value_heads
    _positive_int("num_key_value_heads", kv)
    if self.num_attention_heads % kv:
      raise ValueError(f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of "
                       f"`num_key_value_heads` ({kv}).")
    if self.head_dim is None:
      if self.hidden_size % self.num_attention_heads:
        raise ValueError(f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                         f"({self.num_attention_heads}) when `head_dim` is not given.")
      head_dim = self.hidden_size // self.num_attention_heads
    else:
      head_dim = _positive_int("head_dim", self.head_dim)
    if head_dim % 2:
      raise ValueError(f"`head_dim` must be even (RoPE rotates pairs), got {head_dim}.")
    for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
    act = fam.default_act if self.hidden_act is None else self.hidden_act
    if act not in families.ACTIVATIONS:
      raise ValueError(f"`hidden_act` must be one of {families.ACTIVATIONS}, got {act!r}.")
    layer_types = self.layer_types
    if layer_types is not None:
      layer_types = tuple(layer_types)
      bad = sorted({t for t in layer_types if t not in LAYER_TYPES}, key=str)
      if bad or len(layer_types) != self.num_hidden_layers:
        raise ValueError(f"`layer_types` must list one of {LAYER_TYPES} per layer "
                         f"({self.num_hidden_layers}), got {list(layer_types)!r}.")
      if "sliding_attention" not in layer_types:
        layer_types = None
    sliding = _optional("sliding_window", self.sliding_window, _positive_int)
    if layer_types is not None and sliding is None:
      raise ValueError("`layer_types` has sliding_attention layers but `sliding_window` is None.")
    set_ = lambda k, v: object.__setattr__(self, k, v)  # frozen dataclass
    set_("num_key_value_heads", kv)
    set_("head_dim", head_dim)
    set_("hidden_act", act)
    set_("layer_types", layer_types)
    set_("sliding_window", sliding)
    set_("rms_norm_eps", _positive_float("rms_norm_eps", self.rms_norm_eps))
    set_("rope_theta", _positive_float("rope_theta", self.rope_theta))
    set_("rope_scaling", check_rope_scaling(self.rope_scaling))
    for name in ("rope_local_theta", "query_pre_attn_scalar", "attn_logit_softcapping",
                 "final_logit_softcapping"):
      set_(name, _optional(name, getattr(self, name), _positive_float))
    set_("bos_token_id", _check_token_ids("bos_token_id", self.bos_token_id))
    set_("eos_token_id", _check_token_ids("eos_token_id", self.eos_token_id))
    if isinstance(self.bos_token_id, tuple):
      raise ValueError(f"`bos_token_id` must be None or an int, got {list(self.bos_token_id)!r}.")

  @property
  def family(self) -> families.Family:
    """The structural switches of ``model_type``."""
    return family(self.model_type)

  @property
  def rope_type(self) -> str:
    """``"default"``, ``"linear"`` or ``"llama3"``."""
    return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """``eos_token_id`` as a (possibly empty) tuple."""
    e = self.eos_token_id
    return () if e is None else e if isinstance(e, tuple) else (e,)

  def layer_type(self, i: int) -> str:
    """``"full_attention"`` or ``"sliding_attention"`` for layer ``i``."""
    if self.layer_types is not None:
      return self.layer_types[i]
    # Mistral and Phi-3 window every layer when sliding_window is set.
    return "sliding_attention" if self.sliding_window is not None else "full_attention"

  def heads(self) -> tuple[int, int, int]:
    """``(num_attention_heads, num_key_value_heads, head_dim)`` as ``__post_init__`` resolved them."""
    kv, d = self.num_key_value_heads, self.head_dim
    assert kv is not None and d is not None  # __post_init__ fills both
    return self.num_attention_heads, kv, d

  @property
  def attention_scale(self) -> float:
    """The factor on ``q . k``: ``query_pre_attn_scalar ** -0.5`` (Gemma 2/3) or ``head_dim ** -0.5``."""
    return (self.query_pre_attn_scalar or self.heads()[2]) ** -0.5

  def replace(self, **changes: Any) -> DecoderConfig:
    """Returns a copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, d: Mapping[str, Any]) -> Self:
    """Parses a Hugging Face ``config.json`` dict of a supported family.

    Raises ValueError naming the field (or ``model_type``) and why for
    families, RoPE types and features jaxfp4 does not implement.

    Example:
      >>> DecoderConfig.from_hf({"model_type": "mistral", "vocab_size": 256, "hidden_size": 64,
      ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
      ...     "sliding_window": 16}).layer_type(0)
      'sliding_attention'
    """
    from jaxfp4._src.models.decoder.hf_config import parse  # one concept per module
    return cls(**parse(d))

  def to_hf(self) -> dict[str, Any]:
    """Returns a ``config.json`` dict in transformers 5's layout (``rope_parameters``)."""
    from jaxfp4._src.models.decoder.hf_config import write
    return write(self)
