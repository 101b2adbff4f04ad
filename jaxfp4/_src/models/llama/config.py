"""``LlamaConfig``: the shapes and constants of a Llama model.

A ``DecoderConfig`` fixed to ``model_type == "llama"`` (parsing and writing
``config.json`` are the decoder's), plus presets of the released Llama 3 shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxfp4._src.models.decoder.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
  """Hyperparameters of a Llama decoder: a :class:`DecoderConfig` whose
  ``model_type`` is ``"llama"``, with presets of the released shapes.

  ``rope_scaling`` is None (plain RoPE), a llama3 mapping with ``factor``,
  ``low_freq_factor``, ``high_freq_factor`` and
  ``original_max_position_embeddings``, or a linear one; it is stored as a
  hashable ``FrozenDict`` and ``eos_token_id`` lists as tuples, so the config
  can be static under ``jit``.

  Example:
    >>> LlamaConfig.tiny().head_dim
    32
  """

  def __post_init__(self):
    if self.model_type != "llama":
      raise ValueError(f"`model_type` must be 'llama', got {self.model_type!r}; use "
                       "jaxfp4.models.decoder.DecoderConfig for other families.")
    super().__post_init__()

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
      raise ValueError(f"`model_type` must be 'llama', got {model_type!r} (jaxfp4.models.decoder "
                       "loads the other families).")
    act = d.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"`hidden_act` must be 'silu', got {act!r}.")
    return super().from_hf(d)

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
