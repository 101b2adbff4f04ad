"""Sentence embeddings: sentence-transformers' Transformer -> Pooling(mean) -> Normalize.

all-MiniLM-L6-v2 (and most sentence-transformers BERT models) embed a sentence
as the mean of its last hidden states over the real (unpadded) tokens, scaled
to unit L2 norm (Reimers & Gurevych 2019, Sentence-BERT, §3). The formulas are
sentence-transformers' ``Pooling`` and ``torch.nn.functional.normalize``:
``mean = sum(h * mask) / max(sum(mask), 1e-9)``, ``e = mean / max(||mean||, 1e-12)``.

The forward pass is jitted once per (graph, batch shape); batches are padded
to ``batch_size`` rows and to a power-of-two length bucket, so encoding many
sentences compiles a handful of shapes, not one per batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxfp4._src.models.bert.model import BertModel
from jaxfp4._src.models.bert.tokenizer import WordPieceTokenizer
from jaxfp4._src.progress import bar as progress_bar

_MIN_BUCKET = 16


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """float32 ``[batch, hidden]`` mean of ``hidden [batch, seq, hidden]`` over ``attention_mask != 0``."""
  m = (jnp.asarray(attention_mask) != 0).astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), jnp.float32(1e-9))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||_2, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, jnp.asarray(eps, x.dtype))


def embed(model: BertModel, input_ids: jax.Array, attention_mask: jax.Array,
          token_type_ids: jax.Array | None = None, *, normalize: bool = True) -> jax.Array:
  """float32 sentence embeddings ``[batch, hidden]`` of one tokenized batch.

  Example:
    >>> from flax import nnx
    >>> from jaxfp4.models import bert
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "."]
    >>> tok = bert.WordPieceTokenizer({w: i for i, w in enumerate(words)})
    >>> config = bert.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
    ...                          num_attention_heads=2, intermediate_size=64)
    >>> model = bert.BertModel(config, rngs=nnx.Rngs(0))   # or bert.load_model(directory)
    >>> batch = tok(["A cat.", "A dog."])
    >>> bert.embed(model, batch["input_ids"], batch["attention_mask"]).shape
    (2, 32)
  """
  pooled = mean_pool(model(input_ids, attention_mask, token_type_ids), attention_mask)
  return l2_normalize(pooled) if normalize else pooled


@functools.partial(jax.jit, static_argnums=(0, 5))
def _embed_jit(graphdef, state, input_ids, attention_mask, token_type_ids, normalize):
  return embed(nnx.merge(graphdef, state), input_ids, attention_mask, token_type_ids, normalize=normalize)


def _bucket(n: int, max_length: int) -> int:
  return min(max(_MIN_BUCKET, 1 << (n - 1).bit_length()), max_length)


def encode(
    model: BertModel,
    tokenizer: WordPieceTokenizer,
    sentences: str | Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    normalize: bool = True,
    progress: bool = False,
) -> np.ndarray:
  """Embeds ``sentences`` like sentence-transformers' ``SentenceTransformer.encode``.

  Args:
    model: the encoder (dense or with 4-bit layers).
    tokenizer: its tokenizer.
    sentences: a string or a sequence of strings.
    batch_size: sentences per forward pass.
    max_length: truncation length in tokens (default: the tokenizer's).
    normalize: scale each embedding to unit L2 norm (all-MiniLM-L6-v2 does).
    progress: show a progress bar.

  Returns:
    float32 ``[len(sentences), hidden]``.

  Example:
    >>> from flax import nnx
    >>> from jaxfp4.models import bert
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "."]
    >>> tok = bert.WordPieceTokenizer({w: i for i, w in enumerate(words)})
    >>> config = bert.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
    ...                          num_attention_heads=2, intermediate_size=64)
    >>> model = bert.BertModel(config, rngs=nnx.Rngs(0))   # or bert.load_model(directory)
    >>> bert.encode(model, tok, ["A cat.", "A dog."]).shape
    (2, 32)
  """
  if isinstance(sentences, str):
    sentences = [sentences]
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
  limit = min(tokenizer.max_length if max_length is None else max_length,
              model.config.max_position_embeddings)
  graphdef, state = nnx.split(model)
  rows = min(batch_size, len(sentences))
  out = []
  for start in progress_bar(range(0, len(sentences), batch_size), enabled=progress, desc="encode",
                            unit="batch"):
    chunk = list(sentences[start:start + batch_size])
    enc = tokenizer(chunk, max_length=limit)
    n, t = enc["input_ids"].shape
    # Pad to a fixed [rows, bucket] shape; the extra rows (mask all 0) are dropped below.
    shape = (rows, _bucket(t, limit))
    ids, mask, types = np.full(shape, tokenizer.pad_id, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    ids[:n, :t], mask[:n, :t], types[:n, :t] = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    e = _embed_jit(graphdef, state, ids, mask, types, normalize)
    out.append(np.asarray(e[:len(chunk)]))
  hidden = model.config.hidden_size
  return np.concatenate(out, axis=0) if out else np.zeros((0, hidden), np.float32)


@dataclasses.dataclass
class SentenceEncoder:
  """A BERT encoder, its tokenizer and its pooling: what :func:`from_pretrained` returns.

  Attributes:
    model: the :class:`BertModel` (quantize it in place with ``jaxfp4.nnx.quantize_model``).
    tokenizer: its :class:`WordPieceTokenizer` (``max_length`` is the model's
      ``max_seq_length``).
    normalize: whether embeddings are scaled to unit norm (a ``Normalize`` module).

  Example:
    >>> from flax import nnx
    >>> from jaxfp4.models import bert
    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "."]
    >>> tok = bert.WordPieceTokenizer({w: i for i, w in enumerate(words)})
    >>> config = bert.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
    ...                          num_attention_heads=2, intermediate_size=64)
    >>> model = bert.BertModel(config, rngs=nnx.Rngs(0))   # or bert.load_model(directory)
    >>> enc = bert.SentenceEncoder(model=model, tokenizer=tok, normalize=True)  # from_pretrained's result
    >>> enc.encode(["A cat.", "A dog."]).shape
    (2, 32)
  """

  model: BertModel
  tokenizer: WordPieceTokenizer
  normalize: bool = True

  def encode(self, sentences: str | Sequence[str], *, batch_size: int = 32, max_length: int | None = None,
             progress: bool = False) -> np.ndarray:
    """float32 ``[len(sentences), hidden]`` embeddings; see :func:`encode`."""
    return encode(self.model, self.tokenizer, sentences, batch_size=batch_size, max_length=max_length,
                  normalize=self.normalize, progress=progress)
