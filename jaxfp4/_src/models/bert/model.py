"""A Flax NNX BERT encoder that reproduces transformers' ``BertModel``.

The architecture is BERT's (Devlin et al. 2018; the Transformer encoder of
Vaswani et al. 2017 with post-LayerNorm residual blocks). Attribute paths mirror
Hugging Face's parameter names, so a checkpoint key maps to one variable:
``encoder.layer.3.attention.self.query.weight`` is the (transposed: Flax kernels
are ``[in, out]``) kernel of ``encoder.layer[3].attention.self.query``. That is
why one attribute is called ``self`` and the norms ``LayerNorm``.

Every linear layer is an ``nnx.Linear``, so ``jaxfp4.nnx.quantize_model`` and
``jaxfp4.nnx.convert_to_fp4`` replace them all. The embeddings stay dense.

The pooler (``pooler.dense`` + tanh over the [CLS] state) is not built: sentence
embeddings (:mod:`jaxfp4.models.bert` ``encode``) mean-pool the last hidden
states, so the loader skips the pooler's tensors.

Numerics: LayerNorm statistics and the attention scores and softmax run in
float32, everything else in the activation ``dtype``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src.models.bert.config import BertConfig

_normal = nnx.initializers.normal(0.02)  # BERT's initializer_range


def activation(name: str, x: jax.Array) -> jax.Array:
  """transformers' ``ACT2FN[name]`` for the activations of :data:`HIDDEN_ACTS`."""
  if name == "gelu":
    return jax.nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu(x)
  raise ValueError(f"`hidden_act` {name!r} is not supported.")


class BertLayerNorm(nnx.Module):
  """``torch.nn.LayerNorm`` with ``weight`` and ``bias`` (HF's names), normalized in float32."""

  def __init__(self, size: int, *, eps: float, dtype: Any, param_dtype: Any):
    self.weight = nnx.Param(jnp.ones((size,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((size,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)  # biased, as torch
    y = (x32 - mean) * jax.lax.rsqrt(var + jnp.float32(self.eps))
    shape = (1,) * (x.ndim - 1) + (-1,)
    w, b = self.weight[...].reshape(shape), self.bias[...].reshape(shape)
    y = y * w.astype(jnp.float32) + b.astype(jnp.float32)
    return y.astype(self.dtype)


def _linear(n_in: int, n_out: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(n_in, n_out, use_bias=True, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=_normal, rngs=rngs)


def _norm(config: BertConfig, dtype: Any, param_dtype: Any) -> BertLayerNorm:
  return BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)


class BertEmbeddings(nnx.Module):
  """Word + token type + absolute position embeddings, then LayerNorm."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    c = config
    embed = dict(dtype=dtype, param_dtype=param_dtype, embedding_init=_normal, rngs=rngs)
    self.word_embeddings = nnx.Embed(c.vocab_size, c.hidden_size, **embed)
    self.position_embeddings = nnx.Embed(c.max_position_embeddings, c.hidden_size, **embed)
    self.token_type_embeddings = nnx.Embed(c.type_vocab_size, c.hidden_size, **embed)
    self.LayerNorm = _norm(c, dtype, param_dtype)

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
    t = input_ids.shape[1]
    positions = jnp.arange(t, dtype=jnp.int32)[None, :]
    # transformers' order of the sums (it changes the float32 rounding).
    x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
    x = x + self.position_embeddings(positions)
    return self.LayerNorm(x)


class BertSelfAttention(nnx.Module):
  """Multi-head scaled dot-product attention over the whole (padded) sequence."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    h = config.hidden_size
    self.num_heads, self.head_dim, self.dtype = config.num_attention_heads, config.head_dim, dtype
    self.query = _linear(h, h, dtype, param_dtype, rngs)
    self.key = _linear(h, h, dtype, param_dtype, rngs)
    self.value = _linear(h, h, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
    """``x [B, T, hidden]``; ``mask_bias [B, 1, 1, T]`` is added to the float32 scores."""
    b, t, _ = x.shape
    n, d = self.num_heads, self.head_dim
    q = self.query(x).astype(self.dtype).reshape(b, t, n, d)
    k = self.key(x).astype(self.dtype).reshape(b, t, n, d)
    v = self.value(x).astype(self.dtype).reshape(b, t, n, d)
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(d**-0.5) + mask_bias
    p = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bnqk,bknd->bqnd", p.astype(self.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(self.dtype).reshape(b, t, n * d)


class BertSelfOutput(nnx.Module):
  """``LayerNorm(dense(attention) + residual)``."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.dense = _linear(config.hidden_size, config.hidden_size, dtype, param_dtype, rngs)
    self.LayerNorm = _norm(config, dtype, param_dtype)
    self.dtype = dtype

  def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
    return self.LayerNorm(self.dense(h).astype(self.dtype) + residual)


class BertAttention(nnx.Module):
  """Self-attention and its output block (HF's ``attention.self`` / ``attention.output``)."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self = BertSelfAttention(config, **kw)
    self.output = BertSelfOutput(config, **kw)

  def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
    return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nnx.Module):
  """``act(dense(x))``, hidden -> intermediate."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.dense = _linear(config.hidden_size, config.intermediate_size, dtype, param_dtype, rngs)
    self.act, self.dtype = config.hidden_act, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # In float32 and rounded once, like torch's GELU on bfloat16 inputs.
    return activation(self.act, self.dense(x).astype(jnp.float32)).astype(self.dtype)


class BertOutput(nnx.Module):
  """``LayerNorm(dense(intermediate) + residual)``, intermediate -> hidden."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.dense = _linear(config.intermediate_size, config.hidden_size, dtype, param_dtype, rngs)
    self.LayerNorm = _norm(config, dtype, param_dtype)
    self.dtype = dtype

  def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
    return self.LayerNorm(self.dense(h).astype(self.dtype) + residual)


class BertLayer(nnx.Module):
  """One encoder block: attention, then the feed-forward block, each post-LN."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = BertAttention(config, **kw)
    self.intermediate = BertIntermediate(config, **kw)
    self.output = BertOutput(config, **kw)

  def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
    h = self.attention(x, mask_bias)
    return self.output(self.intermediate(h), h)


class BertEncoder(nnx.Module):
  """The stack of :class:`BertLayer` (HF's ``encoder.layer``)."""

  def __init__(self, config: BertConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.layer = nnx.List([BertLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                           for _ in range(config.num_hidden_layers)])

  def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
    for layer in self.layer:
      x = layer(x, mask_bias)
    return x


class BertModel(nnx.Module):
  """transformers' ``BertModel`` (without the pooler) in Flax NNX.

  Args:
    config: the model's shapes.
    dtype: activation (compute) dtype.
    param_dtype: dtype of every parameter.
    rngs: random streams for the initial parameters (``normal(0.02)``, as BERT).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                     intermediate_size=64)
    >>> model = BertModel(config, rngs=nnx.Rngs(0))
    >>> ids = jnp.array([[2, 5, 7, 3]])
    >>> model(ids, jnp.ones_like(ids)).shape
    (1, 4, 32)
  """

  def __init__(self, config: BertConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    if not isinstance(config, BertConfig):
      raise ValueError(f"`config` must be a BertConfig, got {type(config).__name__}.")
    if dtype is None or param_dtype is None:
      raise ValueError("`dtype` and `param_dtype` must be dtypes, got None.")
    self.config = config
    self.dtype = jnp.dtype(dtype)
    kw = dict(dtype=self.dtype, param_dtype=jnp.dtype(param_dtype), rngs=rngs)
    self.embeddings = BertEmbeddings(config, **kw)
    self.encoder = BertEncoder(config, **kw)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None) -> jax.Array:
    """Runs the encoder.

    Args:
      input_ids: int ``[batch, seq]``.
      attention_mask: ``[batch, seq]``, nonzero for real tokens and 0 for padding
        (padding keys get a large negative score, so no query attends to them).
      token_type_ids: int ``[batch, seq]`` segment ids; None means all 0.

    Returns:
      ``last_hidden_state [batch, seq, hidden]`` in ``dtype``.
    """
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"`input_ids` must be an int array [batch, seq], got {input_ids.dtype}"
                       f"{list(input_ids.shape)}.")
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
      raise ValueError(f"`attention_mask` must have the shape of `input_ids` {list(input_ids.shape)}, "
                       f"got {list(attention_mask.shape)}.")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    token_type_ids = jnp.asarray(token_type_ids)
    if token_type_ids.shape != input_ids.shape or not jnp.issubdtype(token_type_ids.dtype, jnp.integer):
      raise ValueError(f"`token_type_ids` must be an int array of shape {list(input_ids.shape)}, got "
                       f"{token_type_ids.dtype}{list(token_type_ids.shape)}.")
    t = input_ids.shape[1]
    if t > self.config.max_position_embeddings:
      raise ValueError(f"`input_ids` has {t} positions; the model has only max_position_embeddings="
                       f"{self.config.max_position_embeddings}.")
    # transformers' extended attention mask: 0 where a key is visible, the dtype's
    # minimum where it is padding, added to the scores before the softmax.
    visible = (attention_mask != 0)[:, None, None, :]
    mask_bias = jnp.where(visible, jnp.float32(0), jnp.finfo(jnp.float32).min)
    x = self.embeddings(input_ids, token_type_ids)
    return self.encoder(x, mask_bias)
