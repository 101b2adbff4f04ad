"""``LlamaConfig``: the shapes and constants of a Llama model.

Mirrors the fields of transformers' ``LlamaConfig`` that change the forward
pass, and parses/writes Hugging Face ``config.json`` dicts of both transformers
4 (``rope_theta`` + ``rope_scaling``) and transformers 5 (``rope_parameters``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from flax.core import FrozenDict

ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  return value


def _positive_float(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
    raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
  return float(value)


def _check_rope_scaling(rope_scaling: Mapping[str, Any] | None) -> FrozenDict | None:
  """Normalizes ``rope_scaling`` to None (plain RoPE) or a hashable llama3 mapping."""
  if rope_scaling is None:
    return None
  if not isinstance(rope_scaling, Mapping):
    raise ValueError(f"`rope_scaling` must be a dict or None, got {rope_scaling!r}.")
  d = dict(rope_scaling)
  # transformers 4 wrote the type under "type"; later versions use "rope_type".
  rope_type = d.pop("rope_type", d.pop("type", "default"))
  d.pop("rope_theta", None)
  if rope_type not in ROPE_TYPES:
    raise ValueError(f"`rope_scaling` rope type must be one of {ROPE_TYPES}, got {rope_type!r}.")
  if rope_type == "default":
    return None
  missing = [k for k in _LLAMA3_KEYS if k not in d]
  if missing:
    raise ValueError(f"`rope_scaling` of type 'llama3' needs {list(_LLAMA3_KEYS)}; missing {missing}.")
  out: dict[str, Any] = {"rope_type": "llama3"}
  for k in ("factor", "low_freq_factor", "high_freq_factor"):
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
      raise ValueError(f"`rope_scaling` {k!r} must be a positive number, got {v!r}.")
    out[k] = float(v)
  if not out["low_freq_factor"] < out["high_freq_factor"]:
    raise ValueError(f"`rope_scaling` needs low_freq_factor < high_freq_factor, got "
                     f"{out['low_freq_factor']} and {out['high_freq_factor']}.")
  orig = d["original_max_position_embeddings"]
  if isinstance(orig, bool) or not isinstance(orig, int) or orig <= 0:
    raise ValueError(f"`rope_scaling` 'original_max_position_embeddings' must be a positive int, got {orig!r}.")
  out["original_max_position_embeddings"] = orig
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
class LlamaConfig:
  """Hyperparameters of a Llama decoder (the fields of transformers' ``LlamaConfig``
  that change the forward pass).

  ``rope_scaling`` is None (plain RoPE) or a llama3 mapping with ``factor``,
  ``low_freq_factor``, ``high_freq_factor`` and
  ``original_max_position_embeddings``; it is stored as a hashable ``FrozenDict``
  and ``eos_token_id`` lists as tuples, so the config can be static under ``jit``.
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

  def __post_init__(self):
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
    set_ = lambda k, v: object.__setattr__(self, k, v)  # frozen dataclass
    set_("num_key_value_heads", kv)
    set_("head_dim", head_dim)
    set_("rms_norm_eps", _positive_float("rms_norm_eps", self.rms_norm_eps))
    set_("rope_theta", _positive_float("rope_theta", self.rope_theta))
    set_("rope_scaling", _check_rope_scaling(self.rope_scaling))
    set_("bos_token_id", _check_token_ids("bos_token_id", self.bos_token_id))
    set_("eos_token_id", _check_token_ids("eos_token_id", self.eos_token_id))
    if isinstance(self.bos_token_id, tuple):
      raise ValueError(f"`bos_token_id` must be None or an int, got {list(self.bos_token_id)!r}.")

  @property
  def rope_type(self) -> str:
    """``"default"`` or ``"llama3"``."""
    return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """``eos_token_id`` as a (possibly empty) tuple."""
    e = self.eos_token_id
    return () if e is None else e if isinstance(e, tuple) else (e,)

  def replace(self, **changes: Any) -> LlamaConfig:
    """Returns a copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf(cls, d: Mapping[str, Any]) -> LlamaConfig:
    """Parses a Hugging Face ``config.json`` dict of a ``LlamaForCausalLM``.

    Args:
      d: the parsed JSON; rope settings under ``rope_parameters`` (transformers
        5) or ``rope_theta`` + ``rope_scaling`` (transformers 4).

    Returns:
      The config. Raises ValueError for other architectures, activations, rope
      types or invalid values.
    """
    if not isinstance(d, Mapping):
      raise ValueError(f"`d` must be a config.json dict, got {type(d).__name__}.")
    model_type = d.get("model_type")
    if model_type != "llama":
      raise ValueError(f"`model_type` must be 'llama', got {model_type!r}.")
    act = d.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"`hidden_act` must be 'silu', got {act!r}.")
    rope_parameters = d.get("rope_parameters")
    if rope_parameters is not None:
      if not isinstance(rope_parameters, Mapping):
        raise ValueError(f"`rope_parameters` must be a dict, got {rope_parameters!r}.")
      rope_theta = rope_parameters.get("rope_theta", d.get("rope_theta", 10000.0))
      rope_scaling = dict(rope_parameters)
    else:
      rope_theta = d.get("rope_theta", 10000.0)
      rope_scaling = d.get("rope_scaling")
    head_dim = d.get("head_dim")
    kw = dict(
        vocab_size=d.get("vocab_size", 32000),
        hidden_size=d.get("hidden_size", 4096),
        intermediate_size=d.get("intermediate_size", 11008),
        num_hidden_layers=d.get("num_hidden_layers", 32),
        num_attention_heads=d.get("num_attention_heads", 32),
        num_key_value_heads=d.get("num_key_value_heads"),
        head_dim=head_dim,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=d.get("tie_word_embeddings", False),
        attention_bias=d.get("attention_bias", False),
        mlp_bias=d.get("mlp_bias", False),
        bos_token_id=d.get("bos_token_id", 1),
        eos_token_id=d.get("eos_token_id", 2),
    )
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """Returns a ``config.json`` dict in transformers 5's layout (``rope_parameters``)."""
    rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope.update({k: self.rope_scaling[k] for k in _LLAMA3_KEYS})
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "attention_bias": self.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": self.mlp_bias,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
    }

  @classmethod
  def llama_1b(cls, **overrides: Any) -> LlamaConfig:
    """Llama-3.2-1B's shapes (meta-llama/Llama-3.2-1B config.json)."""
    return cls._preset(dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_llama3_scaling(32.0), max_position_embeddings=131072,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001), overrides)

  @classmethod
  def llama_3b(cls, **overrides: Any) -> LlamaConfig:
    """Llama-3.2-3B's shapes (meta-llama/Llama-3.2-3B config.json)."""
    return cls._preset(dict(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_llama3_scaling(32.0), max_position_embeddings=131072,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001), overrides)

  @classmethod
  def llama_8b(cls, **overrides: Any) -> LlamaConfig:
    """Llama-3.1-8B's shapes (meta-llama/Llama-3.1-8B config.json)."""
    return cls._preset(dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_llama3_scaling(8.0), max_position_embeddings=131072,
        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001), overrides)

  @classmethod
  def tiny(cls, **overrides: Any) -> LlamaConfig:
    """A 2-layer test model (the shapes of ``tests/data/llama_tiny``)."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    return cls._preset(dict(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
        rope_theta=50000.0, rope_scaling=rope, max_position_embeddings=256,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2), overrides)

  @classmethod
  def _preset(cls, kw: dict[str, Any], overrides: Mapping[str, Any]) -> LlamaConfig:
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"Unknown LlamaConfig fields {sorted(unknown)}.")
    return cls(**{**kw, **overrides})


def _llama3_scaling(factor: float) -> dict[str, Any]:
  return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
