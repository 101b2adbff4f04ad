"""``BertConfig``: the shapes and constants of a BERT encoder.

Mirrors the fields of transformers' ``BertConfig`` that change the forward pass
of ``BertModel`` and parses Hugging Face ``config.json`` dicts. Dropout rates are
not kept: the encoder runs in inference mode only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# "gelu" is transformers' exact (erf) GELU; "gelu_new" and "gelu_pytorch_tanh" are
# both the tanh approximation (Hendrycks & Gimpel 2016, eq. 2 and its tanh form).
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
POSITION_EMBEDDING_TYPES = ("absolute",)


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  return value


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyperparameters of a BERT encoder (transformers' ``BertConfig``).

  Defaults are BERT-base's (Devlin et al. 2018); :meth:`from_dict` fills
  absent ``config.json`` fields with the same defaults transformers uses.

  Example:
    >>> BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
    ...            intermediate_size=1536).head_dim
    32
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
      _positive_int(name, getattr(self, name))
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                       f"({self.num_attention_heads}).")
    eps = self.layer_norm_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
      raise ValueError(f"`layer_norm_eps` must be a positive finite number, got {eps!r}.")
    object.__setattr__(self, "layer_norm_eps", float(eps))  # frozen dataclass
    if self.hidden_act not in HIDDEN_ACTS:
      raise ValueError(f"`hidden_act` must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}.")
    pad = self.pad_token_id
    if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
      raise ValueError(f"`pad_token_id` must be an int in [0, vocab_size={self.vocab_size}), got {pad!r}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes: Any) -> BertConfig:
    """Returns a copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> BertConfig:
    """Parses a Hugging Face ``config.json`` dict of a ``BertModel``.

    Args:
      d: the parsed JSON.

    Returns:
      The config. Raises ValueError for other model types, relative position
      embeddings, decoder/cross-attention configs, activations other than
      :data:`HIDDEN_ACTS` or invalid values.

    Example:
      >>> BertConfig.from_dict({"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4}).head_dim
      16
    """
    if not isinstance(d, Mapping):
      raise ValueError(f"`d` must be a config.json dict, got {type(d).__name__}.")
    model_type = d.get("model_type", "bert")
    if model_type != "bert":
      raise ValueError(f"`model_type` must be 'bert', got {model_type!r}.")
    pos = d.get("position_embedding_type", "absolute")
    if pos not in POSITION_EMBEDDING_TYPES:
      raise ValueError(f"`position_embedding_type` must be one of {POSITION_EMBEDDING_TYPES}, got {pos!r}; "
                       "relative position embeddings (Shaw et al. 2018, Huang et al. 2020) are not "
                       "implemented.")
    for flag in ("is_decoder", "add_cross_attention"):
      if d.get(flag, False):
        raise ValueError(f"`{flag}` must be false: only the bidirectional encoder is implemented.")
    defaults = cls()
    kw = {f.name: d.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)}
    if kw["pad_token_id"] is None:
      kw["pad_token_id"] = 0
    return cls(**kw)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> BertConfig:
    """Reads a ``config.json`` file, or the one in directory ``path``.

    Example:
      >>> import json, pathlib, tempfile
      >>> tmp = tempfile.TemporaryDirectory()   # a model directory, e.g. all-MiniLM-L6-v2/
      >>> _ = (pathlib.Path(tmp.name) / "config.json").write_text(json.dumps(
      ...     {"model_type": "bert", "hidden_size": 384, "num_attention_heads": 12}))
      >>> BertConfig.from_file(tmp.name).head_dim
      32
      >>> tmp.cleanup()
    """
    path = Path(path)
    if path.is_dir():
      path = path / "config.json"
    if not path.is_file():
      raise FileNotFoundError(f"No config.json at {str(path)!r}.")
    try:
      d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e}).") from None
    return cls.from_dict(d)

  def to_dict(self) -> dict[str, Any]:
    """Returns a ``config.json`` dict that transformers' ``BertModel`` loads."""
    return {"architectures": ["BertModel"], "model_type": "bert",
            "position_embedding_type": "absolute", **dataclasses.asdict(self)}
