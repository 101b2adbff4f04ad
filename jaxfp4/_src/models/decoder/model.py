"""A Flax NNX decoder that reproduces transformers' ``<Family>ForCausalLM``.

The module tree mirrors Hugging Face's parameter names (``model.embed_tokens``,
``model.layers[i]``, ``model.norm``, ``lm_head``); every linear layer is built
by a ``linear(path, in_features, out_features, use_bias)`` factory, so 4-bit
layers can replace ``nnx.Linear`` by HF path.

The KV cache holds equal-length sequences only: all rows of a batch share one
fill ``length`` (no left padding). Sliding-window layers keep every position
in the cache and mask the ones outside their window.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src.models.decoder import rope
from jaxfp4._src.models.decoder.config import DecoderConfig
from jaxfp4._src.models.decoder.layers import DecoderLayer, LinearFactory, RMSNorm


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of every layer, written at slot ``length`` onwards.

  Attributes:
    k, v: ``[layers, batch, max_len, kv_heads, head_dim]``.
    length: int32 scalar, the number of filled slots (shared by all rows).

  Size it for the prompt plus every generated token: ``dynamic_update_slice``
  clamps a write past ``max_len`` onto the last slots instead of failing.
  """

  k: jax.Array
  v: jax.Array
  length: jax.Array

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> KVCache:
  """An empty :class:`KVCache` for ``batch`` rows of up to ``max_len`` tokens.

  Example:
    >>> cfg = DecoderConfig(vocab_size=16, hidden_size=32, intermediate_size=64,
    ...                     num_hidden_layers=2, num_attention_heads=4)
    >>> init_cache(cfg, 1, 8).k.shape
    (2, 1, 8, 4, 8)
  """
  for name, v in (("batch", batch), ("max_len", max_len)):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
      raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
  _, kv, d = config.heads()
  shape = (config.num_hidden_layers, batch, max_len, kv, d)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def rope_inv_freq(config: DecoderConfig) -> Any:
  """The global layers' RoPE inverse frequencies ``[head_dim // 2]`` (float32 NumPy)."""
  return rope.inv_freq(config.heads()[2], config.rope_theta, config.rope_scaling)


class DecoderModel(nnx.Module):
  """Embedding, decoder layers and the final norm (transformers' ``<Family>Model``)."""

  def __init__(self, config: DecoderConfig, *, linear: LinearFactory, dtype: Any, param_dtype: Any,
               rngs: nnx.Rngs, remat: bool = False):
    self.config = config
    self.dtype = dtype
    self.remat = remat
    self.embed_tokens = nnx.Embed(
        config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([
        DecoderLayer(config, f"model.layers.{i}", linear=linear, dtype=dtype, param_dtype=param_dtype)
        for i in range(config.num_hidden_layers)])
    self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype,
                        offset=config.family.norm_offset)

  def __call__(
      self,
      input_ids: jax.Array,
      *,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Returns the final hidden states ``[B, T, hidden]`` and the updated cache."""
    c = self.config
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"`input_ids` must be an int array [batch, seq], got {input_ids.dtype}{list(input_ids.shape)}.")
    bsz, t = input_ids.shape
    start = jnp.zeros((), jnp.int32) if cache is None else cache.length
    if positions is None:
      positions = start + jnp.arange(t, dtype=jnp.int32)
    positions = jnp.asarray(positions)
    if positions.ndim == 1:
      positions = positions[None, :]
    positions = jnp.broadcast_to(positions, (bsz, t))
    # Causal mask over cache slots: query t sits at slot start + t and sees slots
    # <= its own, which also hides the unfilled tail of the cache.
    q_slot = start + jnp.arange(t, dtype=jnp.int32)
    n_keys = t if cache is None else cache.max_len
    if cache is not None and cache.k.shape[1] != bsz:
      raise ValueError(f"`cache` holds {cache.k.shape[1]} rows but `input_ids` has {bsz}.")
    k_slot = jnp.arange(n_keys, dtype=jnp.int32)[None, :]
    masks = {"full_attention": k_slot <= q_slot[:, None]}
    if c.sliding_window is not None:
      # transformers' sliding_window_overlay: a query sees keys with kv_idx > q_idx - window.
      masks["sliding_attention"] = masks["full_attention"] & (k_slot > q_slot[:, None] - c.sliding_window)
    x = self.embed_tokens(input_ids).astype(self.dtype)
    if c.family.embed_scale:  # Gemma: times sqrt(hidden_size) rounded to the activation dtype
      x = x * jnp.asarray(math.sqrt(c.hidden_size), self.dtype)
    tables = {"full_attention": rope.cos_sin(rope_inv_freq(c), positions, self.dtype)}
    if c.rope_local_theta is not None:  # Gemma 3: local layers use plain RoPE of their own base
      tables["sliding_attention"] = rope.cos_sin(rope.inv_freq(c.heads()[2], c.rope_local_theta), positions,
                                                 self.dtype)
    cache_kv = None if cache is None else (cache.k, cache.v)
    for i, layer in enumerate(self.layers):
      kind = c.layer_type(i)
      mask = masks[kind]
      cos, sin = tables.get(kind, tables["full_attention"])
      if self.remat and cache is None:
        # Gradient checkpointing: keep only each layer's input for the backward
        # pass and recompute the rest (Chen et al. 2016), as QLoRA training does.
        def run(layer, x, i=i, cos=cos, sin=sin, mask=mask):
          return layer(x, cos, sin, mask=mask, cache_kv=None, layer=i, start=start)[0]
        x = nnx.remat(run)(layer, x)
      else:
        x, cache_kv = layer(x, cos, sin, mask=mask, cache_kv=cache_kv, layer=i, start=start)
    x = self.norm(x)
    if cache is not None:
      assert cache_kv is not None  # every layer returns the updated pair when given one
      cache = KVCache(cache_kv[0], cache_kv[1], cache.length + t)
    return x, cache


class DecoderForCausalLM(nnx.Module):
  """transformers' ``<Family>ForCausalLM`` in Flax NNX, for every family of ``DecoderConfig``.

  Args:
    config: the model's shapes and family.
    dtype: activation (compute) dtype.
    param_dtype: dtype of the embedding, the norms and the default linears.
    linear: ``linear(path, in_features, out_features, use_bias)`` (called
      positionally) returning a module mapping ``[..., in] -> [..., out]``;
      ``path`` is the HF module path, e.g. ``"model.layers.0.self_attn.q_proj"``
      or ``"lm_head"``. None builds ``nnx.Linear`` layers.
    rngs: random streams for the initial parameters.
    remat: recompute each decoder layer in the backward pass (gradient
      checkpointing) instead of keeping its activations.

  Example:
    >>> cfg = DecoderConfig(model_type="gemma2", vocab_size=16, hidden_size=32, intermediate_size=64,
    ...                     num_hidden_layers=2, num_attention_heads=4, head_dim=8, sliding_window=4,
    ...                     layer_types=["sliding_attention", "full_attention"])
    >>> model = DecoderForCausalLM(cfg, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((1, 5), jnp.int32))[0].shape
    (1, 5, 16)
  """

  config_class = DecoderConfig

  def __init__(
      self,
      config: DecoderConfig,
      *,
      dtype: Any = jnp.float32,
      param_dtype: Any = jnp.float32,
      linear: LinearFactory | None = None,
      rngs: nnx.Rngs,
      remat: bool = False,
  ):
    if not isinstance(config, self.config_class):
      raise ValueError(f"`config` must be a {self.config_class.__name__}, got {type(config).__name__}.")
    if dtype is None or param_dtype is None:
      raise ValueError("`dtype` and `param_dtype` must be dtypes, got None.")
    if linear is None:
      def linear(path: str, in_features: int, out_features: int, use_bias: bool) -> nnx.Module:
        del path
        return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)
    self.config = config
    self.dtype = jnp.dtype(dtype)
    self.model = DecoderModel(config, linear=linear, dtype=self.dtype, param_dtype=param_dtype, rngs=rngs,
                              remat=remat)
    self.lm_head = (None if config.tie_word_embeddings
                    else linear("lm_head", config.hidden_size, config.vocab_size, False))

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Maps final hidden states ``[..., hidden]`` to logits ``[..., vocab]``."""
    out = self.model.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
    cap = self.config.final_logit_softcapping
    if cap is not None:  # Gemma 2: cap * tanh(logits / cap)
      out = jnp.tanh(out / cap) * cap
    return out

  def __call__(
      self,
      input_ids: jax.Array,
      *,
      positions: jax.Array | None = None,
      cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the model on ``input_ids [B, T]``.

    Args:
      input_ids: int token ids.
      positions: RoPE positions ``[B, T]`` or ``[T]``; None means
        ``cache.length + arange(T)`` (``arange(T)`` without a cache).
      cache: a :class:`KVCache` to append to (from :func:`init_cache`), or None
        for a plain causal forward.

    Returns:
      ``(logits [B, T, vocab], cache)``: logits in the lm_head's output dtype and
      the cache with ``T`` more slots filled (None when none was given).
    """
    hidden, cache = self.model(input_ids, positions=positions, cache=cache)
    return self.logits(hidden), cache
